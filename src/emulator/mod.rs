//! The bundled data-store emulator (SPEC §3, §4): auth endpoints, the record API, fault injection,
//! statistics and a webhook receiver, all in memory. Product, not test scaffolding.
//!
//! Files: [`state`] shared state, [`model`] schema/records/field checks, [`auth`] discovery and
//! tokens, [`records`] the record API, [`faults`] injected faults, [`stats`] request statistics,
//! [`control`] the `/_emulator/` API, [`webhooks`] the webhook receiver, [`seed`] data-store JSON,
//! [`error`] the JSON error shape, [`limit`] the body size limit, [`bucket`] the rate limiters.

mod auth;
mod bucket;
mod control;
mod error;
mod faults;
mod limit;
mod model;
mod records;
mod seed;
mod state;
mod stats;
mod webhooks;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::settings::EmulatorSettings;
pub use bucket::{Algorithm, Limiter};
pub use records::RECORDS_PATH;
use state::{EmulatorState, Shared};
pub use webhooks::MAX_RECEIVERS as MAX_WEBHOOK_RECEIVERS;

/// A shared handle on the emulator's state.
#[derive(Clone)]
pub struct Emulator {
    state: Shared,
}

impl Emulator {
    pub fn new(config: &EmulatorSettings) -> Self {
        Self {
            state: Arc::new(EmulatorState::new(config)),
        }
    }

    /// Loads a seed file (`{"datastores":[{"id","schema","records"}]}`), replacing data stores
    /// of the same ids; returns the number of records loaded. A full reset restores them.
    pub fn load_seed_file(&self, path: &Path) -> anyhow::Result<usize> {
        let seed = seed::read_seed_file(path)?;
        let mut count = 0;
        for spec in &seed.datastores {
            let (id, store) = spec
                .clone()
                .build()
                .map_err(|e| anyhow::anyhow!("seed file {}: {}", path.display(), e.description))?;
            count += store.records().map.len();
            self.state.insert_datastore(id, store, true);
        }
        self.state.remember_seed(seed.datastores);
        Ok(count)
    }

    /// All routes: record API (faults applied), auth, control API and webhook receiver, every
    /// answer counted in the statistics and every error in `{"error","error_description"}` JSON.
    pub fn router(&self) -> Router {
        let config = &self.state.config;
        let limit = config.max_body_bytes;
        let control_limit = config.control_max_body_bytes;
        Router::new()
            .merge(with_limit(api_routes(&self.state), limit))
            .merge(with_limit(auth_routes(), limit))
            .merge(with_limit(webhook_routes(), limit))
            .merge(with_limit(control_routes(), control_limit))
            .fallback(error::route_not_found)
            .method_not_allowed_fallback(error::method_not_allowed)
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                stats::count_requests,
            ))
            .layer(middleware::from_fn(error::json_errors))
            .with_state(self.state.clone())
    }
}

/// The body limit of a route group: our 413 answer (after draining), and axum's own extractor
/// limit raised to match so it never cuts in first.
fn with_limit(routes: Router<Shared>, limit: usize) -> Router<Shared> {
    routes
        .layer(DefaultBodyLimit::max(limit.saturating_add(1)))
        .layer(middleware::from_fn_with_state(limit, limit::limit_body))
}

fn api_routes(state: &Shared) -> Router<Shared> {
    let base = RECORDS_PATH;
    Router::new()
        .route(&format!("{base}/{{ds}}/schema"), get(records::schema))
        .route(&format!("{base}/{{ds}}/records"), get(records::list))
        .route(
            &format!("{base}/{{ds}}/records/{{id}}"),
            get(records::get)
                .patch(records::patch)
                .delete(records::delete),
        )
        // route_layer: faults apply to matched record-API routes only.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            faults::api_faults,
        ))
}

fn auth_routes() -> Router<Shared> {
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(auth::openid_configuration),
        )
        .route(
            "/.well-known/cxone-configuration",
            get(auth::cxone_configuration),
        )
        .route("/auth/token", post(auth::token))
}

fn webhook_routes() -> Router<Shared> {
    Router::new().route(
        "/_emulator/webhooks/{name}",
        post(webhooks::receive)
            .put(webhooks::configure)
            .get(webhooks::deliveries)
            .delete(webhooks::remove),
    )
}

fn control_routes() -> Router<Shared> {
    Router::new()
        .route(
            "/_emulator/datastores",
            post(control::create_datastore).get(control::list_datastores),
        )
        .route(
            "/_emulator/datastores/{ds}",
            axum::routing::delete(control::delete_datastore),
        )
        .route(
            "/_emulator/datastores/{ds}/records",
            post(control::load_records),
        )
        .route(
            "/_emulator/datastores/{ds}/schema",
            axum::routing::put(control::set_schema),
        )
        .route(
            "/_emulator/records/{ds}/{id}/lock",
            post(control::lock_record),
        )
        .route(
            "/_emulator/records/{ds}/{id}/unlock",
            post(control::unlock_record),
        )
        .route(
            "/_emulator/faults",
            get(control::get_faults)
                .put(control::set_faults)
                .patch(control::set_faults),
        )
        .route("/_emulator/stats", get(control::stats))
        .route("/_emulator/stats/reset", post(control::reset_stats))
        .route("/_emulator/reset", post(control::reset))
}

/// A running emulator server.
pub struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for open requests to finish.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Binds `addr` (port 0 picks a free port) and serves the emulator in a background task.
pub async fn serve(emulator: Emulator, addr: SocketAddr) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let _ = emulator.state.bound.set(addr);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let app = emulator.router();
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "emulator server stopped");
        }
    });
    Ok(Server { addr, cancel, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Settings, Sources};

    fn settings() -> EmulatorSettings {
        Settings::load_with_env(&Sources::default(), Some(Default::default()))
            .unwrap()
            .emulator
    }

    #[tokio::test]
    async fn an_in_process_server_answers_discovery_on_its_bound_port_and_shuts_down() {
        let server = serve(Emulator::new(&settings()), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let url = format!("{base}/.well-known/openid-configuration");
        let doc: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(doc["token_endpoint"], format!("{base}/auth/token"));
        server.shutdown().await;
        assert!(
            reqwest::get(base).await.is_err(),
            "nothing listens after shutdown"
        );
    }

    #[test]
    fn a_missing_seed_file_is_an_error_naming_it() {
        let emulator = Emulator::new(&settings());
        let err = emulator
            .load_seed_file(Path::new("/nonexistent/seed.json"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/seed.json"));
    }
}
