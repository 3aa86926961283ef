//! Webhook URLs carry tokens (in the path or the query), so a parked webhook's
//! `x-cxrel-webhook-url`, its error text and the worker's log show only scheme, host and port.
//! A real worker process (log captured), the emulator's receiver answering 503, an endpoint that
//! refuses connections, and the local RabbitMQ.

use std::time::Duration;

use cxrel::amqp::{Publisher, headers};
use serde_json::json;

use crate::helpers::emulator::{EmulatorProcess, named_record};
use crate::helpers::workers::{WorkerProcess, job, op, publish_jobs, rid, test_config};
use crate::helpers::{broker, emulator};
use cxrel::harness::config::WebhookTarget;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "T0KEN-in-the-url";

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
    let completed_only = |url: String| WebhookTarget {
        url,
        secret: SECRET.to_owned(),
        events: vec!["cxrel.job.completed".to_owned()],
    };
    let config = test_config(&emu.base, &prefix)
        .webhook_retries(2, Duration::from_millis(20)..=Duration::from_millis(50))
        .webhook(completed_only(format!("{failing}?token={TOKEN}")))
        .webhook(completed_only(format!("http://127.0.0.1:1/hooks/{TOKEN}")));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let worker = WorkerProcess::spawn_logged(&config, &log);

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
