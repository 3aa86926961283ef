//! `cxrel console`: the dead-letter console, a server-rendered page and the JSON API it uses, on
//! the same engine as `cxrel dlq` (`crate::dlq`). Needs the broker only.
//!
//! Files: [`state`] what lives between requests, [`auth`] token, login and CSRF, [`api`] the JSON
//! API, [`page`] the overview and login, [`message`] one message, [`html`] markup, style and
//! script, [`gauges`] dead-letter gauges.

pub mod api;
pub mod auth;
pub mod gauges;
pub mod html;
pub mod message;
pub mod page;
pub mod params;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::dlq::DlqError;
use crate::settings::Settings;
pub use state::{Console, SharedConsole};

/// An API error: a status and a message saying what to do next, as `{"error": …}`.
#[derive(Debug)]
pub struct ConsoleError {
    pub status: StatusCode,
    pub message: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ConsoleError {
            status,
            message: message.into(),
        }
    }
}

impl From<DlqError> for ConsoleError {
    fn from(error: DlqError) -> Self {
        let status = match &error {
            DlqError::NothingMatched(..) => StatusCode::NOT_FOUND,
            DlqError::NotExported { .. }
            | DlqError::Incomplete { .. }
            | DlqError::OtherReaders { .. }
            | DlqError::Busy(..) => StatusCode::CONFLICT,
            DlqError::NoQueue(..) => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        // The engine's words name the CLI's flags; an API caller needs the API's.
        let message = match &error {
            DlqError::NotExported {
                matching,
                unexported,
            } => format!(
                "refused: {unexported} of the {matching} dead letters the purge would remove are \
                 not in the last complete export; export first (GET /api/dead-letters/export with \
                 the operator token) or purge without an export (\"without_export\": true)"
            ),
            _ => error.to_string(),
        };
        ConsoleError::new(status, message)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

/// Every route of the console. `loopback` = it listens on a loopback address (then only requests
/// addressed to a loopback name are answered).
pub fn router(console: SharedConsole, loopback: bool) -> Router {
    let router = Router::new()
        .route("/", get(page::overview))
        .route("/letters/{id}", get(message::message))
        .route("/login", get(page::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/api/dead-letters", get(api::list))
        .route("/api/dead-letters/summary", get(api::summary))
        .route("/api/dead-letters/export", get(api::export))
        .route("/api/dead-letters/replay", post(api::replay))
        .route("/api/dead-letters/purge", post(api::purge))
        .route("/api/dead-letters/{message_id}", get(api::one))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            ConsoleError::new(StatusCode::NOT_FOUND, "no such page or API route")
        })
        .method_not_allowed_fallback(|| async {
            ConsoleError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_body_limit))
        .with_state(console);
    if loopback {
        router.layer(axum::middleware::from_fn(auth::loopback_host_only))
    } else {
        router
    }
}

/// Largest request body the console takes.
const BODY_LIMIT: usize = 64 * 1024;

/// The body limit's 413 as the API's JSON error (the layer itself answers in plain text).
async fn json_body_limit(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let message = format!("the request body is larger than {} KiB", BODY_LIMIT / 1024);
        return ConsoleError::new(StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    }
    response
}

async fn render_metrics() -> Response {
    let handle = crate::http::metrics_handle();
    handle.run_upkeep();
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Serves the console on `[console].listen` (or `listen`) until Ctrl-C / SIGTERM.
pub async fn serve(settings: &Settings, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let console = Arc::new(Console::new(settings));
    // Fail at start, with the broker's address, rather than on the first page view.
    console.connection().await.map_err(|error| {
        anyhow::anyhow!(
            "cannot reach RabbitMQ at {} ({error}); check [amqp].url",
            crate::secret::redact_url(settings.amqp.url.expose())
        )
    })?;
    let _ = crate::http::metrics_handle();
    gauges::describe();
    let addr = listen.unwrap_or(settings.console.listen);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} ([console].listen or --listen): {e}")
    })?;
    let bound = listener.local_addr()?;
    let mode = if console.token.is_some() {
        "replay and purge need the token"
    } else {
        "read-only: no [console].token"
    };
    crate::http::announce_listening("console", bound);
    tracing::info!(%bound, queue = %console.topology.dead(), mode, "console started");
    let app = router(console, bound.ip().is_loopback())
        .into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown::signal())
        .await?;
    Ok(())
}
