//! Wiring of `cxrel worker`: health/metrics server, data-store client, graph cache, pipeline,
//! webhook delivery and the consumer, all stopped by one cancellation token on SIGTERM/SIGINT.
//!
//! [`build`] wires a worker and binds its HTTP endpoints ([`Application`], zero2prod's
//! `Application::build`); [`Application::run_until_stopped`] consumes until the token fires and
//! drains. [`run`] is the two for the `cxrel worker` command; tests run a worker in their own
//! process through them as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use super::consumer::{Consumer, ConsumerConfig};
use crate::amqp::{PublisherSlot, Topology};
use crate::http::{self, Readiness};
use crate::job::ParseContext;
use crate::pipeline::Pipeline;
use crate::pipeline::datastores::DataStores;
use crate::settings::Settings;
use crate::store::{RateBudget, StoreClient};
use crate::webhooks;
use crate::webhooks::delivery::WebhookWorker;

/// Runs the worker until `cancel`; returns after in-flight jobs drained (or the timeout passed).
/// Prints the `cxrel worker listening on` line once its HTTP endpoints are bound.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let app = build(settings).await?;
    http::announce_listening("worker", app.http_addr());
    app.run_until_stopped(cancel).await
}

/// A wired worker, its HTTP endpoints already serving, not consuming yet.
pub struct Application {
    http_addr: SocketAddr,
    instance: String,
    consumer: Consumer<Pipeline>,
    webhook_worker: WebhookWorker,
    /// What everything built here stops with; fired by the caller's token in
    /// `run_until_stopped`, or when the application is dropped unrun.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    /// Ends `/healthz`, `/readyz` and `/metrics`: only once the worker stopped, so the drain
    /// stays observable and liveness probes keep passing during it.
    _http_stop: DropGuard,
    readiness: Readiness,
}

/// Wires a worker from `settings`: binds `[http].listen` (`/healthz`, `/readyz`, `/metrics`),
/// starts the readiness watchers and webhook delivery, and builds the pipeline and the consumer.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let stop = CancellationToken::new();
    let stop_on_drop = stop.clone().drop_guard();
    let instance = instance_name(&settings);
    let readiness = Readiness::default();
    let readiness_handle = readiness.clone();
    readiness.set("broker", false, "not connected yet");
    readiness.set("broker_publishing", true, "publishing");
    readiness.set("token", false, "no token yet");
    let http_stop = CancellationToken::new();
    let http_addr = http::serve(settings.http.listen, readiness.clone(), http_stop.clone()).await?;
    super::metrics::describe();

    let store = StoreClient::from_settings(&settings)?;
    tokio::spawn(watch_token(store.clone(), readiness.clone(), stop.clone()));
    tokio::spawn(watch_budget(
        store.budget().clone(),
        readiness.clone(),
        stop.clone(),
    ));
    let topology = Arc::new(Topology::from_settings(&settings.amqp));
    let slot = PublisherSlot::default();
    let (webhook_queue, webhook_worker) = webhooks::delivery::start(
        &settings.webhook_delivery,
        &settings.webhooks,
        slot.clone(),
        topology.webhooks_dead(),
        settings.worker.shutdown_timeout,
    )?;
    let pipeline = Pipeline::new(
        ParseContext::from_settings(&settings),
        store.clone(),
        Arc::new(DataStores::new(store, settings.graph.refresh_interval)),
        &instance,
        settings.worker.parallel_patches,
    );
    let consumer = Consumer {
        config: ConsumerConfig {
            url: settings.amqp.url.clone(),
            connection_name: format!("cxrel worker {instance}"),
            prefetch: settings.worker.prefetch,
            max_in_flight: settings.worker.max_in_flight,
            shutdown_timeout: settings.worker.shutdown_timeout,
            confirm_timeout: settings.amqp.confirm_timeout,
        },
        topology,
        handler: Arc::new(pipeline),
        readiness,
        publisher_slot: slot,
        webhooks: webhook_queue,
        source: format!("cxrel://{instance}"),
    };
    Ok(Application {
        http_addr,
        instance,
        consumer,
        webhook_worker,
        stop,
        _stop_on_drop: stop_on_drop,
        _http_stop: http_stop.drop_guard(),
        readiness: readiness_handle,
    })
}

impl Application {
    /// Where `/healthz`, `/readyz` and `/metrics` answer (the port bound when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Consumes jobs until `cancel`; returns after in-flight jobs drained (or the timeout passed)
    /// and webhook delivery finished its drain.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let stop = self.stop.clone();
        let readiness = self.readiness.clone();
        let forward = tokio::spawn(async move {
            cancel.cancelled().await;
            readiness.set("draining", false, "stopping: draining in-flight jobs");
            stop.cancel();
        });
        tracing::info!(instance = self.instance, "worker starting");
        // Jobs drain first (they still hand events to webhook delivery), then webhooks park
        // what they could not deliver, and only then the connection they park on closes.
        let closing = self.consumer.run(self.stop.clone()).await;
        self.webhook_worker.drain().await;
        if let Some(closing) = closing {
            closing.close().await;
        }
        forward.abort();
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// `[worker].instance`, else the host name, else "cxrel".
fn instance_name(settings: &Settings) -> String {
    if !settings.worker.instance.is_empty() {
        return settings.worker.instance.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cxrel".to_owned())
}

/// Keeps the readiness "token" check current: a data-store token can be had, and the store has
/// not refused the last fresh one.
async fn watch_token(store: StoreClient, readiness: Readiness, cancel: CancellationToken) {
    // What was last logged: a failure is logged when it starts or changes, and its end once.
    let mut logged: Option<String> = None;
    loop {
        let problem = match (store.check_auth().await, store.store_refuses_token()) {
            (Err(error), _) => Some(format!("no token: {error}")),
            (Ok(()), Some(refusal)) => Some(refusal),
            (Ok(()), None) => None,
        };
        match &problem {
            Some(problem) => readiness.set("token", false, problem.clone()),
            None => readiness.set("token", true, "valid token"),
        }
        if problem != logged {
            match &problem {
                Some(problem) => tracing::warn!("not ready: {problem}"),
                None => tracing::info!("token obtained; ready for the data store"),
            }
            logged = problem;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Keeps the readiness "rate_budget" check current: always ready (a Redis outage falls back to a
/// local share), the detail saying which budget is in use.
async fn watch_budget(
    budget: Arc<dyn RateBudget>,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    loop {
        readiness.set("rate_budget", true, budget.describe());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = cancel.cancelled() => return,
        }
    }
}
