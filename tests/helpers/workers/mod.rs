//! Test support for worker suites: a real `cxrel worker` process configured by a settings file,
//! talking to a test's emulator and its own queue prefix, plus an events tap on the events exchange.

pub mod pairs;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

/// A `cxrel worker` child process; killed on drop unless already stopped.
pub struct WorkerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of /healthz, /readyz, /metrics.
    pub http: String,
    _config: tempfile::NamedTempFile,
}

/// What a test may change in a worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub retry_delays: &'static str,
    pub requests_per_second: u32,
    pub burst: u32,
    pub client_attempts: u32,
    pub client_max_elapsed: &'static str,
    pub parallel_patches: usize,
    /// `[rate_limit].backend`: "local" or "redis".
    pub rate_limit_backend: &'static str,
    /// `[rate_limit].redis_key` (empty = derived from the prefix); each test its own.
    pub redis_key: String,
    pub redis_url: &'static str,
    pub replicas_hint: u32,
    /// `[amqp].delivery_limit` (the test's `Topology` must declare the same).
    pub delivery_limit: u32,
    /// `[amqp].confirm_timeout`.
    pub confirm_timeout: &'static str,
    /// Appended TOML: extra tables such as `[[webhooks]]`.
    pub extra: String,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            retry_delays: r#""200ms", "400ms", "800ms""#,
            requests_per_second: 2000,
            burst: 200,
            client_attempts: 3,
            client_max_elapsed: "5s",
            parallel_patches: 8,
            rate_limit_backend: "local",
            redis_key: String::new(),
            redis_url: "redis://127.0.0.1:6379",
            replicas_hint: 1,
            delivery_limit: cxrel::amqp::topology::DEFAULT_DELIVERY_LIMIT,
            confirm_timeout: "30s",
            extra: String::new(),
        }
    }
}

/// Settings every test worker gets: the emulator as data store and issuer, the test's prefix, short
/// retry delays and a fast drain.
pub fn worker_config(emulator: &str, prefix: &str, extra: &str) -> String {
    worker_config_with(
        emulator,
        prefix,
        &WorkerOptions {
            extra: extra.to_owned(),
            ..WorkerOptions::default()
        },
    )
}

pub fn worker_config_with(emulator: &str, prefix: &str, o: &WorkerOptions) -> String {
    format!(
        r#"
[amqp]
prefix = "{prefix}"
retry_delays = [{delays}]
delivery_limit = {delivery_limit}
confirm_timeout = "{confirm_timeout}"

[cxone]
api_base = "{emulator}"

[cxone.auth]
issuer = "{emulator}"

[http]
listen = "127.0.0.1:0"

[worker]
shutdown_timeout = "10s"
instance = "{prefix}"
parallel_patches = {parallel}

[rate_limit]
requests_per_second = {rps}
burst = {burst}
backend = "{backend}"
redis_key = "{redis_key}"
redis_url = "{redis_url}"
replicas_hint = {replicas}

[retry]
max_attempts = {attempts}
min_backoff = "20ms"
max_backoff = "500ms"
max_elapsed = "{elapsed}"
{extra}
"#,
        delays = o.retry_delays,
        delivery_limit = o.delivery_limit,
        confirm_timeout = o.confirm_timeout,
        parallel = o.parallel_patches,
        rps = o.requests_per_second,
        burst = o.burst,
        backend = o.rate_limit_backend,
        redis_key = o.redis_key,
        redis_url = o.redis_url,
        replicas = o.replicas_hint,
        attempts = o.client_attempts,
        elapsed = o.client_max_elapsed,
        extra = o.extra,
    )
}

impl WorkerProcess {
    pub fn spawn(config: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("temp config");
        std::io::Write::write_all(&mut file, config.as_bytes()).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxrel"))
            .arg("--config")
            .arg(file.path())
            .arg("worker")
            .env_remove("CXREL_ENV")
            .env("CXREL__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cxrel worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("cxrel worker listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                    break;
                }
            }
            for _ in lines {}
        });
        let http = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("cxrel worker did not print its address within 30s");
            }
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
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.http)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker not ready within {timeout:?}");
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
                "#".into(),
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
pub fn job(id: &str, ds: &str, atomic: bool, operations: Vec<Value>) -> Value {
    serde_json::json!({"job_id": id, "datastore_id": ds, "atomic": atomic, "operations": operations})
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
