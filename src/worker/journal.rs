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
            metrics::counter!("cxrel_intents_left_behind_total").increment(1);
            restore_until_settled(handler.as_ref(), &message.delivery, &lease).await?;
            channel
                .basic_ack(message.delivery.delivery_tag, BasicAckOptions::default())
                .await?;
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
                metrics::counter!("cxrel_intents_left_behind_total").increment(1);
                let (handler, journal) = (handler.clone(), self.clone());
                tokio::spawn(async move {
                    let lease = journal.lease.clone();
                    if restore_until_settled(handler.as_ref(), &delivery, &lease)
                        .await
                        .is_ok()
                    {
                        let _ = journal
                            .channel
                            .basic_ack(tag, BasicAckOptions::default())
                            .await;
                    }
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

/// Header of a probe: an empty message to the jobs queue that only makes the active replica
/// activate (it is acked unread).
pub const PROBE_HEADER: &str = "x-cxrel-probe";

/// How often a replica looks for intents nobody is undoing.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// Activation is what undoes leftovers, and only a job delivery starts it: intents left when no job
/// follows (the dead replica's jobs were all dead-lettered by the broker, say) would wait for the
/// next job. So every replica looks at the log each [`PROBE_INTERVAL`]; intents ready there on two
/// looks in a row (an activated replica takes them at once; one in flight between its publish and
/// its return is ready for a moment only) make it send a probe to the jobs queue, and whichever
/// replica is active gets it and activates.
#[derive(Default)]
pub struct StrandedWatch {
    seen_before: bool,
}

impl StrandedWatch {
    pub async fn look(
        &mut self,
        connection: &Connection,
        publisher: &Publisher,
        intents: &str,
        jobs: &str,
    ) -> Result<(), AmqpError> {
        let waiting = ready_intents(connection, intents).await?;
        let stranded = waiting > 0 && self.seen_before;
        self.seen_before = waiting > 0;
        if !stranded {
            return Ok(());
        }
        tracing::info!(
            intents = waiting,
            "write intents wait with no active replica taking them; sending a probe so it undoes them"
        );
        let mut table = FieldTable::default();
        crate::amqp::headers::set_str(&mut table, PROBE_HEADER, "activate");
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(format!(
                "cxrel-probe-{}",
                uuid::Uuid::new_v4()
            )))
            .with_headers(table);
        publisher.to_queue(jobs, b"", properties).await
    }
}

/// Intents ready in the log (a passive declare on a channel of its own: a missing queue closes it).
async fn ready_intents(connection: &Connection, intents: &str) -> Result<u32, AmqpError> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            intents.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "checked".into()).await;
    Ok(declared?.message_count())
}

/// True for a probe (empty, with [`PROBE_HEADER`]): acked once the replica is activated, never a
/// job. A job always has a body.
pub fn is_probe(delivery: &Delivery) -> bool {
    delivery.data.is_empty()
        && crate::amqp::headers::get_str(
            &crate::amqp::headers::table(&delivery.properties),
            PROBE_HEADER,
        )
        .is_some()
}

fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
}

/// Longest pause between tries of a leftover that cannot be undone yet.
const MAX_BLOCKED_DELAY: Duration = Duration::from_secs(60);

/// Restores one leftover, trying again (1 s, doubling to a minute) while it is blocked. The
/// session stays as it is meanwhile: its jobs wait, held, instead of going back to the queue with a
/// closed connection (each return would count towards the broker's delivery limit). Ends with an
/// error only when the session's lease is lost; the intent then goes back with the channel.
async fn restore_until_settled<H: JobHandler>(
    handler: &H,
    delivery: &Delivery,
    lease: &CancellationToken,
) -> Result<(), AmqpError> {
    let mut delay = Duration::from_secs(1);
    loop {
        let Leftover::Blocked(why) = restore(handler, delivery, lease).await else {
            return Ok(());
        };
        if lease.is_cancelled() {
            return Err(AmqpError::LeftoverBlocked(why));
        }
        tracing::warn!(retry_in = ?delay, "jobs wait until a job another replica left half-written is undone: {why}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = lease.cancelled() => return Err(AmqpError::LeftoverBlocked(why)),
        }
        delay = (delay * 2).min(MAX_BLOCKED_DELAY);
    }
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
