//! `cxrel bench`: a throughput run on this machine (emulator, worker processes, enqueue with
//! confirms) reported as a table or JSON, with the raw broker ceiling for comparison.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::bench::run::{self, Params};
use crate::bench::scenario::Shape;
use crate::emulator::Algorithm;
use crate::settings::{RateLimitBackend, Settings};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Operations per job (each one fresh parent and child: one PATCH).
    #[arg(long, default_value_t = 1)]
    pub ops_per_job: usize,
    /// Data-store rate limit in requests/s, enforced by the emulator and budgeted by the workers;
    /// 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Emulator burst (bucket size) when --rate is set.
    #[arg(long, default_value_t = 10)]
    pub burst: u32,
    /// How the emulator enforces --rate: gcra (as the worker paces), or an independent token bucket,
    /// fixed window (per second, --burst ignored) or sliding window (any rolling second).
    #[arg(long, value_enum, default_value_t = EmulatorLimiter::Gcra)]
    pub limiter: EmulatorLimiter,
    /// What the workers budget together ([rate_limit].requests_per_second); default --rate;
    /// 0 = not configured: the workers discover the limit.
    #[arg(long)]
    pub worker_rate: Option<u32>,
    /// Emulator latency per record-API request, in ms…
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// …plus a uniform jitter of up to this many ms (half of it before the rate limit).
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Rate budget: local (each worker rate/workers) or redis (one shared budget); default from
    /// [rate_limit].backend.
    #[arg(long, value_enum)]
    pub rate_backend: Option<Backend>,
    /// Each worker's `[worker].prefetch`; default from the settings.
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// Each worker's `[worker].max_in_flight`; default from the settings.
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Longest wait for all jobs to settle; default scales with jobs and rate.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    #[arg(long, value_enum, default_value_t = BenchOutput::Table)]
    pub output: BenchOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmulatorLimiter {
    Gcra,
    TokenBucket,
    FixedWindow,
    SlidingWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOutput {
    Table,
    Json,
}

/// Largest run: 2,000,000 operations (4,000,000 emulator records).
const MAX_OPERATIONS: usize = 2_000_000;

pub async fn run(args: BenchArgs, settings: Settings) -> anyhow::Result<i32> {
    anyhow::ensure!(
        args.jobs > 0 && args.ops_per_job > 0,
        "--jobs and --ops-per-job must be > 0"
    );
    anyhow::ensure!((1..=16).contains(&args.workers), "--workers must be 1..=16");
    // Two records per operation are built in memory for the emulator: keep it to a few GB.
    let operations = args.jobs.checked_mul(args.ops_per_job);
    anyhow::ensure!(
        operations.is_some_and(|ops| ops <= MAX_OPERATIONS),
        "--jobs × --ops-per-job must be at most {MAX_OPERATIONS}"
    );
    let shape = Shape {
        jobs: args.jobs,
        ops_per_job: args.ops_per_job,
    };
    let backend = match args.rate_backend {
        Some(Backend::Local) => RateLimitBackend::Local,
        Some(Backend::Redis) => RateLimitBackend::Redis,
        None => settings.rate_limit.backend,
    };
    let params = Params {
        shape,
        rate: args.rate,
        emulator_burst: args.burst.max(1),
        limiter: match args.limiter {
            EmulatorLimiter::Gcra => Algorithm::Gcra,
            EmulatorLimiter::TokenBucket => Algorithm::TokenBucket,
            EmulatorLimiter::FixedWindow => Algorithm::FixedWindow,
            EmulatorLimiter::SlidingWindow => Algorithm::SlidingWindow,
        },
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        // With no limit and no budget asked for, the workers run unpaced (no slow start).
        worker_rate: args
            .worker_rate
            .unwrap_or(if args.rate == 0 { 1_000_000 } else { args.rate }),
        workers: args.workers,
        backend,
        publish_window: 256,
        prefetch: args.prefetch.unwrap_or(settings.worker.prefetch),
        max_in_flight: args.max_in_flight.unwrap_or(settings.worker.max_in_flight),
        timeout: args
            .timeout
            .unwrap_or_else(|| default_timeout(shape, args.rate)),
    };
    if args.output == BenchOutput::Table {
        eprintln!("cxrel bench: {params:?}");
    }
    let figures = run::run(&params, &settings).await?;
    let text = match args.output {
        BenchOutput::Table => figures.table(),
        BenchOutput::Json => serde_json::to_string_pretty(&figures)? + "\n",
    };
    // A closed stdout (`| head`) is not worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(0)
}

/// Three times the time the rate allows (or 1 ms per operation), plus a minute.
fn default_timeout(shape: Shape, rate: u32) -> Duration {
    let ops = shape.operations() as f64;
    let base = if rate == 0 {
        ops / 1000.0
    } else {
        ops / f64::from(rate)
    };
    Duration::try_from_secs_f64(base * 3.0 + 60.0).unwrap_or(Duration::from_secs(24 * 3600))
}
