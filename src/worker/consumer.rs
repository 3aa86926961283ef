//! The consume loop: connect, declare, consume with prefetch, hand each delivery to a bounded set of
//! tasks, settle it; on connection loss reconnect with backoff and resume (in-flight work whose
//! channel died is left to redelivery); on shutdown stop taking deliveries, drain within the
//! deadline while still the queue's active consumer, then close (the standby takes over only
//! once this replica no longer writes).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionStatus};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acks::Acks;
use super::identity;
use super::journal::{self, BrokerJournal};
use super::settle::{Settler, previous_attempts};
use crate::amqp::{self, AmqpError, Publisher, PublisherSlot, Topology, headers};
use crate::error::ErrorClass;
use crate::events::EventContext;
use crate::http::Readiness;
use crate::pipeline::intent::{Intent, Journal, Leftover};
use crate::pipeline::{Failure, IncomingJob, Outcome, Stage, Turn};
use crate::secret::Secret;
use crate::trace::TraceParent;
use crate::webhooks::WebhookQueue;

/// The pipeline, from the consumer's point of view (tests plug in their own).
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: IncomingJob) -> impl Future<Output = Outcome> + Send;

    /// The next delivery's place in line for the parents it writes (jobs on one parent run in
    /// delivery order); drawn as each delivery arrives.
    fn turn(&self) -> Turn;

    /// Called when this replica becomes the active one (the first delivery of a consume session),
    /// once this process's jobs of earlier sessions have finished: another replica may have
    /// written while this one was not active.
    fn became_active(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Puts back what a job of a dead session left half-written (see `pipeline::intent`),
    /// starting no write once `lease` is cancelled.
    fn restore_leftover(
        &self,
        intent: Intent,
        lease: CancellationToken,
    ) -> impl Future<Output = Leftover> + Send {
        let _ = (intent, lease);
        async { Leftover::Settled }
    }
}

impl JobHandler for crate::pipeline::Pipeline {
    fn handle(&self, job: IncomingJob) -> impl Future<Output = Outcome> + Send {
        self.handle_job(job)
    }

    fn turn(&self) -> Turn {
        crate::pipeline::Pipeline::turn(self)
    }

    fn became_active(&self) -> impl Future<Output = ()> + Send {
        self.forget_graphs()
    }

    async fn restore_leftover(&self, intent: Intent, lease: CancellationToken) -> Leftover {
        crate::pipeline::Pipeline::restore_leftover(self, &intent, &lease).await
    }
}

impl<T: JobHandler> JobHandler for Arc<T> {
    fn handle(&self, job: IncomingJob) -> impl Future<Output = Outcome> + Send {
        self.as_ref().handle(job)
    }

    fn turn(&self) -> Turn {
        self.as_ref().turn()
    }

    fn became_active(&self) -> impl Future<Output = ()> + Send {
        self.as_ref().became_active()
    }

    fn restore_leftover(
        &self,
        intent: Intent,
        lease: CancellationToken,
    ) -> impl Future<Output = Leftover> + Send {
        self.as_ref().restore_leftover(intent, lease)
    }
}

pub struct ConsumerConfig {
    pub url: Secret,
    pub connection_name: String,
    pub prefetch: u16,
    pub max_in_flight: usize,
    pub shutdown_timeout: Duration,
    pub confirm_timeout: Duration,
}

/// The consume loop of one worker: owns the broker connection (reconnecting with backoff and
/// declaring the topology each time), consumes the jobs queue as its single active consumer with
/// `prefetch`, runs at most `max_in_flight` jobs at once through `handler`, and hands each outcome
/// to a [`Settler`] of the current connection. Built by `worker::build`; [`run`](Self::run) until
/// cancelled, then drains.
pub struct Consumer<H> {
    pub config: ConsumerConfig,
    pub topology: Arc<Topology>,
    pub handler: Arc<H>,
    pub readiness: Readiness,
    /// Updated with each new connection's publisher, for webhook parking.
    pub publisher_slot: PublisherSlot,
    pub webhooks: WebhookQueue,
    /// `cxrel://{instance}`, the source of events the consumer itself produces.
    pub source: String,
}

impl<H: JobHandler> Consumer<H> {
    /// Runs until `cancel`, then drains in-flight jobs for at most the shutdown timeout. Returns
    /// the last connection still open, for the caller to close once webhook delivery has parked
    /// what it could not deliver (parking publishes on it).
    pub async fn run(self, cancel: CancellationToken) -> Option<Closing> {
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut tasks = JoinSet::new();
        let mut delay = Duration::from_millis(200);
        let mut last_session = None;
        while !cancel.is_cancelled() {
            let lease = CancellationToken::new();
            match self.session(&cancel, &permits, &mut tasks, &lease).await {
                Ok(held) => last_session = Some(held),
                Err((error, connected)) => {
                    // Jobs of the lost session must not write any more (another replica may own
                    // the queue now); a graceful shutdown keeps the lease so they can finish.
                    lease.cancel();
                    if cancel.is_cancelled() && !connected {
                        break;
                    }
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
        last_session.map(|held| Closing { held })
    }

    async fn drain(&self, tasks: &mut JoinSet<()>) {
        // Finished tasks stay in the set until joined (the loop reaps them only on the next
        // delivery): count only what is still running.
        while tasks.try_join_next().is_some() {}
        let in_flight = tasks.len();
        tracing::info!(in_flight, timeout = ?self.config.shutdown_timeout, "draining in-flight jobs");
        if !self.join_within_shutdown_timeout(tasks).await {
            tracing::warn!(
                left = tasks.len(),
                "shutdown timeout: unfinished jobs are left for redelivery"
            );
            tasks.abort_all();
        }
    }

    /// Waits for every task for at most the shutdown timeout; false when some are still running.
    async fn join_within_shutdown_timeout(&self, tasks: &mut JoinSet<()>) -> bool {
        tokio::time::timeout(self.config.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok()
    }

    /// One connection's life. Returns the open connection and the live consumer on shutdown (so
    /// draining jobs can still ack, and no standby is handed the queue meanwhile), or the error
    /// that ended it and whether it had got as far as consuming.
    async fn session(
        &self,
        cancel: &CancellationToken,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        lease: &CancellationToken,
    ) -> Result<HeldSession, (AmqpError, bool)> {
        let not_yet = |e: AmqpError| (e, false);
        // A broker that takes TCP but never speaks AMQP would hold a SIGTERM for the whole
        // connect timeout.
        let connection = tokio::select! {
            connected = amqp::connect(&self.config.url, &self.config.connection_name) => {
                connected.map_err(not_yet)?
            }
            () = cancel.cancelled() => return Err(not_yet(AmqpError::NotConnected)),
        };
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
        let publisher = Publisher::open(&connection)
            .await
            .map_err(not_yet)?
            .with_confirm_timeout(self.config.confirm_timeout);
        self.publisher_slot.set(publisher.clone());
        tokio::spawn(watch_blocked(
            connection.status().clone(),
            self.readiness.clone(),
            lease.clone(),
        ));
        let settler = Settler {
            publisher,
            acks: Acks::start(channel.clone()),
            topology: self.topology.clone(),
            webhooks: self.webhooks.clone(),
            source: self.source.clone(),
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
        let mut health = tokio::time::interval(Duration::from_secs(1));
        let mut probe = tokio::time::interval(journal::PROBE_INTERVAL);
        let mut stranded = journal::StrandedWatch::default();
        let mut journal = Journal::default();
        loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = health.tick() => {
                    // A publisher channel the broker closed (e.g. a publish to a deleted exchange)
                    // would fail every settle: start a new session instead.
                    if !settler.publisher.channel().status().connected() {
                        // Closed, so the broker hands this session's jobs to the next consumer.
                        let _ = connection.close(320, "publisher channel lost".into()).await;
                        return Err((AmqpError::NotConnected, true));
                    }
                    continue;
                }
                _ = probe.tick() => {
                    let (intents, jobs) = (self.topology.intents(), self.topology.jobs());
                    let probed = stranded.look(&connection, &settler.publisher, &intents, &jobs);
                    if let Err(error) = probed.await {
                        tracing::warn!(%error, "could not look for stranded write intents");
                    }
                    continue;
                }
                // The consumer stays registered until the drain ends: cancelling it now would
                // hand the queue (single active consumer) to a standby while this replica's jobs
                // still write. What arrives meanwhile stays unread and goes back at the close.
                () = cancel.cancelled() => return Ok(HeldSession { connection, consumer: deliveries }),
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err((error.into(), true)),
                None => return Err((AmqpError::ConsumerEnded, true)),
            };
            settler.acks.read(delivery.delivery_tag);
            if journal.0.is_none() {
                // The first job: this replica is the active one now.
                let activated = tokio::select! {
                    activated = self.activate(&connection, &channel, &settler, tasks, lease) => activated,
                    () = cancel.cancelled() => return Ok(HeldSession { connection, consumer: deliveries }),
                };
                match activated {
                    Ok(activated) => journal = activated,
                    Err(error) => {
                        // The jobs this session holds go back to the queue with the connection.
                        let _ = connection.close(320, "not activated".into()).await;
                        return Err((error, true));
                    }
                }
            }
            if journal::is_probe(&delivery) {
                // It did its work by arriving: this replica is activated now.
                let _ = settler
                    .acks
                    .settle(delivery.delivery_tag, super::acks::Verdict::Ack)
                    .await;
                continue;
            }
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit,
                // Not started: stays unacked and is redelivered to whoever consumes next.
                () = cancel.cancelled() => return Ok(HeldSession { connection, consumer: deliveries }),
            };
            let Ok(permit) = permit else {
                return Ok(HeldSession {
                    connection,
                    consumer: deliveries,
                });
            };
            let handler = self.handler.clone();
            let settler = settler.clone();
            let lease = lease.clone();
            let journal = journal.clone();
            let turn = handler.turn();
            tasks.spawn(async move {
                let _in_flight = InFlight::enter();
                process(handler, settler, delivery, lease, journal, turn).await;
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

impl<H: JobHandler> Consumer<H> {
    /// Makes this session the writing one, before any of its jobs is checked: once this process's
    /// jobs of an earlier session (no new PATCH since its lease ended) are done, it forgets cached
    /// graphs (a standby's, or loaded by those jobs, miss what the replica that was active wrote)
    /// and puts back what a dead replica left half-written.
    async fn activate(
        &self,
        connection: &Connection,
        channel: &lapin::Channel,
        settler: &Settler,
        tasks: &mut JoinSet<()>,
        lease: &CancellationToken,
    ) -> Result<Journal, AmqpError> {
        self.finish_earlier_sessions(tasks).await;
        self.handler.became_active().await;
        let journal = Box::pin(BrokerJournal::activate(
            connection,
            channel.clone(),
            settler.publisher.clone(),
            self.topology.intents(),
            self.handler.clone(),
            lease.clone(),
        ))
        .await?;
        Ok(Journal(Some(journal)))
    }

    /// Waits (up to the shutdown timeout) for jobs of an earlier session of this process: a PATCH
    /// of theirs still under way could land after the restore of their intents.
    async fn finish_earlier_sessions(&self, tasks: &mut JoinSet<()>) {
        while tasks.try_join_next().is_some() {}
        let left = tasks.len();
        if left > 0 && !self.join_within_shutdown_timeout(tasks).await {
            tracing::warn!(
                left,
                "jobs of the previous session are still running; aborting them"
            );
            tasks.abort_all();
        }
    }
}

/// A session kept open through the drain: dropping the consumer would cancel it (lapin does on
/// drop), and the broker would hand the queue to a standby while this replica still writes.
struct HeldSession {
    connection: Connection,
    consumer: lapin::Consumer,
}

/// The open connection of a drained worker: still the queue's active consumer (no standby takes
/// over yet) and still able to publish.
pub struct Closing {
    held: HeldSession,
}

impl Closing {
    /// Closes the connection: only now the consumer goes, and with it the queue, to the standby.
    pub async fn close(self) {
        crate::telemetry::closing_on_purpose();
        let _ = self.held.connection.close(200, "shutdown".into()).await;
        drop(self.held.consumer);
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
async fn process<H: JobHandler>(
    handler: Arc<H>,
    settler: Settler,
    delivery: Delivery,
    lease: CancellationToken,
    journal: Journal,
    turn: Turn,
) {
    let table = headers::table(&delivery.properties);
    let trace = headers::get_str(&table, headers::TRACEPARENT)
        .and_then(|h| TraceParent::parse(&h))
        .map_or_else(TraceParent::root, |parent| parent.child());
    let job = IncomingJob {
        body: delivery.data.clone(),
        default_job_id: identity::default_job_id(&delivery.properties, &delivery.data),
        previous_attempts: previous_attempts(&delivery),
        replay: headers::get_u64(&table, headers::REPLAY_COUNT).unwrap_or(0),
        redelivered: delivery.redelivered,
        trace: trace.clone(),
        lease: lease.clone(),
        journal,
        turn,
    };
    let span = tracing::info_span!(
        "job",
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        job_id = tracing::field::Empty,
        attempt = job.previous_attempts + 1,
    );
    let previous = job.previous_attempts;
    async move {
        let limit = settler.topology.delivery_limit();
        let outcome = match unsettled_deliveries(&table, delivery.redelivered, limit) {
            Some(failure) => {
                let outcome = Outcome::failed(job_context(&settler, &job), failure);
                // Its place in line goes now, not after the settle.
                drop(job);
                outcome
            }
            None => handler.handle(job).await,
        };
        tracing::Span::current().record("job_id", outcome.context.job_id.as_str());
        settle_with_backoff(&settler, &delivery, previous, &outcome, &lease).await;
    }
    .instrument(span)
    .await;
}

/// Settles, retrying with backoff while the broker refuses; then dead-letters the job with code
/// `settle_failed`; if even that fails, hands it back to the broker, whose delivery count ends the
/// loop (see [`unsettled_deliveries`]).
async fn settle_with_backoff(
    settler: &Settler,
    delivery: &Delivery,
    previous: u64,
    outcome: &Outcome,
    lease: &CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    let mut last = None;
    for _ in 0..SETTLE_ATTEMPTS {
        match settler.settle(delivery, previous, outcome).await {
            Ok(_) => return,
            // The delivery's channel is gone: nothing can ack it now, and the broker hands the job
            // to the next session, where it repeats to the same state with the same event ids.
            Err(error) if lease.is_cancelled() && error.is_connection_gone() => {
                tracing::info!(%error, "consume session ended before the job was settled; the broker redelivers it");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "could not settle the job; trying again");
                if matches!(error, AmqpError::Unroutable { .. }) {
                    settler.restore_topology().await;
                }
                last = Some(error);
            }
        }
        tokio::time::sleep(jitter(delay)).await;
        delay *= 2;
    }
    let error = last.map(|e| e.to_string()).unwrap_or_default();
    let failure = Failure::new(
        "settle_failed",
        format!(
            "the broker refused what replaces the job {SETTLE_ATTEMPTS} times: {error}; {}",
            own_result(outcome)
        ),
        Stage::Settle,
        ErrorClass::Permanent,
    );
    if let Err(error) = settler
        .dead_letter_only(delivery, previous, outcome, &failure)
        .await
    {
        tracing::error!(%error, "could not dead-letter the job either; handing it back to the broker");
        settler.requeue(delivery).await;
    }
}

/// What the job itself came to, for a `settle_failed` dead letter: the operator's next step
/// depends on it, and the dead letter's code no longer says.
fn own_result(outcome: &Outcome) -> String {
    match &outcome.failure {
        None => "the job itself completed (what it wrote is in the store; a replay finds it \
                 stored and writes nothing again)"
            .to_owned(),
        Some(failure) => format!(
            "the job itself failed at {} with {}: {}",
            failure.stage.as_str(),
            failure.code,
            failure.message
        ),
    }
}

/// Times one delivery's settle is tried before the job is dead-lettered with `settle_failed`.
const SETTLE_ATTEMPTS: usize = 5;

/// A failure when the broker has delivered this message `limit` times already without it being
/// settled (each time the worker died or lost its connection first). The count is read only on a
/// redelivery, when the quorum queue has written it: on a first delivery an `x-delivery-count`
/// is the publisher's (forwarded from its own queue, say) and says nothing about this worker.
fn unsettled_deliveries(
    table: &lapin::types::FieldTable,
    redelivered: bool,
    limit: u32,
) -> Option<Failure> {
    if !redelivered {
        return None;
    }
    let count = headers::get_u64(table, headers::DELIVERY_COUNT)?;
    (count >= u64::from(limit)).then(|| {
        Failure::new(
            "delivery_limit_exceeded",
            format!(
                "delivered {} times without being settled (worker crashes or lost connections; before RabbitMQ 4.3 a restart that returned it unstarted counts too); not handled again",
                count + 1
            ),
            Stage::Settle,
            ErrorClass::Permanent,
        )
    })
}

fn job_context(settler: &Settler, job: &IncomingJob) -> EventContext {
    EventContext {
        source: settler.source.clone(),
        job_id: crate::pipeline::job_id_of_unparsed(&job.body, &job.default_job_id),
        datastore_id: String::new(),
        traceparent: Some(job.trace.header()),
        replay: job.replay,
    }
}

/// Keeps the readiness "broker_publishing" check current: not ready while the broker blocks this
/// connection's publishers (a memory or disk alarm), so settles would hang. Ends the session's
/// lease as soon as the connection is no longer up (also while draining at shutdown).
async fn watch_blocked(status: ConnectionStatus, readiness: Readiness, lease: CancellationToken) {
    let mut was_blocked = None;
    loop {
        if !status.connected() {
            // Jobs (and restores) of this session must start no write from now on: the broker
            // may already have handed the queue to another replica.
            lease.cancel();
            return;
        }
        let blocked = status.blocked();
        if was_blocked != Some(blocked) {
            if blocked {
                tracing::warn!(
                    "the broker blocks publishing on this connection (memory or disk alarm); settles wait"
                );
                readiness.set(
                    "broker_publishing",
                    false,
                    "the broker blocks publishers (resource alarm)",
                );
            } else {
                readiness.set("broker_publishing", true, "publishing");
            }
            was_blocked = Some(blocked);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = lease.cancelled() => return,
        }
    }
}

fn jitter(delay: Duration) -> Duration {
    use rand::Rng;
    delay.mul_f64(rand::rng().random_range(0.5..1.0))
}
