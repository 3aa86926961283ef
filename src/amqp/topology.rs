//! Queue and exchange names derived from `[amqp].prefix`, and their idempotent declaration (SPEC §5):
//! the quorum jobs queue (single active consumer, delivery limit, dead-lettering to the dead queue),
//! one TTL hold queue per retry delay dead-lettering back to it, the dead-letter queue, the events
//! topic exchange, the webhook dead queue and the write-intent log.
//!
//! One active consumer on the jobs queue is how cxrel keeps one writer per data store across
//! replicas: the broker hands every job to one replica at a time and fails over to another when
//! its connection dies (see the README's "Replicas and ownership").

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::AmqpError;

/// The names of one deployment's queues and exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    retry_delays: Vec<Duration>,
    delivery_limit: u32,
}

/// `[amqp].delivery_limit`'s default.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 10;

impl Topology {
    pub fn new(prefix: impl Into<String>, retry_delays: Vec<Duration>) -> Self {
        Self {
            prefix: prefix.into(),
            retry_delays,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }

    pub fn from_settings(amqp: &crate::settings::AmqpSettings) -> Self {
        Self::new(amqp.prefix.clone(), amqp.retry_delays.clone())
            .with_delivery_limit(amqp.delivery_limit)
    }

    /// Unsettled deliveries of one job before the worker dead-letters it (at least 1).
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.max(1);
        self
    }

    pub fn delivery_limit(&self) -> u32 {
        self.delivery_limit
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn jobs(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The write-intent log: what atomic jobs in flight are writing (see `pipeline::intent`).
    pub fn intents(&self) -> String {
        format!("{}.intents", self.prefix)
    }

    pub fn webhooks_dead(&self) -> String {
        format!("{}.webhooks.dead", self.prefix)
    }

    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// The hold queue for one delay, e.g. `cxrel.retry.30s`. The delay is part of the name, so
    /// changing the delays declares new queues instead of clashing with the old queues' arguments.
    pub fn retry_queue(&self, delay: Duration) -> String {
        let label = humantime::format_duration(delay)
            .to_string()
            .replace(' ', "");
        format!("{}.retry.{label}", self.prefix)
    }

    /// Where a job goes after its `failed_attempts`-th transient failure (1-based): the hold queue
    /// of the next delay, or `None` when the delays are used up and the job must be dead-lettered.
    pub fn retry_after_failure(&self, failed_attempts: u64) -> Option<(String, Duration)> {
        let index = usize::try_from(failed_attempts.checked_sub(1)?).ok()?;
        let delay = *self.retry_delays.get(index)?;
        Some((self.retry_queue(delay), delay))
    }
}

/// Declares everything; safe to run any number of times and from several processes at once.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), AmqpError> {
    declare_jobs(channel, topology).await?;
    declare_quorum(channel, &topology.dead()).await?;
    declare_quorum(channel, &topology.webhooks_dead()).await?;
    declare_quorum(channel, &topology.intents()).await?;
    for delay in topology.retry_delays() {
        declare_hold_queue(channel, topology, *delay).await?;
    }
    let events = topology.events();
    channel
        .exchange_declare(
            events.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(declare_error(&events))?;
    Ok(())
}

/// Names the object a declare failed on and what to do (a PRECONDITION_FAILED alone does not).
fn declare_error(name: &str) -> impl FnOnce(lapin::Error) -> AmqpError + '_ {
    move |error| AmqpError::Declare {
        name: name.to_owned(),
        error,
    }
}

/// Deletes every queue and the exchange of `topology` (the demo's and the bench's throw-away
/// prefixes); what does not exist is skipped.
pub async fn delete(channel: &Channel, topology: &Topology) -> Result<(), AmqpError> {
    let mut queues = vec![
        topology.jobs(),
        topology.dead(),
        topology.webhooks_dead(),
        topology.intents(),
    ];
    queues.extend(
        topology
            .retry_delays()
            .iter()
            .map(|d| topology.retry_queue(*d)),
    );
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(topology.events().into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

/// Declares one durable quorum queue.
pub async fn declare_quorum(channel: &Channel, name: &str) -> Result<(), AmqpError> {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(name.into(), durable(), args)
        .await
        .map_err(declare_error(name))?;
    Ok(())
}

/// The jobs queue: quorum, one active consumer at a time, and a delivery limit one above the
/// worker's own (the worker dead-letters with a code first; the broker's limit is the backstop
/// for a message that kills every worker before it can).
async fn declare_jobs(channel: &Channel, topology: &Topology) -> Result<(), AmqpError> {
    let long = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(topology.delivery_limit) + 1),
    );
    args.insert("x-dead-letter-exchange".into(), long(""));
    args.insert("x-dead-letter-routing-key".into(), long(&topology.dead()));
    let name = topology.jobs();
    channel
        .queue_declare(name.as_str().into(), durable(), args)
        .await
        .map_err(declare_error(&name))?;
    Ok(())
}

/// A classic queue nobody consumes: messages wait out the TTL, then the broker dead-letters them
/// through the default exchange back to the jobs queue. One queue per delay keeps expiry FIFO.
async fn declare_hold_queue(
    channel: &Channel,
    topology: &Topology,
    delay: Duration,
) -> Result<(), AmqpError> {
    let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(topology.jobs())),
    );
    let name = topology.retry_queue(delay);
    channel
        .queue_declare(name.as_str().into(), durable(), args)
        .await
        .map_err(declare_error(&name))?;
    Ok(())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::new(
            "t1",
            vec![
                Duration::from_secs(1),
                Duration::from_secs(120),
                Duration::from_millis(1500),
            ],
        )
    }

    #[test]
    fn names_carry_the_prefix() {
        let t = topology();
        assert_eq!(t.jobs(), "t1.jobs");
        assert_eq!(t.dead(), "t1.dead");
        assert_eq!(t.events(), "t1.events");
        assert_eq!(t.webhooks_dead(), "t1.webhooks.dead");
        assert_eq!(t.intents(), "t1.intents");
    }

    #[test]
    fn hold_queues_are_named_after_their_delay() {
        let t = topology();
        assert_eq!(t.retry_queue(Duration::from_secs(120)), "t1.retry.2m");
        assert_eq!(
            t.retry_queue(Duration::from_millis(1500)),
            "t1.retry.1s500ms"
        );
    }

    #[test]
    fn each_failure_moves_to_the_next_delay_then_to_the_dead_letters() {
        let t = topology();
        assert_eq!(t.retry_after_failure(0), None);
        assert_eq!(t.retry_after_failure(1).unwrap().1, Duration::from_secs(1));
        assert_eq!(t.retry_after_failure(2).unwrap().0, "t1.retry.2m");
        assert!(t.retry_after_failure(3).is_some());
        assert_eq!(t.retry_after_failure(4), None);
    }
}
