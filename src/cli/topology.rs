//! `cxrel topology declare`: declare the queues and exchanges of SPEC §5 for `[amqp].prefix`.
//! Idempotent; the worker does the same at start, this is for deploy pipelines and init jobs.

use clap::{Args, Subcommand};

use crate::amqp::{self, Topology};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct TopologyArgs {
    #[command(subcommand)]
    pub action: TopologyAction,
}

#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Declare the jobs, hold, dead-letter, webhook dead and write-intent queues and the events
    /// exchange.
    Declare,
}

pub async fn run(args: TopologyArgs, settings: Settings) -> anyhow::Result<i32> {
    match args.action {
        TopologyAction::Declare => declare(&settings).await,
    }
}

async fn declare(settings: &Settings) -> anyhow::Result<i32> {
    let topology = Topology::from_settings(&settings.amqp);
    let connection = amqp::connect(&settings.amqp.url, "cxrel topology").await?;
    let channel = connection.create_channel().await?;
    amqp::topology::declare(&channel, &topology).await?;
    outln!("declared queue    {}", topology.jobs());
    for delay in topology.retry_delays() {
        outln!("declared queue    {}", topology.retry_queue(*delay));
    }
    outln!("declared queue    {}", topology.dead());
    outln!("declared queue    {}", topology.webhooks_dead());
    outln!("declared queue    {}", topology.intents());
    outln!("declared exchange {} (topic)", topology.events());
    let _ = connection.close(200, "bye".into()).await;
    Ok(0)
}
