//! The worker's own HTTP endpoints: `/healthz` (the process answers), `/readyz` (broker channel open
//! and a valid data-store token, with details) and `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Named readiness checks, each ready or not with a human-readable detail.
#[derive(Debug, Default, Clone)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, (bool, String)>>>,
}

impl Readiness {
    pub fn set(&self, check: &'static str, ready: bool, detail: impl Into<String>) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.insert(check, (ready, detail.into()));
        }
    }

    /// Ready when at least one check is registered and all pass.
    pub fn is_ready(&self) -> bool {
        self.checks
            .lock()
            .map(|c| !c.is_empty() && c.values().all(|(ok, _)| *ok))
            .unwrap_or(false)
    }

    fn report(&self) -> serde_json::Value {
        let checks = self.checks.lock().map(|c| c.clone()).unwrap_or_default();
        let map: serde_json::Map<_, _> = checks
            .into_iter()
            .map(|(name, (ok, detail))| (name.to_owned(), json!({"ready": ok, "detail": detail})))
            .collect();
        json!({"ready": self.is_ready(), "checks": map})
    }
}

/// Installs the global Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

pub fn router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { readiness, metrics })
}

async fn readyz(State(state): State<AppState>) -> Response {
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(state.readiness.report())).into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Prints `cxrel {server} listening on http://{addr}` on stdout once a server is bound, so the
/// scripts, the harness and the tests that asked for port 0 learn its address; [`listening_url`]
/// reads the line back. The worker, the console and the emulator announce themselves this way.
pub fn announce_listening(server: &str, addr: SocketAddr) {
    println!("cxrel {server} listening on http://{addr}");
}

/// The `http://ADDR` that `server`'s [`announce_listening`] line names; None for any other line.
pub fn listening_url<'a>(server: &str, line: &'a str) -> Option<&'a str> {
    line.strip_prefix("cxrel ")?
        .strip_prefix(server)?
        .strip_prefix(" listening on ")
        .map(str::trim)
}

/// Serves the endpoints on `addr` until `cancel`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ([http].listen): {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = router(readiness, metrics_handle());
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "health/metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_line_is_read_back_for_its_server_only() {
        let line = "cxrel worker listening on http://127.0.0.1:41234";
        assert_eq!(
            listening_url("worker", line),
            Some("http://127.0.0.1:41234")
        );
        assert_eq!(listening_url("console", line), None);
        assert_eq!(listening_url("worker", "cxrel: something else"), None);
    }

    #[test]
    fn readiness_needs_every_check_to_pass() {
        let r = Readiness::default();
        assert!(!r.is_ready(), "no checks yet means not ready");
        r.set("broker", true, "channel open");
        r.set("token", false, "no token yet");
        assert!(!r.is_ready());
        r.set("token", true, "valid for 3599s");
        assert!(r.is_ready());
        assert_eq!(r.report()["checks"]["broker"]["ready"], true);
    }
}
