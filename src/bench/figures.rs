//! The figures of one benchmark run: what was run, what it achieved, as a table or JSON.

use std::time::Duration;

use serde::Serialize;

use crate::emulator::Algorithm;

#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub jobs: usize,
    pub ops_per_job: usize,
    /// The emulator's rate limit in requests/s; 0 = none.
    pub rate: u32,
    pub emulator_limiter: Algorithm,
    /// Emulator latency per record-API request: this plus uniform 0..=`latency_jitter_ms`.
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// What the workers budget together; 0 = not configured (they discover the limit).
    pub worker_rate: u32,
    pub workers: usize,
    /// Each worker's `[worker].prefetch` and `max_in_flight`.
    pub prefetch: u16,
    pub max_in_flight: usize,
    pub rate_backend: String,
    pub elapsed_seconds: f64,
    /// From the first publish to the first settled job: token, schema and graph load, once per
    /// worker start; part of `elapsed_seconds`.
    pub first_settled_ms: f64,
    pub jobs_per_second: f64,
    pub operations_per_second: f64,
    pub store_requests: u64,
    pub requests_per_operation: f64,
    pub throttled_429: u64,
    pub throttled_share: f64,
    pub max_requests_in_1s: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub dead_lettered: usize,
    /// Peak resident set size (VmHWM) of each worker process, MiB.
    pub worker_peak_rss_mib: Vec<f64>,
    pub broker_ceiling_messages_per_second: f64,
    /// jobs/s ÷ broker ceiling messages/s.
    pub ratio_to_broker_ceiling: f64,
}

/// The `q`-quantile (0..=1) of `sorted` by nearest rank; zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl RunFigures {
    /// A two-column table, one figure per line.
    pub fn table(&self) -> String {
        let rate = if self.rate == 0 {
            "unlimited".to_owned()
        } else {
            let limiter = match self.emulator_limiter {
                Algorithm::Gcra => "GCRA",
                Algorithm::TokenBucket => "token bucket",
                Algorithm::FixedWindow => "fixed window",
                Algorithm::SlidingWindow => "sliding window",
            };
            format!("{} req/s ({limiter})", self.rate)
        };
        let worker_rate = match self.worker_rate {
            0 => "not configured (discover)".to_owned(),
            r => format!("{r} req/s"),
        };
        let rss: Vec<String> = self
            .worker_peak_rss_mib
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect();
        let rows = [
            (
                "jobs × operations",
                format!("{} × {}", self.jobs, self.ops_per_job),
            ),
            ("data-store rate limit", rate),
            (
                "latency",
                format!(
                    "{}–{} ms",
                    self.latency_ms,
                    self.latency_ms + self.latency_jitter_ms
                ),
            ),
            ("worker budget", worker_rate),
            (
                "workers (rate backend)",
                format!("{} ({})", self.workers, self.rate_backend),
            ),
            (
                "prefetch / jobs in flight",
                format!("{} / {}", self.prefetch, self.max_in_flight),
            ),
            ("elapsed", format!("{:.1} s", self.elapsed_seconds)),
            (
                "first job settled after",
                format!("{:.1} ms", self.first_settled_ms),
            ),
            ("jobs/s", format!("{:.1}", self.jobs_per_second)),
            ("operations/s", format!("{:.1}", self.operations_per_second)),
            ("data-store requests", self.store_requests.to_string()),
            (
                "requests per operation",
                format!("{:.3}", self.requests_per_operation),
            ),
            (
                "429 answers",
                format!(
                    "{} ({:.2}%)",
                    self.throttled_429,
                    self.throttled_share * 100.0
                ),
            ),
            ("peak requests in 1 s", self.max_requests_in_1s.to_string()),
            (
                "latency p50 (enqueue→completed)",
                format!("{:.1} ms", self.latency_p50_ms),
            ),
            ("latency p99", format!("{:.1} ms", self.latency_p99_ms)),
            ("latency max", format!("{:.1} ms", self.latency_max_ms)),
            ("dead-lettered jobs", self.dead_lettered.to_string()),
            ("worker peak RSS", format!("{} MiB", rss.join(" / "))),
            (
                "broker ceiling",
                format!("{:.0} msg/s", self.broker_ceiling_messages_per_second),
            ),
            (
                "jobs/s ÷ broker ceiling",
                format!("{:.3}", self.ratio_to_broker_ceiling),
            ),
        ];
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
