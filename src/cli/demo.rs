//! `cxrel demo`: the whole system on this machine in one command. Starts the emulator with the
//! bundled seed, a webhook receiver and a worker under a fresh queue prefix on the local RabbitMQ,
//! enqueues a sample batch with valid and invalid jobs, waits until every job has settled and
//! prints what happened. Exit 0 when everything went as the batch expects.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::Args;
use lapin::BasicProperties;
use serde_json::Value;

use crate::amqp::{self, Publisher, Topology};
use crate::harness::config::{WebhookTarget, WorkerConfig};
use crate::harness::emulator::LocalEmulator;
use crate::harness::sample::{self, Expect, SampleJob};
use crate::harness::tap::{Settlement, Tap};
use crate::harness::workers::{WorkerChild, WorkerSpec, worker_env};
use crate::harness::{connect_broker, fresh_prefix};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's queues afterwards (their prefix is printed) to try `cxrel dlq` on them.
    #[arg(long)]
    pub keep: bool,
    /// Longest wait for the batch to settle.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

const RECEIVER: &str = "demo";

pub async fn run(args: DemoArgs, settings: Settings) -> anyhow::Result<i32> {
    let seed: Value = serde_json::from_str(sample::SEED_JSON).context("bundled seed")?;
    let datastore = &seed["datastores"][0];
    let batch = sample::batch(datastore).context("the bundled seed cannot make a sample batch")?;
    let connection = connect_broker(&settings, "cxrel demo").await?;
    let channel = connection.create_channel().await?;
    let emulator = LocalEmulator::start(&settings.emulator).await?;
    let topology = Topology::new(fresh_prefix("cxrel-demo"), vec![Duration::from_millis(500)]);
    let result = match amqp::topology::declare(&channel, &topology).await {
        Ok(()) => {
            run_batch(
                &args,
                &settings,
                &emulator,
                &connection,
                &topology,
                datastore,
                &batch,
            )
            .await
        }
        Err(error) => Err(error.into()),
    };
    // Whatever happened above, the demo's queues go (unless kept after a clean run).
    if args.keep && result.is_ok() {
        outln!(
            "\nqueues kept: CXREL__AMQP__PREFIX={} cxrel dlq list",
            topology.prefix()
        );
    } else {
        let _ = amqp::topology::delete(&channel, &topology).await;
    }
    emulator.shutdown().await;
    let _ = connection.close(200, "demo done".into()).await;
    result
}

/// Everything between declaring the queues and deleting them; returns the exit code.
async fn run_batch(
    args: &DemoArgs,
    settings: &Settings,
    emulator: &LocalEmulator,
    connection: &lapin::Connection,
    topology: &Topology,
    datastore: &Value,
    batch: &[SampleJob],
) -> anyhow::Result<i32> {
    emulator.create_datastore(datastore).await?;
    let secret = webhook_secret();
    let hook = emulator.webhook_receiver(RECEIVER, &secret).await?;
    let tap = Tap::start(connection, topology, true).await?;
    // The emulator as data store and issuer, the demo's prefix, a webhook.
    let config = WorkerConfig::new(topology.prefix(), emulator.base())
        .log_level("info")
        .retry_delays(&[Duration::from_millis(500)])
        .shutdown_timeout(Duration::from_secs(10))
        .webhook(WebhookTarget::all_events(&hook, &secret));
    let spec = WorkerSpec {
        config: &config,
        env: worker_env(settings),
        name: topology.prefix(),
    };
    let worker = WorkerChild::spawn(&spec, 1).await?;
    worker.wait_ready(Duration::from_secs(30)).await?;
    outln!(
        "cxrel demo: emulator {}, queues {}.*, worker log {}",
        emulator.base(),
        topology.prefix(),
        worker.log.display()
    );
    let publisher = Publisher::open(connection).await?;
    for job in batch {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(job.id.clone().into());
        publisher
            .to_queue(&topology.jobs(), &job.body, props)
            .await?;
    }
    outln!(
        "enqueued {} jobs; waiting for them to settle…\n",
        batch.len()
    );
    let all_settled = tap.wait_settled(batch.len(), args.timeout).await;
    // The dead letter and the job's last events are published together; let stragglers land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (settled, events) = tap.snapshot();
    tap.close().await;
    let hooks = wait_webhooks(emulator, events.len()).await?;
    let dead = amqp_depth(publisher.channel(), &topology.dead()).await;
    worker.stop(Duration::from_secs(15)).await;

    let ok = print_jobs(batch, &settled, &events);
    print_totals(&events, &hooks, dead);
    print_stored(emulator, &batch[0]).await;
    if !all_settled {
        outln!("\nnot every job settled within {:?}", args.timeout);
    }
    Ok(if ok && all_settled { 0 } else { 1 })
}

/// A fresh Standard Webhooks secret for this run.
fn webhook_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Waits (up to 10 s) until the receiver holds `expected` deliveries.
async fn wait_webhooks(emulator: &LocalEmulator, expected: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deliveries = emulator.webhook_deliveries(RECEIVER).await?;
        if deliveries.len() >= expected || tokio::time::Instant::now() >= deadline {
            return Ok(deliveries);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn amqp_depth(channel: &lapin::Channel, queue: &str) -> Option<u32> {
    crate::dlq::depth(channel, queue).await.ok()
}

/// What happened to one job, from its events.
#[derive(Debug, Default)]
struct JobResult {
    applied: usize,
    rejected: Vec<String>,
    dead: Option<(String, String)>,
}

impl JobResult {
    fn of(id: &str, settlement: Option<&Settlement>, events: &[Value]) -> Self {
        let mut result = Self::default();
        for event in events.iter().filter(|e| e["data"]["job_id"] == id) {
            let data = &event["data"];
            match event["type"].as_str().unwrap_or_default() {
                "cxrel.relationship.applied" => result.applied += 1,
                "cxrel.relationship.rejected" => result.rejected.push(text(&data["code"])),
                _ => {}
            }
        }
        if let Some(s) = settlement.filter(|s| s.ty == "cxrel.job.dead_lettered") {
            result.dead = Some((text(&s.data["code"]), text(&s.data["message"])));
        }
        result
    }

    fn matches(&self, expect: Expect) -> bool {
        match expect {
            Expect::Applied => self.dead.is_none() && self.rejected.is_empty() && self.applied > 0,
            Expect::Rejected(code) => {
                self.applied == 0 && self.dead.as_ref().is_some_and(|(c, _)| c == code)
            }
            Expect::Partial { applied } => self.applied == applied && !self.rejected.is_empty(),
            Expect::Unparseable => self.dead.is_some(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!("{} applied", self.applied)];
        if !self.rejected.is_empty() {
            parts.push(format!("{} rejected", self.rejected.len()));
        }
        match &self.dead {
            Some((code, message)) if self.applied > 0 => format!(
                "{}; dead-lettered {code}: {}",
                parts.join(", "),
                shorten(message, 60)
            ),
            Some((code, message)) => format!("dead-lettered {code}: {}", shorten(message, 90)),
            None => parts.join(", "),
        }
    }
}

/// One line per job; returns whether every job did what the batch expects.
fn print_jobs(
    batch: &[SampleJob],
    settled: &std::collections::HashMap<String, Settlement>,
    events: &[Value],
) -> bool {
    outln!("{:<26} {:<34} WHAT HAPPENED", "JOB", "EXPECTED");
    let mut all_ok = true;
    for job in batch {
        let result = JobResult::of(&job.id, settled.get(&job.id), events);
        let ok = settled.contains_key(&job.id) && result.matches(job.expect);
        all_ok &= ok;
        let what = if settled.contains_key(&job.id) {
            result.describe()
        } else {
            "not settled".to_owned()
        };
        let mark = if ok { "" } else { "  <- unexpected" };
        outln!("{:<26} {:<34} {what}{mark}", job.id, job.expect.to_string());
    }
    all_ok
}

fn print_totals(events: &[Value], hooks: &[Value], dead: Option<u32>) {
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for event in events {
        *by_type.entry(text(&event["type"])).or_default() += 1;
    }
    outln!("\nevents published:");
    for (ty, n) in &by_type {
        outln!("  {ty:<32} {n}");
    }
    let verified = hooks.iter().filter(|d| d["verified"] == true).count();
    outln!(
        "webhooks: {} delivered, {verified} with a valid signature",
        hooks.len()
    );
    if let Some(dead) = dead {
        outln!("dead-letter queue: {dead} messages (reason in x-cxrel-error-code)");
    }
}

/// Reads the first job's parent back from the data store: the write is really there.
async fn print_stored(emulator: &LocalEmulator, job: &SampleJob) {
    let Ok(body) = serde_json::from_slice::<Value>(&job.body) else {
        return;
    };
    let op = &body["operations"][0];
    let (datastore, parent, field) = (
        text(&body["datastore_id"]),
        text(&op["parent_id"]),
        text(&op["relationship_field"]),
    );
    if let Ok(record) = emulator.record(&datastore, &parent).await {
        let name = text(&record["fields"]["name"]);
        let ids = &record["fields"][&field]["ids"];
        outln!(
            "data store: {datastore}/{parent} ({name}) now holds {field} = {ids}, version {}",
            record["_version"]
        );
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
