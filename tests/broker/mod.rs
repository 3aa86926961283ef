//! Test support for suites that talk to the local RabbitMQ: a unique prefix per test (so suites run
//! in parallel on one broker), reading queues, and removing what a test declared.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use cxrel::amqp::Topology;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{Channel, Connection, ConnectionProperties, message::BasicGetMessage};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("test-{test}-{}", &id[..8])
}

pub fn topology(prefix: &str, delays_ms: &[u64]) -> Topology {
    Topology::new(
        prefix,
        delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    )
}

pub async fn connect() -> Connection {
    Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("the tests need RabbitMQ on 127.0.0.1:5672 (see .ci/run)")
}

/// Takes up to `count` messages from `queue`, acking them, waiting at most `timeout` in total.
pub async fn take(
    channel: &Channel,
    queue: &str,
    count: usize,
    timeout: Duration,
) -> Vec<BasicGetMessage> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            Some(message) => {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                out.push(message);
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    out
}

/// Asserts that no job of `topology` was dead-lettered (waits half a second for a late one).
pub async fn assert_no_dead_letters(channel: &Channel, topology: &Topology) {
    let dead = take(channel, &topology.dead(), 1, Duration::from_millis(500)).await;
    assert!(dead.is_empty(), "nothing dead-lettered, got {}", dead.len());
}

/// Deletes every queue and the exchange of `topology`, ignoring what does not exist.
pub async fn teardown(channel: &Channel, topology: &Topology) {
    let _ = cxrel::amqp::topology::delete(channel, topology).await;
}
