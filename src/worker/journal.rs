//! The write-intent log on the broker: `{prefix}.intents`, a quorum queue only the active replica
//! touches. A job's intent is published (confirmed) before its first PATCH and consumed back by
//! this session, which holds it unacked; releasing it acks it, and the job is acked only after the
//! broker has processed that ack. When a session dies, its held intents return to the queue, and
//! the next replica to become active restores them ([`BrokerJournal::activate`]) before it checks
//! any job. Why a queue: it is the one durable store every replica already shares, and the
//! broker's own redelivery says which intents a dead session left.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::consumer::JobHandler;
use crate::amqp::{AmqpError, Publisher};
use crate::pipeline::intent::{Intent, IntentId, IntentLog, Leftover};

/// Longest a release waits for its intent to come back from the broker (it was confirmed, so it
/// is on its way).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One active session's log.
pub struct BrokerJournal {
    queue: String,
    publisher: Publisher,
    /// The channel the intents are consumed and acked on.
    channel: Channel,
    held: Mutex<Held>,
    /// The jobs' consume channel, closed if the log fails, so no job of the session is acked.
    jobs_channel: Channel,
    lease: CancellationToken,
}

/// Intents this session published, by id: the delivery tag once it came back, or a release
/// waiting for it.
#[derive(Default)]
struct Held {
    ours: HashSet<String>,
    tags: HashMap<String, u64>,
    waiting: HashMap<String, oneshot::Sender<u64>>,
}

impl BrokerJournal {
    /// Called when the session receives its first job (it is the active replica now): restores
    /// every intent a dead session left in the queue, then consumes the queue for this session's
    /// own intents. No job of the session is handled before this returns.
    pub async fn activate<H: JobHandler>(
        connection: &Connection,
        jobs_channel: Channel,
        publisher: Publisher,
        queue: String,
        handler: Arc<H>,
        lease: CancellationToken,
    ) -> Result<Arc<Self>, AmqpError> {
        let channel = connection.create_channel().await?;
        let mut left = 0usize;
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            left += 1;
            let tag = message.delivery.delivery_tag;
            if let Leftover::Blocked(why) =
                restore(handler.as_ref(), &message.delivery, &lease).await
            {
                // Kept for the next activation (this replica's or another's); until then no job
                // may be checked against the half-written parents.
                let _ = channel
                    .close(320, "a leftover intent is blocked".into())
                    .await;
                return Err(AmqpError::LeftoverBlocked(why));
            }
            channel.basic_ack(tag, BasicAckOptions::default()).await?;
        }
        if left > 0 {
            tracing::warn!(
                intents = left,
                "restored the writes of jobs a replica left half-done"
            );
        }
        let tag = format!("intents-{}", uuid::Uuid::new_v4().simple());
        let deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let journal = Arc::new(Self {
            queue,
            publisher,
            channel,
            held: Mutex::default(),
            jobs_channel,
            lease,
        });
        tokio::spawn(journal.clone().take_back(deliveries, handler));
        Ok(journal)
    }

    /// Files each intent that comes back under its id. One this session did not publish is a
    /// dead session's that the broker returned late: it is restored like those at activation.
    async fn take_back<H: JobHandler>(
        self: Arc<Self>,
        mut deliveries: lapin::Consumer,
        handler: Arc<H>,
    ) {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let id = message_id(&delivery).unwrap_or_default();
            let tag = delivery.delivery_tag;
            let ours = {
                let mut held = self.lock();
                if held.ours.contains(&id) {
                    match held.waiting.remove(&id) {
                        Some(waiting) => {
                            let _ = waiting.send(tag);
                        }
                        None => {
                            held.tags.insert(id, tag);
                        }
                    }
                    true
                } else {
                    false
                }
            };
            if !ours {
                // Off this loop: this session's own intents keep coming back meanwhile.
                tracing::warn!(
                    "an intent a dead replica left arrived after activation; restoring it now"
                );
                let (handler, journal) = (handler.clone(), self.clone());
                tokio::spawn(async move {
                    let leftover = restore(handler.as_ref(), &delivery, &journal.lease).await;
                    if let Leftover::Blocked(why) = leftover {
                        // Handed back only by ending the session: a requeue would come straight back.
                        journal
                            .fence(&format!("a late leftover intent is blocked: {why}"))
                            .await;
                        return;
                    }
                    let _ = journal
                        .channel
                        .basic_ack(tag, BasicAckOptions::default())
                        .await;
                });
            }
        }
        // Only the log's own channel failing needs the session ended; a connection that closed
        // (shutdown, or lost) has ended it already.
        if !self.lease.is_cancelled() && self.jobs_channel.status().connected() {
            self.fence("the intent log's consumer ended").await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn publish(&self, intent: &Intent) -> Result<IntentId, String> {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::to_vec(intent).map_err(|e| e.to_string())?;
        self.lock().ours.insert(id.clone());
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(id.as_str()))
            .with_content_type("application/json".into());
        match self
            .publisher
            .to_queue(&self.queue, &body, properties)
            .await
        {
            Ok(()) => Ok(IntentId(id)),
            Err(error) => {
                self.lock().ours.remove(&id);
                Err(error.to_string())
            }
        }
    }

    async fn ack(&self, id: IntentId) -> Result<(), String> {
        let arrived = {
            let mut held = self.lock();
            match held.tags.remove(&id.0) {
                Some(tag) => Err(tag),
                None => {
                    let (tx, rx) = oneshot::channel();
                    held.waiting.insert(id.0.clone(), tx);
                    Ok(rx)
                }
            }
        };
        let tag = match arrived {
            Err(tag) => tag,
            Ok(rx) => match tokio::time::timeout(ARRIVAL_TIMEOUT, rx).await {
                Ok(Ok(tag)) => tag,
                _ => {
                    return Err(self
                        .fence("the intent did not come back from the broker")
                        .await);
                }
            },
        };
        self.lock().ours.remove(&id.0);
        let acked = async {
            self.channel
                .basic_ack(tag, BasicAckOptions::default())
                .await?;
            // A synchronous method after the ack: once it answers, the broker has processed the
            // ack (a channel's frames are handled in order), so the job's own ack cannot overtake
            // it.
            self.channel
                .queue_declare(
                    self.queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
        };
        match acked.await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.fence(&error.to_string()).await),
        }
    }

    /// The log can no longer tell which intents are done: end the session. Its jobs are not acked
    /// (their channel closes and the broker requeues them); the next owner restores their intents
    /// and runs them again.
    async fn fence(&self, why: &str) -> String {
        tracing::error!(
            why,
            "the write-intent log failed; ending the consume session"
        );
        self.lease.cancel();
        let _ = self.jobs_channel.close(320, "intent log lost".into()).await;
        let _ = self.channel.close(320, "intent log lost".into()).await;
        why.to_owned()
    }
}

impl IntentLog for BrokerJournal {
    fn record<'a>(&'a self, intent: &'a Intent) -> BoxFuture<'a, Result<IntentId, String>> {
        Box::pin(self.publish(intent))
    }

    fn release(&self, id: IntentId) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.ack(id))
    }
}

fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
}

/// Restores one leftover intent; one that does not parse is logged and dropped (it cannot be
/// acted on, and keeping it would stop every activation).
async fn restore<H: JobHandler>(
    handler: &H,
    delivery: &Delivery,
    lease: &CancellationToken,
) -> Leftover {
    match serde_json::from_slice::<Intent>(&delivery.data) {
        Ok(intent) => handler.restore_leftover(intent, lease.clone()).await,
        Err(error) => {
            tracing::error!(%error, "dropping an unreadable write intent");
            Leftover::Refused(error.to_string())
        }
    }
}
