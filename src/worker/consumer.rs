//! The consume loop: connect, declare, consume with prefetch, hand each delivery to a bounded set of
//! tasks, settle it; on connection loss reconnect with backoff and resume (in-flight work whose
//! channel died is left to redelivery); on shutdown stop consuming and drain within the deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::outcome::Outcome;
use super::settle::{Settler, previous_attempts};
use super::trace::TraceParent;
use crate::amqp::{self, AmqpError, Publisher, PublisherSlot, Topology, headers};
use crate::http::Readiness;
use crate::secret::Secret;
use crate::webhooks::WebhookQueue;

/// One job message as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct IncomingJob {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    /// Attempts made before this one (from `x-cxrel-attempts`).
    pub previous_attempts: u64,
    pub redelivered: bool,
    /// This job's span in the caller's trace (or a new trace).
    pub trace: TraceParent,
}

/// The pipeline, from the consumer's point of view.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: IncomingJob) -> impl Future<Output = Outcome> + Send;
}

pub struct ConsumerConfig {
    pub url: Secret,
    pub connection_name: String,
    pub prefetch: u16,
    pub max_in_flight: usize,
    pub shutdown_timeout: Duration,
}

pub struct Consumer<H> {
    pub config: ConsumerConfig,
    pub topology: Arc<Topology>,
    pub handler: Arc<H>,
    pub readiness: Readiness,
    /// Updated with each new connection's publisher, for webhook parking.
    pub publisher_slot: PublisherSlot,
    pub webhooks: WebhookQueue,
}

impl<H: JobHandler> Consumer<H> {
    /// Runs until `cancel`, then drains in-flight jobs for at most the shutdown timeout.
    pub async fn run(self, cancel: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut tasks = JoinSet::new();
        let mut delay = Duration::from_millis(200);
        let mut last_connection = None;
        while !cancel.is_cancelled() {
            match self.session(&cancel, &permits, &mut tasks).await {
                Ok(connection) => last_connection = Some(connection),
                Err((error, connected)) => {
                    if connected {
                        delay = Duration::from_millis(200);
                    }
                    self.readiness
                        .set("broker", false, format!("reconnecting: {error}"));
                    tracing::warn!(%error, retry_in = ?delay, "broker connection lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(jitter(delay)) => {}
                        () = cancel.cancelled() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.drain(&mut tasks).await;
        if let Some(connection) = last_connection {
            let _ = connection.close(200, "shutdown".into()).await;
        }
    }

    async fn drain(&self, tasks: &mut JoinSet<()>) {
        let in_flight = tasks.len();
        tracing::info!(in_flight, timeout = ?self.config.shutdown_timeout, "draining in-flight jobs");
        let drained = tokio::time::timeout(self.config.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "shutdown timeout: unfinished jobs are left for redelivery"
            );
            tasks.abort_all();
        }
    }

    /// One connection's life. Returns the open connection on shutdown (so draining jobs can still
    /// ack), or the error that ended it and whether it had got as far as consuming.
    async fn session(
        &self,
        cancel: &CancellationToken,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Connection, (AmqpError, bool)> {
        let not_yet = |e: AmqpError| (e, false);
        let connection = amqp::connect(&self.config.url, &self.config.connection_name)
            .await
            .map_err(not_yet)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| not_yet(e.into()))?;
        amqp::topology::declare(&channel, &self.topology)
            .await
            .map_err(not_yet)?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| not_yet(e.into()))?;
        let publisher = Publisher::open(&connection).await.map_err(not_yet)?;
        self.publisher_slot.set(publisher.clone());
        let settler = Settler {
            publisher,
            topology: self.topology.clone(),
            webhooks: self.webhooks.clone(),
        };
        let tag = format!(
            "{}-{}",
            self.config.connection_name,
            uuid::Uuid::new_v4().simple()
        );
        let mut deliveries = channel
            .basic_consume(
                self.topology.jobs().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| not_yet(e.into()))?;
        self.readiness.set(
            "broker",
            true,
            format!("consuming {}", self.topology.jobs()),
        );
        tracing::info!(queue = %self.topology.jobs(), prefetch = self.config.prefetch, "consuming");
        loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                () = cancel.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    return Ok(connection);
                }
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err((error.into(), true)),
                None => return Err((AmqpError::ConsumerEnded, true)),
            };
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit,
                () = cancel.cancelled() => {
                    // Not started: stays unacked and is redelivered to whoever consumes next.
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    return Ok(connection);
                }
            };
            let Ok(permit) = permit else {
                return Ok(connection);
            };
            let handler = self.handler.clone();
            let settler = settler.clone();
            tasks.spawn(async move {
                let _in_flight = InFlight::enter();
                process(handler, settler, delivery).await;
                drop(permit);
            });
            while let Some(result) = tasks.try_join_next() {
                if let Err(error) = result {
                    tracing::error!(%error, "a job task ended abnormally");
                }
            }
        }
    }
}

/// Counts a job in `cxrel_jobs_in_flight` for as long as it lives, however its task ends.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("cxrel_jobs_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("cxrel_jobs_in_flight").decrement(1.0);
    }
}

/// Handles and settles one delivery inside the job's tracing span.
async fn process<H: JobHandler>(handler: Arc<H>, settler: Settler, delivery: Delivery) {
    let table = headers::table(&delivery.properties);
    let trace = headers::get_str(&table, headers::TRACEPARENT)
        .and_then(|h| TraceParent::parse(&h))
        .map_or_else(TraceParent::root, |parent| parent.child());
    let job = IncomingJob {
        body: delivery.data.clone(),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        previous_attempts: previous_attempts(&delivery),
        redelivered: delivery.redelivered,
        trace: trace.clone(),
    };
    let span = tracing::info_span!(
        "job",
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        job_id = tracing::field::Empty,
        attempt = job.previous_attempts + 1,
    );
    async move {
        let outcome = handler.handle(job).await;
        tracing::Span::current().record("job_id", outcome.context.job_id.as_str());
        if let Err(error) = settler.settle(&delivery, &outcome).await {
            tracing::warn!(%error, "could not settle the job; it will be handled again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            settler.requeue(&delivery).await;
        }
    }
    .instrument(span)
    .await;
}

fn jitter(delay: Duration) -> Duration {
    use rand::Rng;
    delay.mul_f64(rand::rng().random_range(0.5..1.0))
}
