//! The one place that maps an outcome to broker actions: events, a retry copy on the next hold
//! queue, or a dead letter; each confirmed by the broker before the delivery is acked (SPEC §5).
//!
//! Order: events first, then the successor copy, then the ack. Events carry ids stable across
//! redelivery, so a settle that fails part-way and is tried again repeats at most events with the
//! same ids; the successor copy is published once the events are in, and the ack follows it, so a
//! job never exists twice because its events failed.

use std::sync::Arc;

use futures::future::try_join_all;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::FieldTable;

use super::acks::{Acks, Verdict};
use crate::amqp::{AmqpError, Publisher, Topology, headers};
use crate::error::ErrorClass;
use crate::events::{CloudEvent, now_rfc3339};
use crate::pipeline::{Failure, Outcome};
use crate::webhooks::WebhookQueue;

/// What settling did, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Completed,
    Retried,
    DeadLettered,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Turns one job's [`Outcome`] into broker actions on one connection's publisher: its events, then
/// a retry copy on the next hold queue or a dead letter, each confirmed, then the ack (module doc);
/// confirmed events are then offered to the webhooks. The consumer makes one per connection.
#[derive(Clone)]
pub struct Settler {
    pub publisher: Publisher,
    /// The consume channel's acknowledgements (coalesced, see [`super::acks`]).
    pub acks: Acks,
    pub topology: Arc<Topology>,
    /// Events are offered to webhooks once the broker has confirmed them.
    pub webhooks: WebhookQueue,
    /// `cxrel://{instance}`.
    pub source: String,
}

impl Settler {
    /// Publishes what replaces the delivery, then acks it. If the broker does not confirm, the
    /// delivery is not acked and the caller tries again (see the module doc for why that is safe).
    pub async fn settle(
        &self,
        delivery: &Delivery,
        previous: u64,
        outcome: &Outcome,
    ) -> Result<Settled, AmqpError> {
        let settled = match &outcome.failure {
            None => {
                let mut events = outcome.events.clone();
                events.extend(outcome.final_events.iter().cloned());
                self.publish_events(&events).await?;
                self.offer_webhooks(events).await;
                Settled::Completed
            }
            Some(failure) => {
                self.settle_failure(delivery, outcome, failure, previous + 1)
                    .await?
            }
        };
        self.ack(delivery).await;
        metrics::counter!("cxrel_jobs_total", "outcome" => settled.as_str()).increment(1);
        Ok(settled)
    }

    /// Dead-letters the job with `failure` and no events (the last resort when its events or its
    /// retry copy cannot be published), then acks it.
    pub async fn dead_letter_only(
        &self,
        delivery: &Delivery,
        previous: u64,
        outcome: &Outcome,
        failure: &Failure,
    ) -> Result<(), AmqpError> {
        let attempts = previous + 1;
        let properties = failure_properties(delivery, outcome, failure, attempts);
        self.publisher
            .to_queue(&self.topology.dead(), &delivery.data, properties)
            .await?;
        self.ack(delivery).await;
        metrics::counter!("cxrel_dead_letters_total", "code" => failure.code.clone()).increment(1);
        metrics::counter!("cxrel_jobs_total", "outcome" => Settled::DeadLettered.as_str())
            .increment(1);
        tracing::warn!(job_id = %outcome.context.job_id, code = %failure.code, "job dead-lettered: {}", failure.message);
        self.announce_dead_letter(outcome, failure, attempts).await;
        Ok(())
    }

    /// Publishes `job.dead_lettered` for a dead letter made without events, as every dead letter
    /// is announced; best effort, since what refused the job's events may refuse this one too.
    async fn announce_dead_letter(&self, outcome: &Outcome, failure: &Failure, attempts: u64) {
        let dead = outcome.context.job_dead_lettered(
            &failure.code,
            &failure.message,
            failure.stage.as_str(),
            attempts,
        );
        match self.publish_events(std::slice::from_ref(&dead)).await {
            Ok(()) => self.offer_webhooks(vec![dead]).await,
            Err(error) => {
                tracing::warn!(%error, "the dead letter is in the queue, but its job.dead_lettered event could not be published");
            }
        }
    }

    /// Declares the topology again after a publish found a queue of it missing (a hold queue or
    /// the dead queue deleted by hand): the next settle attempt then finds it.
    pub async fn restore_topology(&self) {
        let channel = self.publisher.channel();
        match crate::amqp::topology::declare(channel, &self.topology).await {
            Ok(()) => tracing::warn!("a queue of the topology was missing; declared it again"),
            Err(error) => tracing::warn!(%error, "could not declare the topology again"),
        }
    }

    /// Acks once the successor is confirmed (the frame may carry earlier settled deliveries too).
    /// An ack that fails (the channel died) is not retried:
    /// the broker redelivers and the job repeats to the same state with the same event ids.
    async fn ack(&self, delivery: &Delivery) {
        if let Err(error) = self.acks.settle(delivery.delivery_tag, Verdict::Ack).await {
            tracing::warn!(%error, "ack failed after the job was settled; the broker will redeliver it");
        }
    }

    /// Gives a delivery back to the broker after settling failed, so it is not stuck unacked.
    pub async fn requeue(&self, delivery: &Delivery) {
        let _ = self
            .acks
            .settle(delivery.delivery_tag, Verdict::Requeue)
            .await;
    }

    async fn settle_failure(
        &self,
        delivery: &Delivery,
        outcome: &Outcome,
        failure: &Failure,
        attempts: u64,
    ) -> Result<Settled, AmqpError> {
        let retry = match failure.class {
            ErrorClass::Transient => self.topology.retry_after_failure(attempts),
            ErrorClass::Permanent => None,
        };
        if let Some((hold_queue, delay)) = retry {
            self.publish_events(&outcome.events).await?;
            let properties = failure_properties(delivery, outcome, failure, attempts);
            self.publisher
                .to_queue(&hold_queue, &delivery.data, properties)
                .await?;
            self.offer_webhooks(outcome.events.clone()).await;
            metrics::counter!("cxrel_retries_total", "code" => failure.code.clone()).increment(1);
            // The cause, where the operator looks first: a store or broker outage shows here
            // while the jobs wait, long before any of them is dead-lettered.
            tracing::warn!(
                job_id = %outcome.context.job_id,
                code = %failure.code,
                stage = failure.stage.as_str(),
                attempts,
                retry_in = ?delay,
                "job will be retried: {}",
                failure.message
            );
            return Ok(Settled::Retried);
        }
        let dead = outcome.context.job_dead_lettered(
            &failure.code,
            &failure.message,
            failure.stage.as_str(),
            attempts,
        );
        let mut events = outcome.events.clone();
        events.extend(outcome.final_events.iter().cloned());
        events.push(dead);
        self.publish_events(&events).await?;
        let properties = failure_properties(delivery, outcome, failure, attempts);
        self.publisher
            .to_queue(&self.topology.dead(), &delivery.data, properties)
            .await?;
        self.offer_webhooks(events).await;
        metrics::counter!("cxrel_dead_letters_total", "code" => failure.code.clone()).increment(1);
        tracing::warn!(
            job_id = %outcome.context.job_id,
            code = %failure.code,
            stage = failure.stage.as_str(),
            attempts,
            "job dead-lettered: {}",
            failure.message
        );
        Ok(Settled::DeadLettered)
    }

    async fn offer_webhooks(&self, events: Vec<CloudEvent>) {
        self.webhooks.offer_all(events).await;
    }

    async fn publish_events(&self, events: &[CloudEvent]) -> Result<(), AmqpError> {
        let exchange = self.topology.events();
        try_join_all(events.iter().map(|event| {
            let mut table = FieldTable::default();
            if let Some(traceparent) = &event.traceparent {
                headers::set_str(&mut table, headers::TRACEPARENT, traceparent.clone());
            }
            let properties = BasicProperties::default()
                .with_content_type(crate::events::STRUCTURED_CONTENT_TYPE.into())
                .with_message_id(event.id.clone().into())
                .with_type(event.ty.as_str().into())
                .with_headers(table);
            let body = event.to_json();
            let exchange = exchange.clone();
            async move {
                self.publisher
                    .publish(&exchange, event.ty.routing_key(), &body, properties, false)
                    .await
            }
        }))
        .await?;
        Ok(())
    }
}

/// Attempts already made before this delivery, from `x-cxrel-attempts`.
pub fn previous_attempts(delivery: &Delivery) -> u64 {
    headers::get_u64(&headers::table(&delivery.properties), headers::ATTEMPTS).unwrap_or(0)
}

/// The original properties (message id, content type, trace context; not the TTL, see
/// [`headers::copy_properties`]) plus the failure headers.
fn failure_properties(
    delivery: &Delivery,
    outcome: &Outcome,
    failure: &Failure,
    attempts: u64,
) -> BasicProperties {
    let mut table = headers::table(&delivery.properties);
    let now = now_rfc3339();
    // Kept only from cxrel's own earlier failures (a retry, or a replay of a dead letter): on a
    // job's first failure the header can only be the producer's.
    let failed_before =
        attempts > 1 || headers::get_u64(&table, headers::REPLAY_COUNT).unwrap_or(0) > 0;
    if !failed_before || headers::get_str(&table, headers::FIRST_FAILED_AT).is_none() {
        headers::set_str(&mut table, headers::FIRST_FAILED_AT, now.clone());
    }
    headers::set_str(&mut table, headers::LAST_FAILED_AT, now);
    headers::set_str(&mut table, headers::ERROR_CODE, failure.code.clone());
    headers::set_str(
        &mut table,
        headers::ERROR_MESSAGE,
        truncate(&failure.message, 4000),
    );
    headers::set_str(&mut table, headers::STAGE, failure.stage.as_str());
    headers::set_u64(&mut table, headers::ATTEMPTS, attempts);
    headers::set_str(&mut table, headers::JOB_ID, outcome.context.job_id.clone());
    // A data store the worker could not resolve is not taken from the producer's headers.
    let mut table = headers::without(&table, headers::DATASTORE_ID);
    let datastore = &outcome.context.datastore_id;
    if !datastore.is_empty() {
        headers::set_str(&mut table, headers::DATASTORE_ID, datastore.clone());
    }
    // The old message's redelivery count would read as this copy's own.
    let table = headers::without(&table, headers::DELIVERY_COUNT);
    headers::copy_properties(&delivery.properties, table)
}

/// `message` in at most `max` bytes, the ellipsis (3 bytes) included.
fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_within_the_limit() {
        assert_eq!(truncate("ééééé", 6), "é…");
        assert_eq!(truncate("ééééé", 10), "ééééé");
        let long = "x".repeat(5000);
        assert_eq!(truncate(&long, 4000).len(), 4000);
    }
}
