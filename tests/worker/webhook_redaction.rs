//! Webhook URLs carry tokens (in the path or the query), so a parked webhook's
//! `x-cxrel-webhook-url`, its error text and the worker's log show only scheme, host and port.
//! A real worker process (log captured), the emulator's receiver answering 503, an endpoint that
//! refuses connections, and the local RabbitMQ.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cxrel::amqp::{Publisher, headers};
use serde_json::json;

use crate::helpers::emulator::{EmulatorProcess, named_record};
use crate::helpers::workers::{WorkerOptions, job, op, publish_jobs, rid, worker_config_with};
use crate::helpers::{broker, emulator};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "T0KEN-in-the-url";

/// A `cxrel worker` whose stderr (the log, JSON lines) goes to `log`; killed on drop.
struct LoggedWorker(std::process::Child);

impl LoggedWorker {
    fn spawn(config: &std::path::Path, log: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxrel"))
            .arg("--config")
            .arg(config)
            .arg("worker")
            .env_remove("CXREL_ENV")
            .env_remove("RUST_LOG")
            .env("CXREL__LOG__LEVEL", "debug")
            .env("CXREL__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn cxrel worker");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("cxrel worker listening on "));
        assert!(listening, "the worker started");
        std::thread::spawn(move || for _ in lines {});
        Self(child)
    }
}

impl Drop for LoggedWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn parked_webhooks_logs_and_errors_never_show_the_webhook_url_token() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore(
        "ds",
        json!([
            named_record(&rid("r", 0), "a"),
            named_record(&rid("r", 1), "b")
        ]),
    )
    .await;
    let failing = emu.url("/_emulator/webhooks/down");
    let status = emulator::client()
        .put(&failing)
        .json(&json!({"secret": SECRET, "status": 503}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let prefix = broker::unique_prefix("hookredact");
    let topology = broker::topology(&prefix, &[200]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    cxrel::amqp::topology::declare(&channel, &topology)
        .await
        .unwrap();
    let publisher = Publisher::open(&conn).await.unwrap();
    let options = WorkerOptions {
        extra: format!(
            "[webhook_delivery]\nmax_attempts = 2\nmin_backoff = \"20ms\"\nmax_backoff = \"50ms\"\n\n\
             [[webhooks]]\nurl = \"{failing}?token={TOKEN}\"\nsecret = \"{SECRET}\"\n\
             events = [\"cxrel.job.completed\"]\n\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:1/hooks/{TOKEN}\"\nsecret = \"{SECRET}\"\n\
             events = [\"cxrel.job.completed\"]\n"
        ),
        ..WorkerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (
        dir.path().join("worker.toml"),
        dir.path().join("worker.log"),
    );
    std::fs::write(&config, worker_config_with(&emu.base, &prefix, &options)).unwrap();
    let worker = LoggedWorker::spawn(&config, &log);

    let (p, c) = (rid("r", 0), rid("r", 1));
    publish_jobs(
        &publisher,
        &topology,
        &[job(
            "hooked",
            "ds",
            true,
            vec![op(&p, "parent_child_link", &[&c])],
        )],
    )
    .await;
    let parked = broker::take(
        &channel,
        &topology.webhooks_dead(),
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(parked.len(), 2, "one parked delivery per endpoint");
    let mut shown: Vec<String> = Vec::new();
    for message in &parked {
        let table = headers::table(&message.delivery.properties);
        let url = headers::get_str(&table, "x-cxrel-webhook-url").unwrap_or_default();
        let error = headers::get_str(&table, headers::ERROR_MESSAGE).unwrap_or_default();
        assert!(
            !url.contains(TOKEN) && !error.contains(TOKEN),
            "{url} {error}"
        );
        assert!(!error.is_empty(), "the error still says why");
        shown.push(url);
    }
    shown.sort();
    let emu_host = emu.base.trim_start_matches("http://");
    assert_eq!(
        shown,
        vec![
            "http://127.0.0.1:1/***".to_owned(),
            format!("http://{emu_host}/***")
        ]
    );
    drop(worker);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("webhook parked"),
        "the parking was logged:\n{log}"
    );
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "log lines showing the token: {leaks:#?}");
    broker::teardown(&channel, &topology).await;
}
