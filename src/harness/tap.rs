//! Listens to the events exchange on an exclusive queue and records, per job id, the event that
//! settled it (`cxrel.job.completed` or `cxrel.job.dead_lettered`) and when it arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde_json::Value;
use tokio::sync::Notify;

use crate::amqp::{AmqpError, Topology};

/// The event that settled a job.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// `cxrel.job.completed` or `cxrel.job.dead_lettered`.
    pub ty: String,
    pub data: Value,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Collected {
    pub settled: HashMap<String, Settlement>,
    /// Every event received, when the tap keeps them (the demo does; the bench does not).
    pub events: Vec<Value>,
}

pub struct Tap {
    collected: Arc<Mutex<Collected>>,
    changed: Arc<Notify>,
    channel: Channel,
}

impl Tap {
    /// Binds before anything is published, so no event is missed. `keep_all` also keeps the
    /// per-operation events (routing key `#` instead of `job.#`).
    pub async fn start(
        connection: &Connection,
        topology: &Topology,
        keep_all: bool,
    ) -> Result<Self, AmqpError> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(1000, BasicQosOptions::default()).await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await?;
        let key = if keep_all { "#" } else { "job.#" };
        channel
            .queue_bind(
                queue.name().clone(),
                topology.events().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // No acks: the queue is this tap's own and dies with it, so acking would only add broker
        // work to what the bench measures.
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "cxrel-tap".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        let collected = Arc::new(Mutex::new(Collected::default()));
        let changed = Arc::new(Notify::new());
        tokio::spawn(collect(
            consumer,
            collected.clone(),
            changed.clone(),
            keep_all,
        ));
        Ok(Self {
            collected,
            changed,
            channel,
        })
    }

    /// Waits until `count` distinct jobs have settled; false on timeout.
    pub async fn wait_settled(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.settled_count() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.settled_count() >= count;
            }
        }
    }

    /// Closes the tap's channel (its queue goes with it) before the connection closes.
    pub async fn close(self) {
        let _ = self.channel.close(200, "tap done".into()).await;
    }

    pub fn settled_count(&self) -> usize {
        self.collected.lock().map(|c| c.settled.len()).unwrap_or(0)
    }

    /// What has been received so far.
    pub fn snapshot(&self) -> (HashMap<String, Settlement>, Vec<Value>) {
        self.collected
            .lock()
            .map(|c| (c.settled.clone(), c.events.clone()))
            .unwrap_or_default()
    }
}

async fn collect(
    mut consumer: lapin::Consumer,
    collected: Arc<Mutex<Collected>>,
    changed: Arc<Notify>,
    keep_all: bool,
) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) else {
            continue;
        };
        record(&collected, event, keep_all);
        changed.notify_waiters();
    }
}

fn record(collected: &Mutex<Collected>, event: Value, keep_all: bool) {
    let Ok(mut c) = collected.lock() else { return };
    let ty = event["type"].as_str().unwrap_or_default().to_owned();
    if ty == "cxrel.job.completed" || ty == "cxrel.job.dead_lettered" {
        let job_id = event["data"]["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // A dead-lettered job may also publish a job.completed (with its per-operation results);
        // the dead letter is what settled it, whichever arrives first. The first arrival's time
        // stays: that is when the job settled.
        let at = c.settled.get(&job_id).map_or_else(Instant::now, |s| s.at);
        let dead = ty == "cxrel.job.dead_lettered";
        if dead || !c.settled.contains_key(&job_id) {
            let data = event["data"].clone();
            c.settled.insert(job_id, Settlement { ty, data, at });
        }
    }
    if keep_all {
        c.events.push(event);
    }
}
