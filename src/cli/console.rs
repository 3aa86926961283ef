//! `cxrel console [--listen ADDR]`: serves the dead-letter console until SIGTERM/SIGINT.

use std::net::SocketAddr;

use clap::Args;

use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Address to listen on (default [console].listen, 127.0.0.1:8481).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub async fn run(args: ConsoleArgs, settings: Settings) -> anyhow::Result<i32> {
    crate::console::serve(&settings, args.listen).await?;
    Ok(0)
}
