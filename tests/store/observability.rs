//! Metrics and logs of the data-store client: per-call metrics through the `metrics` facade, and no
//! secret or token in the logs even at TRACE level (reqwest and hyper included).
//!
//! The store suites share one process, so this test keeps to its own thread: a current-thread
//! runtime runs every task of its client there, the metrics recorder is local to that thread and
//! the (global) log subscriber keeps only that thread's lines. Other tests' calls reach neither its
//! counts nor its logs.

use std::cell::Cell;
use std::io::Write;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::prelude::*;

use crate::helpers::emulator::{ACCESS_KEY_SECRET, CLIENT_SECRET, EmulatorProcess};
use crate::support::{client_for, create_store, ids, name_fields};

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// True on the thread running the test: the only one whose log lines reach the sink.
    static CAPTURED: Cell<bool> = const { Cell::new(false) };
}

#[test]
fn calls_are_measured_and_secrets_never_reach_the_logs() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let sink = Sink::default();
    let writer = sink.clone();
    // Every level; `log` records (reqwest's) are bridged in too. A thread-scoped subscriber would
    // not do: tracing caches a callsite's interest from the thread that first reaches it.
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_filter(dynamic_filter_fn(|_, _| CAPTURED.get()));
    tracing_subscriber::registry().with(logs).init();
    CAPTURED.set(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(exercise(&handle, &sink)));
}

/// The client's calls against an emulator limited to 5 requests/s, then the checks.
async fn exercise(handle: &PrometheusHandle, sink: &Sink) {
    let emu = EmulatorProcess::spawn();
    let records = ids(2);
    create_store(&emu, "obs", &records).await;
    emu.set_faults(json!({"rate_limit": {"requests_per_second": 5.0, "burst": 1}}))
        .await;
    let client = client_for(&emu, |s| s.cxone.api_base = String::new());
    client.schema("obs").await.unwrap();
    let r = client.get_record("obs", &records[0]).await.unwrap();
    client
        .patch_record("obs", &records[0], &name_fields("x"), Some(r.version))
        .await
        .unwrap();
    // Fast calls against 5 rps: some answers are 429, then retried after the cool-down.
    for _ in 0..4 {
        client.get_record("obs", &records[1]).await.unwrap();
    }
    let _ = client.get_record("obs", "missing").await.unwrap_err();

    let rendered = handle.render();
    for needle in [
        r#"cxrel_store_requests_total{route="schema",status="200"} 1"#,
        r#"cxrel_store_requests_total{route="patch_record",status="200"} 1"#,
        r#"cxrel_store_requests_total{route="get_record",status="404"} 1"#,
        r#"cxrel_store_requests_total{route="token",status="200"} 1"#,
        r#"cxrel_store_requests_total{route="discovery",status="200"} 2"#,
        r#"cxrel_store_requests_total{route="get_record",status="429"}"#,
        r#"cxrel_store_request_duration_seconds{route="get_record",quantile="0.5"}"#,
        "cxrel_store_limiter_wait_seconds",
        "cxrel_store_throttled_total",
        "cxrel_store_rate_limit_rps",
    ] {
        assert!(
            rendered.contains(needle),
            "{needle} missing in:\n{rendered}"
        );
    }

    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("data-store request"),
        "debug lines are logged"
    );
    assert!(logs.contains("correlation_id"), "with the correlation id");
    for secret in [
        CLIENT_SECRET,
        ACCESS_KEY_SECRET,
        "Bearer ",
        "Basic ",
        "access_token",
    ] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
}
