//! Tracing subscriber set-up: human format on a terminal, JSON otherwise or when
//! `[log].format = "json"`; level from `RUST_LOG` when set, else `[log].level`; wire-level crates
//! never log below DEBUG (their TRACE output carries frames with credentials).

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
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
        .with(filter_fn(|meta| !wire_trace(meta)));
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
