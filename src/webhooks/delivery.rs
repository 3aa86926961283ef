//! The webhook delivery queue: the settler hands each job's events over once the broker confirmed
//! them, without waiting for delivery; a bounded set of tasks POSTs each to every matching
//! endpoint, signed, retried with backoff, and parks what still fails (or what finds the queue
//! full, or is unsent at shutdown) on the webhook dead queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use lapin::BasicProperties;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::signing::{SignatureError, SigningKey};
use crate::amqp::{PublisherSlot, headers};
use crate::events::CloudEvent;
use crate::settings::{WebhookDeliverySettings, WebhookSettings};

/// One configured endpoint (the worker's deliveries and `cxrel dlq redeliver-webhooks`).
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// 1-based position in `[[webhooks]]`: names the endpoint on parked events, where `shown`
    /// alone cannot tell two endpoints on one host apart.
    pub(super) number: usize,
    pub(super) url: String,
    /// `url` as logs, errors and the `x-cxrel-webhook-url` header show it: it often carries a token.
    pub(super) shown: String,
    pub(super) key: SigningKey,
    events: Vec<String>,
}

impl Endpoint {
    /// Every `[[webhooks]]` entry, numbered from 1.
    pub(super) fn all(hooks: &[WebhookSettings]) -> Result<Vec<Self>, SignatureError> {
        hooks
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Ok(Self {
                    number: i + 1,
                    url: h.url.clone(),
                    shown: crate::secret::redact_webhook_url(&h.url),
                    key: SigningKey::from_secret(h.secret.expose())?,
                    events: h.events.clone(),
                })
            })
            .collect()
    }

    /// Whether its `events` filter takes events of type `ty` (an empty filter takes all).
    pub(super) fn wants(&self, ty: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == ty)
    }
}

/// The sending side, held by the settler. Cloning is cheap.
#[derive(Clone)]
pub struct WebhookQueue {
    tx: Option<mpsc::Sender<Arc<CloudEvent>>>,
    /// Events the delivery queue does not take, on their way to the parking task.
    overflow: Option<mpsc::Sender<Parked>>,
    /// Events of one job the delivery queue takes at most (a quarter of its capacity), so one
    /// 10,000-operation job cannot fill it alone; the rest of that job's events are parked.
    /// Only events some endpoint wants count, and the job's last event (how it ended) is never
    /// refused for the share.
    per_job: usize,
    /// The endpoints, to leave out events nobody's filter wants.
    endpoints: Arc<Vec<Endpoint>>,
}

/// An event for the webhook dead queue, and why.
struct Parked {
    event: Arc<CloudEvent>,
    reason: &'static str,
}

/// Events waiting to be parked; the settler waits only when the broker is this far behind.
const OVERFLOW_CAPACITY: usize = 4096;
/// Parked events published together, their confirms awaited together.
const PARK_BATCH: usize = 256;

/// Where undeliverable events go.
#[derive(Clone)]
struct Parking {
    publisher: PublisherSlot,
    dead_queue: String,
}

/// The delivery and parking tasks; `drain` stops and waits for them at shutdown, after the jobs
/// drained and while the broker connection is still open (parking needs it).
pub struct WebhookWorker {
    task: tokio::task::JoinHandle<()>,
    parking: tokio::task::JoinHandle<()>,
    drain_deadline: Duration,
    /// Delivery's own stop: the jobs' cancellation must not end deliveries while draining jobs
    /// still hand events over. Dropping the worker stops delivery too.
    stop: tokio_util::sync::DropGuard,
}

impl WebhookWorker {
    /// Stops taking events; deliveries in flight get one request's time, then everything not
    /// delivered is parked on the webhook dead queue.
    pub async fn drain(self) {
        let stop = self.stop.disarm();
        stop.cancel();
        let _ = self.task.await;
        // The parking task ends once every queue handle (the consumer's, and its settlers' clones)
        // is gone.
        let _ = tokio::time::timeout(self.drain_deadline, self.parking).await;
    }
}

/// Starts delivery for `hooks`. With no hooks configured, offered events are simply dropped.
pub fn start(
    config: &WebhookDeliverySettings,
    hooks: &[WebhookSettings],
    publisher: PublisherSlot,
    dead_queue: String,
    drain_deadline: Duration,
) -> Result<(WebhookQueue, WebhookWorker), SignatureError> {
    let cancel = CancellationToken::new();
    let endpoints = Endpoint::all(hooks)?;
    let parking = Parking {
        publisher,
        dead_queue,
    };
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let deliverer = Deliverer {
        drain_deadline,
        client: reqwest::Client::builder()
            .timeout(config.timeout)
            // A followed 301/302 turns the POST into a GET without the event, and a 2xx from that
            // page would count as delivered; a redirect is the endpoint's error to report instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cxrel/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default(),
        endpoints: Arc::new(endpoints),
        config: config.clone(),
        parking: parking.clone(),
    };
    let has_endpoints = !deliverer.endpoints.is_empty();
    let endpoints = deliverer.endpoints.clone();
    let task = tokio::spawn(deliverer.run(rx, cancel.clone()));
    let (overflow, overflow_rx) = mpsc::channel(OVERFLOW_CAPACITY);
    let parking_task = tokio::spawn(park_batches(overflow_rx, parking));
    let queue = WebhookQueue {
        tx: has_endpoints.then_some(tx),
        overflow: has_endpoints.then_some(overflow),
        // One slot stays free for the job's last event, even in a queue of one or two.
        per_job: (config.queue_capacity / 4)
            .max(1)
            .min(config.queue_capacity.saturating_sub(1)),
        endpoints,
    };
    let worker = WebhookWorker {
        task,
        parking: parking_task,
        drain_deadline,
        stop: cancel.drop_guard(),
    };
    Ok((queue, worker))
}

impl WebhookQueue {
    /// Hands one job's events over without waiting for delivery or for the broker: what the
    /// delivery queue does not take (full, or past the job's share) goes to the parking task,
    /// which publishes to the webhook dead queue in batches, so a slow endpoint never slows jobs.
    pub async fn offer_all(&self, events: Vec<CloudEvent>) {
        let (Some(tx), Some(overflow)) = (&self.tx, &self.overflow) else {
            return;
        };
        let wanted: Vec<CloudEvent> = events
            .into_iter()
            .filter(|e| self.endpoints.iter().any(|p| p.wants(e.ty.as_str())))
            .collect();
        let last = wanted.len().saturating_sub(1);
        for (i, event) in wanted.into_iter().enumerate() {
            let event = Arc::new(event);
            let refused = if i >= self.per_job && i != last {
                Some((event, "the job's share of the webhook queue is used up"))
            } else {
                match tx.try_send(event) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Full(e)) => Some((e, "webhook queue full")),
                    Err(mpsc::error::TrySendError::Closed(e)) => {
                        Some((e, "webhook delivery stopped"))
                    }
                }
            };
            if let Some((event, reason)) = refused {
                metrics::counter!("cxrel_webhook_deliveries_total", "outcome" => "queue_full")
                    .increment(1);
                if overflow.send(Parked { event, reason }).await.is_err() {
                    tracing::error!("webhook parking stopped; an undeliverable webhook is lost");
                }
            }
        }
    }
}

/// Publishes overflowing events to the webhook dead queue, up to [`PARK_BATCH`] at a time with
/// their confirms awaited together.
async fn park_batches(mut rx: mpsc::Receiver<Parked>, parking: Parking) {
    let mut batch = Vec::with_capacity(PARK_BATCH);
    while rx.recv_many(&mut batch, PARK_BATCH).await > 0 {
        let parks = batch
            .iter()
            .map(|p| parking.park(&p.event, None, p.reason, 0));
        futures::future::join_all(parks).await;
        batch.clear();
    }
}

impl Parking {
    /// Parks `event` for `endpoint` (None: for whichever endpoints wanted it; the delivery queue
    /// never took it).
    async fn park(
        &self,
        event: &CloudEvent,
        endpoint: Option<&Endpoint>,
        error: &str,
        attempts: u64,
    ) {
        let mut table = lapin::types::FieldTable::default();
        headers::set_str(
            &mut table,
            "x-cxrel-webhook-url",
            endpoint.map_or("", |e| e.shown.as_str()),
        );
        if let Some(endpoint) = endpoint {
            headers::set_u64(&mut table, super::redeliver::NUMBER, endpoint.number as u64);
        }
        headers::set_str(&mut table, headers::ERROR_MESSAGE, error);
        headers::set_u64(&mut table, headers::ATTEMPTS, attempts);
        headers::set_str(
            &mut table,
            headers::LAST_FAILED_AT,
            crate::events::now_rfc3339(),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/cloudevents+json".into())
            .with_message_id(event.id.clone().into())
            .with_headers(table);
        let body = event.to_json();
        let result = match self.publisher.get() {
            Some(publisher) => {
                publisher
                    .to_queue(&self.dead_queue, &body, properties)
                    .await
            }
            None => Err(crate::amqp::AmqpError::NotConnected),
        };
        if let Err(err) = result {
            // The job's outcome never depends on its webhooks; losing a notification is logged loudly.
            tracing::error!(event_id = %event.id, error = %err, "could not park an undeliverable webhook");
        }
    }
}

/// A failed POST as text, without the URL reqwest would print (it may hold the endpoint's token),
/// with its causes (connection refused, timeout…) so the operator still sees why.
fn send_error(error: reqwest::Error) -> String {
    crate::error::one_line(&error.without_url())
}

/// The longest `Retry-After` a subscriber gets before its next attempt, unless the configured
/// backoff is longer (a delivery waiting at shutdown is parked, so this never delays a stop).
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// How a 410 answer's error starts (it is not retried).
const GONE: &str = "endpoint answered 410 Gone";

struct Deliverer {
    /// How long deliveries in flight may take once stopped, at most.
    drain_deadline: Duration,
    client: reqwest::Client,
    endpoints: Arc<Vec<Endpoint>>,
    config: WebhookDeliverySettings,
    parking: Parking,
}

impl Deliverer {
    /// Hands each event to the lane of every endpoint that wants it. Each endpoint has its own
    /// queue and its own `concurrency`, so a slow or failing endpoint delays only its own
    /// deliveries; what its full queue cannot take is parked for it.
    async fn run(self, mut rx: mpsc::Receiver<Arc<CloudEvent>>, cancel: CancellationToken) {
        let this = Arc::new(self);
        let mut lanes = Vec::with_capacity(this.endpoints.len());
        let mut lane_tasks = JoinSet::new();
        for index in 0..this.endpoints.len() {
            let (tx, lane_rx) = mpsc::channel(this.config.queue_capacity);
            lanes.push(tx);
            lane_tasks.spawn(this.clone().lane(index, lane_rx, cancel.clone()));
        }
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = cancel.cancelled() => None,
            };
            let Some(event) = event else { break };
            for (endpoint, lane) in this.endpoints.iter().zip(&lanes) {
                if endpoint.wants(event.ty.as_str()) && lane.try_send(event.clone()).is_err() {
                    metrics::counter!("cxrel_webhook_deliveries_total", "outcome" => "queue_full")
                        .increment(1);
                    this.parking
                        .park(
                            &event,
                            Some(endpoint),
                            "the endpoint's webhook queue is full",
                            0,
                        )
                        .await;
                }
            }
        }
        // Cancelled: each lane finishes what is in flight within the deadline and parks the rest.
        // Closed (every sender gone): each lane delivers what it holds, then ends.
        rx.close();
        drop(lanes);
        while lane_tasks.join_next().await.is_some() {}
        while let Ok(event) = rx.try_recv() {
            this.parking
                .park(&event, None, "not delivered before shutdown", 0)
                .await;
        }
    }

    /// One endpoint's deliveries, at most `concurrency` at once. At shutdown it stops taking
    /// events, finishes what is in flight within the deadline and parks what is left for it.
    async fn lane(
        self: Arc<Self>,
        index: usize,
        mut rx: mpsc::Receiver<Arc<CloudEvent>>,
        cancel: CancellationToken,
    ) {
        let Some(endpoint) = self.endpoints.get(index).cloned() else {
            return;
        };
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = cancel.cancelled() => None,
            };
            let Some(event) = event else { break };
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.ok(),
                () = cancel.cancelled() => None,
            };
            let Some(permit) = permit else {
                self.parking
                    .park(&event, Some(&endpoint), "not delivered before shutdown", 0)
                    .await;
                break;
            };
            let (this, endpoint, stop) = (self.clone(), endpoint.clone(), cancel.clone());
            tasks.spawn(async move {
                this.deliver(&endpoint, &event, &stop).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        rx.close();
        // Each delivery parks itself once stopped (see `deliver`); the abort is the backstop
        // for a park the broker never confirms.
        let _ = tokio::time::timeout(self.drain_deadline + self.config.timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        while let Ok(event) = rx.try_recv() {
            self.parking
                .park(&event, Some(&endpoint), "not delivered before shutdown", 0)
                .await;
        }
    }

    /// Posts `event` with retries; once `stop` fires it has one request's time (at most the drain
    /// deadline) left, then what is still undelivered (a retry waiting out its backoff, say) is
    /// parked with the attempts made so far.
    async fn deliver(&self, endpoint: &Endpoint, event: &CloudEvent, stop: &CancellationToken) {
        let body = event.to_json();
        let attempts = std::sync::atomic::AtomicU64::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let most = self.config.max_backoff.max(RETRY_AFTER_CAP);
        let retried = (|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.post(endpoint, event, &body).await
        })
        .retry(backoff)
        // 410 Gone: the endpoint says it will never take events again; retrying only delays the park.
        .when(|error: &PostError| !error.message.starts_with(GONE))
        // A 429/503 with Retry-After: wait as asked, up to a minute (or the longest backoff).
        .adjust(move |error: &PostError, next| {
            next.map(|d| error.retry_after.map_or(d, |asked| d.max(asked.min(most))))
        });
        let grace = self.config.timeout.min(self.drain_deadline);
        let result = tokio::select! {
            result = retried => result.map_err(|e| e.message),
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                Err("not delivered before shutdown".to_owned())
            }
        };
        let attempts = attempts.into_inner();
        let outcome = if result.is_ok() { "delivered" } else { "dead" };
        metrics::counter!("cxrel_webhook_deliveries_total", "outcome" => outcome).increment(1);
        if let Err(error) = result {
            tracing::warn!(url = %endpoint.shown, event_id = %event.id, attempts, %error, "webhook parked on the dead queue");
            self.parking
                .park(event, Some(endpoint), &error, attempts)
                .await;
        }
    }

    async fn post(
        &self,
        endpoint: &Endpoint,
        event: &CloudEvent,
        body: &[u8],
    ) -> Result<(), PostError> {
        let request = signed_post(
            &self.client,
            &endpoint.url,
            &endpoint.key,
            &event.id,
            event.traceparent.as_deref(),
            body,
        );
        let response = request
            .send()
            .await
            .map_err(|e| PostError::from(send_error(e)))?;
        let status = response.status();
        let message = if status.is_success() {
            return Ok(());
        } else if status == reqwest::StatusCode::GONE {
            format!(
                "{GONE}: the endpoint no longer takes events (not retried); remove or fix its [[webhooks]] entry"
            )
        } else if status.is_redirection() {
            format!(
                "endpoint answered {status}: webhooks do not follow redirects; configure the final URL"
            )
        } else {
            format!("endpoint answered {status}")
        };
        let retry_after = matches!(status.as_u16(), 429 | 503)
            .then(|| crate::store::parse_retry_after(response.headers()))
            .flatten();
        Err(PostError {
            message,
            retry_after,
        })
    }
}

/// The POST of one event to one endpoint, signed now (Standard Webhooks): the worker's deliveries
/// and `cxrel dlq redeliver-webhooks` send exactly this.
pub(super) fn signed_post(
    client: &reqwest::Client,
    url: &str,
    key: &SigningKey,
    id: &str,
    traceparent: Option<&str>,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let request = client
        .post(url)
        // CloudEvents HTTP structured mode: the body is the whole event.
        .header("content-type", crate::events::STRUCTURED_CONTENT_TYPE)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", key.sign(id, timestamp, body))
        .body(body.to_vec());
    match traceparent {
        Some(traceparent) => request.header("traceparent", traceparent),
        None => request,
    }
}

/// A failed POST: what to report, and how long the endpoint asked to be left alone.
struct PostError {
    message: String,
    retry_after: Option<Duration>,
}

impl From<String> for PostError {
    fn from(message: String) -> Self {
        Self {
            message,
            retry_after: None,
        }
    }
}
