//! The bundled data-store emulator (SPEC §3, §4): auth endpoints, the record API, fault injection,
//! statistics and a webhook receiver, all in memory. Product, not test scaffolding.
//! (Skeleton: filled in by the foundation issue.)

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::settings::EmulatorSettings;

/// A shared handle on the emulator's state.
#[derive(Clone)]
pub struct Emulator {
    #[allow(dead_code)]
    config: Arc<EmulatorSettings>,
}

impl Emulator {
    pub fn new(config: &EmulatorSettings) -> Self {
        Self {
            config: Arc::new(config.clone()),
        }
    }

    /// Loads a seed file; returns the number of records loaded.
    pub fn load_seed_file(&self, _path: &Path) -> anyhow::Result<usize> {
        anyhow::bail!("seed loading is not implemented yet")
    }

    pub fn router(&self) -> Router {
        Router::new()
    }
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
