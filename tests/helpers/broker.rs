//! Test support for suites that talk to the local RabbitMQ: a unique prefix per test (so suites run
//! in parallel on one broker), reading queues, and removing what a test declared.

use std::time::{Duration, Instant};

use cxrel::amqp::Topology;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
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
/// Consumes rather than `basic.get`, which quorum queues with a single active consumer (the jobs
/// queue) refuse; messages delivered beyond `count` are handed back.
pub async fn take(
    channel: &Channel,
    queue: &str,
    count: usize,
    timeout: Duration,
) -> Vec<BasicGetMessage> {
    let tag = format!("take-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                out.push(BasicGetMessage {
                    delivery,
                    message_count: 0,
                });
            }
            _ => break,
        }
    }
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    while let Ok(Some(Ok(extra))) =
        tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
    {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let _ = extra.acker.nack(requeue).await;
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
