//! `cxrel emulator`: serve the data-store emulator until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::emulator::{self, Emulator};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0 picks a free port); default [emulator].listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Seed file: {"datastores":[{"id","schema":{"fields":[…]},"records":[…]}]}.
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,
}

pub async fn run(args: EmulatorArgs, settings: Settings) -> anyhow::Result<i32> {
    let mut config = settings.emulator.clone();
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let seed = args
        .seed
        .or_else(|| (!config.seed.is_empty()).then(|| PathBuf::from(&config.seed)));
    let emulator = Emulator::new(&config);
    if let Some(path) = seed {
        let count = emulator.load_seed_file(&path)?;
        tracing::info!(path = %path.display(), records = count, "seed loaded");
    }
    let server = emulator::serve(emulator, config.listen).await?;
    crate::http::announce_listening("emulator", server.local_addr());
    crate::shutdown::signal().await;
    server.shutdown().await;
    Ok(0)
}
