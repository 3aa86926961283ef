//! Tracing subscriber set-up: human format on a terminal, JSON otherwise or when
//! `[log].format = "json"`; level from `RUST_LOG` when set, else `[log].level`; wire-level crates
//! never log below DEBUG (their TRACE output carries frames with credentials).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{dynamic_filter_fn, filter_fn};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber. Logs go to stderr so command output on stdout stays clean.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(|meta| !wire_trace(meta)))
        .with(
            dynamic_filter_fn(|meta, _| !teardown_noise(meta))
                .with_callsite_filter(teardown_interest),
        );
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // A second init (tests, embedded use) keeps the first subscriber.
    let _ = result;
}

/// Crates whose TRACE events dump protocol frames: lapin's include the AMQP `connection.start-ok`
/// with the SASL response (user and password as a byte list), and HTTP frames carry bearer
/// tokens and the token request's form body. However verbose `RUST_LOG` is, these stop at DEBUG.
const WIRE_CRATES: [&str; 6] = [
    "lapin",
    "amq_protocol",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
];

fn wire_trace(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::TRACE
        && WIRE_CRATES
            .iter()
            .any(|krate| meta.target().starts_with(krate))
}

/// Set once the worker closes its broker connection on purpose, at the end of a normal stop.
static CLOSING_ON_PURPOSE: AtomicBool = AtomicBool::new(false);

/// Says the broker connection is being closed on purpose: from now on lapin's own ERROR events
/// are dropped. Its teardown races the close (a consumer's cancel or a channel's close meeting a
/// connection already closing) and reports each as "Connection error", which at a normal stop
/// is noise an operator would be paged for.
pub fn closing_on_purpose() {
    CLOSING_ON_PURPOSE.store(true, Ordering::Relaxed);
}

/// A lapin ERROR event after [`closing_on_purpose`].
fn teardown_noise(meta: &Metadata<'_>) -> bool {
    CLOSING_ON_PURPOSE.load(Ordering::Relaxed) && lapin_error(meta)
}

/// Only lapin's ERROR callsites are asked each time; every other one is decided once.
fn teardown_interest(meta: &'static Metadata<'static>) -> Interest {
    if lapin_error(meta) {
        Interest::sometimes()
    } else {
        Interest::always()
    }
}

fn lapin_error(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target().starts_with("lapin")
}
