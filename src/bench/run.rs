//! One benchmark run: emulator in this process, worker processes, the jobs enqueued with confirms,
//! every job's enqueue-to-completed latency from the result events, then the broker ceiling.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use lapin::BasicProperties;
use serde_json::json;

use super::figures::{RunFigures, millis, quantile};
use super::scenario::{self, Shape};
use crate::amqp::{self, Publisher, Topology};
use crate::emulator::Algorithm;
use crate::harness::config::WorkerConfig;
use crate::harness::emulator::{EmulatorStats, LocalEmulator};
use crate::harness::tap::{Settlement, Tap};
use crate::harness::workers::{WorkerChild, WorkerSpec, worker_env};
use crate::harness::{connect_broker, fresh_prefix};
use crate::settings::{RateLimitBackend, Settings};

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    pub shape: Shape,
    /// Requests/s the emulator allows; 0 = no limit.
    pub rate: u32,
    /// Emulator bucket size when `rate` > 0.
    pub emulator_burst: u32,
    /// How the emulator enforces `rate`.
    pub limiter: Algorithm,
    /// Emulator latency per record-API request: `latency_ms` + uniform 0..=`jitter_ms`.
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// What the workers budget together (`[rate_limit].requests_per_second`); 0 = not
    /// configured, each worker discovers the limit.
    pub worker_rate: u32,
    pub workers: usize,
    pub backend: RateLimitBackend,
    /// Each worker's `[worker].prefetch` and `max_in_flight`.
    pub prefetch: u16,
    pub max_in_flight: usize,
    /// Confirms outstanding while enqueuing.
    pub publish_window: usize,
    /// Longest wait for every job to settle.
    pub timeout: Duration,
}

pub async fn run(params: &Params, settings: &Settings) -> anyhow::Result<RunFigures> {
    let connection = connect_broker(settings, "cxrel bench").await?;
    let channel = connection.create_channel().await?;
    let emulator = LocalEmulator::start(&settings.emulator).await?;
    let topology = Topology::new(
        fresh_prefix("cxrel-bench"),
        vec![Duration::from_secs(1), Duration::from_secs(5)],
    );
    let measured = match amqp::topology::declare(&channel, &topology).await {
        Ok(()) => measure_worker(params, settings, &emulator, &connection, &topology).await,
        Err(error) => Err(error.into()),
    };
    // Whatever happened, the run's queues go; worker processes went with their handles.
    let _ = amqp::topology::delete(&channel, &topology).await;
    emulator.shutdown().await;
    let (published, settled, stats, peak_rss) = measured?;

    let sample = scenario::job_body(params.shape, 0);
    let ceiling_queue = format!("{}.ceiling", topology.prefix());
    let count = u64::try_from(params.shape.jobs).unwrap_or(u64::MAX);
    let ceiling = super::broker::measure(
        &connection,
        &ceiling_queue,
        &sample,
        count,
        params.publish_window,
        settings.worker.prefetch,
    )
    .await;
    let _ = connection.close(200, "bench done".into()).await;
    let figures = tally(
        params,
        &published,
        &settled,
        &stats,
        peak_rss,
        ceiling?.per_second(),
    );
    Ok(figures)
}

/// What one worker run yields: publish times, settlements, emulator counters, peak RSS per worker.
type Measured = (
    HashMap<String, Instant>,
    HashMap<String, Settlement>,
    EmulatorStats,
    Vec<f64>,
);

/// Data store, workers, enqueue, wait: everything between declaring the queues and deleting them.
async fn measure_worker(
    params: &Params,
    settings: &Settings,
    emulator: &LocalEmulator,
    connection: &lapin::Connection,
    topology: &Topology,
) -> anyhow::Result<Measured> {
    emulator
        .create_datastore(&scenario::datastore(params.shape))
        .await?;
    let mut faults = json!({
        "retry_after": true,
        "latency_ms": params.latency_ms,
        "latency_jitter_ms": params.jitter_ms,
    });
    if params.rate > 0 {
        faults["rate_limit"] = json!({
            "requests_per_second": params.rate,
            "burst": params.emulator_burst,
            "algorithm": params.limiter,
        });
    }
    emulator.set_faults(&faults).await?;
    let tap = Tap::start(connection, topology, false).await?;
    let workers = start_workers(params, settings, emulator.base(), topology.prefix()).await?;
    let published = enqueue(connection, topology, params).await?;
    let settled_all = tap.wait_settled(params.shape.jobs, params.timeout).await;
    let peak_rss: Vec<f64> = workers
        .iter()
        .map(|w| w.peak_rss_kib().map_or(0.0, |k| k as f64 / 1024.0))
        .collect();
    let stats = emulator.stats().await?;
    for worker in workers {
        worker.stop(Duration::from_secs(15)).await;
    }
    let (settled, _) = tap.snapshot();
    tap.close().await;
    if !settled_all {
        bail!(
            "only {} of {} jobs settled within {:?}",
            settled.len(),
            params.shape.jobs,
            params.timeout
        );
    }
    Ok((published, settled, stats, peak_rss))
}

/// Worker processes sharing the run's budget: with Redis one shared budget of `worker_rate`,
/// locally an equal static share each; 0 stays 0 (each discovers the limit).
async fn start_workers(
    params: &Params,
    settings: &Settings,
    emulator: &str,
    prefix: &str,
) -> anyhow::Result<Vec<WorkerChild>> {
    let (rps, burst) = match params.worker_rate {
        0 => (0, 1),
        r if params.backend == RateLimitBackend::Local => {
            ((r / params.workers.max(1) as u32).max(1), 1)
        }
        r => (r, 1),
    };
    let config = WorkerConfig::new(prefix, emulator)
        .log_level("warn")
        .retry_delays(&[Duration::from_secs(1), Duration::from_secs(5)])
        .rate(rps, burst)
        .rate_backend(
            params.backend,
            u32::try_from(params.workers).unwrap_or(u32::MAX),
        );
    let mut env = worker_env(settings);
    env.push((
        "CXREL__RATE_LIMIT__REDIS_URL".to_owned(),
        settings.rate_limit.redis_url.expose().to_owned(),
    ));
    env.push((
        "CXREL__WORKER__PREFETCH".to_owned(),
        params.prefetch.to_string(),
    ));
    env.push((
        "CXREL__WORKER__MAX_IN_FLIGHT".to_owned(),
        params.max_in_flight.to_string(),
    ));
    let spec = WorkerSpec {
        config: &config,
        env,
        name: prefix,
    };
    let mut workers = Vec::with_capacity(params.workers);
    for n in 1..=params.workers {
        workers.push(WorkerChild::spawn(&spec, n).await?);
    }
    for worker in &workers {
        worker.wait_ready(Duration::from_secs(30)).await?;
    }
    Ok(workers)
}

/// Publishes every job with confirms (`publish_window` outstanding); returns when each was sent.
async fn enqueue(
    connection: &lapin::Connection,
    topology: &Topology,
    params: &Params,
) -> anyhow::Result<HashMap<String, Instant>> {
    let publisher = Publisher::open(connection).await?;
    let queue = topology.jobs();
    let shape = params.shape;
    let results: Vec<_> = futures::stream::iter(0..shape.jobs)
        .map(|j| {
            let (publisher, queue) = (&publisher, &queue);
            async move {
                let id = scenario::job_id(j);
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(id.clone().into());
                let sent = Instant::now();
                publisher
                    .to_queue(queue, &scenario::job_body(shape, j), props)
                    .await
                    .map(|()| (id, sent))
            }
        })
        .buffer_unordered(params.publish_window.max(1))
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<HashMap<_, _>, _>>()
        .map_err(Into::into)
}

/// The figures of the run, from publish times, settlements and the emulator's counters.
fn tally(
    params: &Params,
    published: &HashMap<String, Instant>,
    settled: &HashMap<String, Settlement>,
    stats: &EmulatorStats,
    worker_peak_rss_mib: Vec<f64>,
    ceiling: f64,
) -> RunFigures {
    let mut latencies: Vec<Duration> = settled
        .iter()
        .filter_map(|(id, s)| {
            published
                .get(id)
                .map(|sent| s.at.saturating_duration_since(*sent))
        })
        .collect();
    latencies.sort();
    let first = published.values().min().copied();
    let last = settled.values().map(|s| s.at).max();
    let first_settled = match (first, settled.values().map(|s| s.at).min()) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    let elapsed = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64().max(1e-9),
        _ => 1e-9,
    };
    let ops = params.shape.operations().max(1) as f64;
    let jobs_per_second = params.shape.jobs as f64 / elapsed;
    let requests = stats.store_requests.max(1) as f64;
    RunFigures {
        jobs: params.shape.jobs,
        ops_per_job: params.shape.ops_per_job,
        rate: params.rate,
        emulator_limiter: params.limiter,
        latency_ms: params.latency_ms,
        latency_jitter_ms: params.jitter_ms,
        worker_rate: params.worker_rate,
        workers: params.workers,
        prefetch: params.prefetch,
        max_in_flight: params.max_in_flight,
        rate_backend: format!("{:?}", params.backend).to_lowercase(),
        elapsed_seconds: (elapsed * 100.0).round() / 100.0,
        first_settled_ms: millis(first_settled),
        jobs_per_second,
        operations_per_second: ops / elapsed,
        store_requests: stats.store_requests,
        requests_per_operation: stats.store_requests as f64 / ops,
        throttled_429: stats.throttled_count,
        throttled_share: stats.throttled_count as f64 / requests,
        max_requests_in_1s: stats.max_requests_in_1s,
        latency_p50_ms: millis(quantile(&latencies, 0.5)),
        latency_p99_ms: millis(quantile(&latencies, 0.99)),
        latency_max_ms: millis(quantile(&latencies, 1.0)),
        dead_lettered: settled
            .values()
            .filter(|s| s.ty == "cxrel.job.dead_lettered")
            .count(),
        worker_peak_rss_mib,
        broker_ceiling_messages_per_second: ceiling,
        ratio_to_broker_ceiling: jobs_per_second / ceiling.max(1e-9),
    }
}
