//! Test support for worker suites: a `cxrel worker` configured by a typed
//! [`WorkerConfig`](cxrel::harness::config::WorkerConfig), talking to a test's emulator and its own
//! queue prefix, either as a real process ([`WorkerProcess`]: signals, kills, drains, metrics,
//! several workers) or built in the test's own process ([`InProcessWorker`]); plus an events tap on
//! the events exchange, job builders and queue helpers.

pub mod pairs;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cxrel::harness::config::WorkerConfig;
use cxrel::settings::RateLimitBackend;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Settings every test worker starts from: the emulator as data store and issuer, the test's
/// prefix (also its instance name), hold delays of 200/400/800 ms, a fast drain, a generous local
/// rate budget and quick in-client retries. Tests change what they exercise on top.
pub fn test_config(emulator: &str, prefix: &str) -> WorkerConfig {
    WorkerConfig::new(prefix, emulator)
        .retry_delays(&millis(&[200, 400, 800]))
        .delivery_limit(cxrel::amqp::topology::DEFAULT_DELIVERY_LIMIT)
        .confirm_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(10))
        .instance(prefix)
        .parallel_patches(8)
        .rate(2000, 200)
        .rate_backend(RateLimitBackend::Local, 1)
        .redis_url("redis://127.0.0.1:6379")
        .store_retry(3, QUICK_BACKOFF, Duration::from_secs(5))
}

/// The in-client backoff of [`test_config`], for tests that change the attempts.
pub const QUICK_BACKOFF: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(20)..=Duration::from_millis(500);

/// Durations from milliseconds.
pub fn millis(ms: &[u64]) -> Vec<Duration> {
    ms.iter().map(|ms| Duration::from_millis(*ms)).collect()
}

/// A `cxrel worker` child process; killed on drop unless already stopped.
pub struct WorkerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of /healthz, /readyz, /metrics.
    pub http: String,
    _config: tempfile::NamedTempFile,
}

impl WorkerProcess {
    /// A worker logging warnings and errors to the test's stderr.
    pub fn spawn(config: &WorkerConfig) -> Self {
        Self::start(config, None)
    }

    /// A worker logging JSON lines down to debug into the file `log`.
    pub fn spawn_logged(config: &WorkerConfig, log: &Path) -> Self {
        Self::start(config, Some(log))
    }

    fn start(config: &WorkerConfig, log: Option<&Path>) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("temp config");
        std::io::Write::write_all(&mut file, config.to_toml().as_bytes()).expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cxrel"));
        command
            .arg("--config")
            .arg(file.path())
            .arg("worker")
            .env_remove("CXREL_ENV")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped());
        match log {
            None => command
                .env("CXREL__LOG__LEVEL", "warn")
                .stderr(Stdio::inherit()),
            Some(log) => command
                .env("CXREL__LOG__LEVEL", "debug")
                .env("CXREL__LOG__FORMAT", "json")
                .stderr(std::fs::File::create(log).expect("worker log file")),
        };
        let mut child = command.spawn().expect("spawn cxrel worker");
        let Some(http) = super::listening_url(&mut child, "worker") else {
            let _ = child.kill();
            panic!("cxrel worker did not print its address within 30s");
        };
        Self {
            child,
            http,
            _config: file,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Sends a real signal (SIGTERM, SIGKILL, …) to the worker.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the process to exit; returns its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        wait_ready(&self.http, timeout).await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// Waits until `{http}/readyz` answers 200.
async fn wait_ready(http: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{http}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("worker not ready within {timeout:?}");
}

/// A worker built and run inside the test's process ([`cxrel::worker::build`], zero2prod's
/// `spawn_app`), for tests that need no real signal, kill or process drain, no process-wide
/// metrics and one worker only. Needs a multi-thread test runtime, as the binary has. Stopped by
/// [`stop`](Self::stop); cancelled when dropped.
pub struct InProcessWorker {
    /// `http://127.0.0.1:PORT` of /healthz, /readyz, /metrics.
    pub http: String,
    cancel: CancellationToken,
    run: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessWorker {
    /// Builds the worker of `config` (credentials: the defaults, which the emulator accepts) and
    /// starts consuming.
    pub async fn start(config: &WorkerConfig) -> Self {
        Self::start_with_env(config, HashMap::new()).await
    }

    /// As [`start`](Self::start), with `env` as the worker's `CXREL__…` environment.
    pub async fn start_with_env(config: &WorkerConfig, env: HashMap<String, String>) -> Self {
        let settings = config
            .settings(env)
            .expect("the test worker's settings load");
        let app = cxrel::worker::build(settings)
            .await
            .expect("the test worker builds");
        let http = format!("http://{}", app.http_addr());
        let cancel = CancellationToken::new();
        let run = tokio::spawn(app.run_until_stopped(cancel.clone()));
        Self {
            http,
            cancel,
            run: Some(run),
        }
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        wait_ready(&self.http, timeout).await;
    }

    /// Stops consuming and waits for the drain, as SIGTERM does for a worker process.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(run) = self.run.take() {
            run.await
                .expect("the worker task")
                .expect("the worker stops cleanly");
        }
    }
}

impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A queue bound to the events exchange with `#`, collecting every event as JSON.
pub struct EventTap {
    consumer: lapin::Consumer,
    pub events: Vec<Value>,
}

impl EventTap {
    /// Declares the events exchange (idempotent) and binds an exclusive auto-delete queue to it.
    pub async fn bind(channel: &lapin::Channel, topology: &cxrel::amqp::Topology) -> Self {
        Self::bind_key(channel, topology, "#").await
    }

    /// As [`Self::bind`], with the tap taking only the events of `routing_key`.
    pub async fn bind_key(
        channel: &lapin::Channel,
        topology: &cxrel::amqp::Topology,
        routing_key: &str,
    ) -> Self {
        cxrel::amqp::topology::declare(channel, topology)
            .await
            .expect("declare");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        channel
            .queue_bind(
                queue.name().clone(),
                topology.events().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume tap");
        Self {
            consumer,
            events: Vec::new(),
        }
    }

    /// Collects events until `done(&events)` holds or `timeout` passes; returns whether it held.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    if let Ok(event) = serde_json::from_slice(&delivery.data) {
                        self.events.push(event);
                    }
                }
                _ => return done(&self.events),
            }
        }
        true
    }

    pub fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["type"] == ty)
    }

    pub fn count(&self, ty: &str) -> usize {
        self.of_type(ty).count()
    }
}

/// A test's own queues (fresh prefix), an event tap on them and a publisher.
pub struct Queues {
    pub topology: cxrel::amqp::Topology,
    pub channel: lapin::Channel,
    pub publisher: cxrel::amqp::Publisher,
    pub tap: EventTap,
    _conn: lapin::Connection,
}

/// Declares a topology under a prefix of `test`'s own with hold delays `delays_ms`, binds a tap.
pub async fn queues(test: &str, delays_ms: &[u64]) -> Queues {
    let topology = super::broker::topology(&super::broker::unique_prefix(test), delays_ms);
    let conn = super::broker::connect().await;
    let channel = conn.create_channel().await.expect("channel");
    let tap = EventTap::bind(&channel, &topology).await;
    let publisher = cxrel::amqp::Publisher::open(&conn)
        .await
        .expect("publisher");
    Queues {
        topology,
        channel,
        publisher,
        tap,
        _conn: conn,
    }
}

/// A deterministic record id for test record `n` of a set named `set`.
pub fn rid(set: &str, n: usize) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{set}-{n}").as_bytes()).to_string()
}

/// One replace operation as JSON.
pub fn op(parent: &str, field: &str, children: &[&str]) -> Value {
    serde_json::json!({"parent_id": parent, "relationship_field": field, "child_ids": children})
}

/// A job as JSON.
pub fn job(id: &str, datastore: &str, atomic: bool, operations: Vec<Value>) -> Value {
    serde_json::json!({
        "job_id": id,
        "datastore_id": datastore,
        "atomic": atomic,
        "operations": operations,
    })
}

/// Publishes jobs to the jobs queue, message id = job id.
pub async fn publish_jobs(
    publisher: &cxrel::amqp::Publisher,
    topology: &cxrel::amqp::Topology,
    jobs: &[Value],
) {
    for job in jobs {
        let id = job["job_id"].as_str().unwrap_or_default().to_owned();
        let props = lapin::BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into());
        publisher
            .to_queue(&topology.jobs(), job.to_string().as_bytes(), props)
            .await
            .expect("publish job");
    }
}

/// The ids stored in a record's relationship field, read back from the emulator.
pub fn stored_ids(record: &Value, field: &str) -> Vec<String> {
    record["fields"][field]["ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Closes, from the broker side, every connection whose client-given name is `name`
/// (`rabbitmqctl close_connection`); returns how many were closed.
pub fn close_broker_connections(name: &str) -> usize {
    // The text format prints pids as `<rabbit@host.N.N.N>`, which close_connection takes back.
    let output = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl list_connections");
    let needle = format!("\"connection_name\",\"{name}\"");
    let pids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| line.split('\t').next().map(str::to_owned))
        .collect();
    for pid in &pids {
        let status = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by a cxrel test"])
            .status()
            .expect("rabbitmqctl close_connection");
        assert!(status.success(), "close_connection {pid}");
    }
    pids.len()
}
