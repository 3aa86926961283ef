//! `cxrel dlq redeliver-webhooks` as an operator runs it: parked events go to the endpoint they
//! were parked for, signed; what is delivered leaves the queue, what is refused stays with its error.

use std::process::{Command, Output};
use std::time::Duration;

use cxrel::amqp::{Publisher, Topology, headers, topology};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::helpers::broker;
use crate::helpers::emulator::EmulatorProcess;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn redeliver(prefix: &str, config: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "dlq",
        "redeliver-webhooks",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args(&args)
        .env_remove("CXREL_ENV")
        .env("CXREL__AMQP__PREFIX", prefix)
        .env("CXREL__LOG__LEVEL", "warn")
        .output()
        .expect("run cxrel")
}

async fn answer(emu: &EmulatorProcess, name: &str, status: u16) -> String {
    emu.configure_webhook_receiver(name, json!({"secret": SECRET, "status": status}))
        .await
}

/// A parked event as the worker leaves it: the CloudEvent body, the endpoint's number if any.
async fn park(publisher: &Publisher, topo: &Topology, id: &str, number: Option<u64>) {
    let body = json!({
        "specversion": "1.0", "id": id, "type": "cxrel.job.completed",
        "source": "cxrel://test", "data": {"job_id": id},
    });
    let mut table = FieldTable::default();
    headers::set_str(&mut table, headers::ERROR_MESSAGE, "endpoint answered 503");
    headers::set_u64(&mut table, headers::ATTEMPTS, 5);
    if let Some(number) = number {
        headers::set_u64(&mut table, "x-cxrel-webhook-number", number);
    }
    let properties = BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_headers(table);
    publisher
        .to_queue(
            &topo.webhooks_dead(),
            body.to_string().as_bytes(),
            properties,
        )
        .await
        .unwrap();
}

fn ids(deliveries: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = deliveries
        .iter()
        .filter(|d| d["verified"] == true)
        .map(|d| {
            d["headers"]["webhook-id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn parked_webhooks_are_redelivered_to_their_endpoint_and_refused_ones_stay_parked() {
    let emu = EmulatorProcess::spawn();
    let back = answer(&emu, "back", 200).await;
    let still = answer(&emu, "still", 500).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hooks.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nurl = \"{back}\"\nsecret = \"{SECRET}\"\n\n[[webhooks]]\nurl = \"{still}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let prefix = broker::unique_prefix("redeliver");
    let topo = Topology::new(prefix, vec![Duration::from_secs(1)]);
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    topology::declare(&channel, &topo).await.unwrap();
    let publisher = Publisher::open(&connection).await.unwrap();
    park(&publisher, &topo, "for-one", Some(1)).await;
    park(&publisher, &topo, "for-two", Some(2)).await;
    // Parked before reaching an endpoint's queue: for every endpoint that wants it.
    park(&publisher, &topo, "for-all", None).await;

    let out = redeliver(topo.prefix(), &config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("1 of 3 parked events delivered; 2 refused again"),
        "{text}"
    );
    assert_eq!(
        ids(&emu.webhook_deliveries("back").await),
        ["for-all", "for-one"]
    );
    let kept = broker::take(&channel, &topo.webhooks_dead(), 3, Duration::from_secs(3)).await;
    assert_eq!(kept.len(), 2);
    for message in &kept {
        let t = headers::table(&message.delivery.properties);
        assert_eq!(headers::get_u64(&t, "x-cxrel-webhook-number"), Some(2));
        assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), Some(6));
        let why = headers::get_str(&t, headers::ERROR_MESSAGE).unwrap_or_default();
        assert!(why.contains("webhook #2") && why.contains("500"), "{why}");
        // Looked at by taking it: put it back as it was.
        let delivery = &message.delivery;
        publisher
            .to_queue(
                &topo.webhooks_dead(),
                &delivery.data,
                delivery.properties.clone(),
            )
            .await
            .unwrap();
    }

    // The endpoint is fixed: only its events go, and the queue empties.
    answer(&emu, "still", 200).await;
    let out = redeliver(topo.prefix(), &config, &["--endpoint", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("2 of 2 parked events delivered"), "{text}");
    let verified = ids(&emu.webhook_deliveries("still").await);
    assert_eq!(verified, ["for-all", "for-all", "for-two", "for-two"]);
    assert_eq!(
        ids(&emu.webhook_deliveries("back").await).len(),
        2,
        "no duplicate to #1"
    );
    let left = broker::take(&channel, &topo.webhooks_dead(), 1, Duration::from_secs(1)).await;
    assert!(left.is_empty());
    broker::teardown(&channel, &topo).await;
}
