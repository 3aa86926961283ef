//! The tenant-wide request budget in front of every data-store request: the [`RateBudget`] seam,
//! and [`LocalBudget`], one process's budget.
//!
//! [`LocalBudget`] paces requests with a [`Pacer`] (GCRA reservations, `[rate_limit].burst`) at
//! the rate [`Cubic`] gives at that moment: `[rate_limit].requests_per_second`, or discovered when
//! that is 0, lowered on 429s and recovering CUBIC-style (see [`super::cubic`]). A cut voids the
//! reservations made at the old rate, so a decrease takes effect at once; a pause (a 429 that
//! cutting no longer helps) holds every request until it ends.
//!
//! [`RedisBudget`](super::redis_budget::RedisBudget) shares the same behaviour across replicas.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::cubic::{Cubic, CubicParams, Signal};
use super::pacer::{Grant, HORIZON, Pacer};

/// A budget of data-store requests shared by every task of the client.
pub trait RateBudget: Send + Sync + 'static {
    /// Waits until one request may be sent (pause over, rate allows).
    fn acquire(&self) -> BoxFuture<'_, ()>;
    /// The store answered 429 to a request sent at `sent`; `retry_after` is its Retry-After.
    fn on_throttled(&self, sent: Instant, retry_after: Option<Duration>);
    /// A request sent at `sent` got a non-429 answer from the store.
    fn on_success(&self, sent: Instant);
    /// Current effective requests per second (for metrics, logs and tests; infinite = unpaced).
    fn effective_rate(&self) -> f64;
    /// Where the budget comes from and its rate, for the worker's `/readyz` detail.
    fn describe(&self) -> String {
        format!("local budget {}", describe_rate(self.effective_rate()))
    }
}

/// A rate for humans: "100 rps", or "unpaced (discovering the limit)".
pub fn describe_rate(rate: f64) -> String {
    if rate.is_finite() {
        format!("{rate:.0} rps")
    } else {
        "unpaced".to_owned()
    }
}

/// The rate metric: the gauge cannot show infinity, 0 stands for "not paced".
pub fn set_rate_gauge(rate: f64) {
    let shown = if rate.is_finite() { rate } else { 0.0 };
    metrics::gauge!("cxrel_store_rate_limit_rps").set(shown);
}

/// The parameters `[rate_limit].requests_per_second` asks for (0 = discover the limit).
pub fn params_for(requests_per_second: u32) -> CubicParams {
    CubicParams::new((requests_per_second > 0).then(|| f64::from(requests_per_second)))
}

struct State {
    cubic: Cubic,
    pacer: Pacer,
    last_gauge: Instant,
}

/// The in-process budget; see the module docs.
pub struct LocalBudget {
    burst: u32,
    state: Mutex<State>,
}

impl LocalBudget {
    /// `requests_per_second` (0 = discover) and `burst` from `[rate_limit]`.
    pub fn new(requests_per_second: u32, burst: u32) -> Self {
        Self::with_params(burst, params_for(requests_per_second))
    }

    pub fn with_params(burst: u32, params: CubicParams) -> Self {
        let now = Instant::now();
        let cubic = Cubic::new(params, now);
        set_rate_gauge(cubic.rate(now));
        Self {
            burst: burst.max(1),
            state: Mutex::new(State {
                cubic,
                pacer: Pacer::new(now),
                last_gauge: now,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn acquire_inner(&self) {
        // Bounded: each cut while waiting costs one more round.
        let mut cuts = 0;
        while cuts < 8 {
            let grant = {
                let mut s = self.state();
                let now = Instant::now();
                s.cubic.on_request(now);
                let rate = s.cubic.rate(now);
                let pause = s.cubic.pause_until();
                s.pacer.reserve(now, rate, self.burst, pause)
            };
            let slot = match grant {
                Grant::Slot(slot) => slot,
                Grant::Later(at) => {
                    tokio::time::sleep_until((at + come_back_jitter()).into()).await;
                    continue;
                }
            };
            cuts += 1;
            if slot.at > Instant::now() {
                tokio::time::sleep_until(slot.at.into()).await;
            }
            if self.state().pacer.generation() == slot.generation {
                return;
            }
        }
    }
}

impl RateBudget for LocalBudget {
    fn acquire(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.acquire_inner())
    }

    fn on_throttled(&self, sent: Instant, retry_after: Option<Duration>) {
        metrics::counter!("cxrel_store_throttled_total").increment(1);
        let now = Instant::now();
        let (signal, old) = {
            let mut s = self.state();
            let old = s.cubic.rate(sent);
            let signal = s.cubic.on_throttled(now, sent, retry_after);
            if let Signal::Cut { rate, .. } | Signal::Closed { rate, .. } = signal {
                s.pacer.reset(now, rate, self.burst);
            }
            (signal, old)
        };
        match signal {
            Signal::Cut {
                w_max,
                rate,
                pause_until,
            } => {
                set_rate_gauge(rate);
                log_cut(old, w_max, rate, pause_until, retry_after);
            }
            Signal::Closed { rate } => log_closed(rate),
            Signal::Ignored => {}
        }
    }

    fn on_success(&self, sent: Instant) {
        let now = Instant::now();
        let mut s = self.state();
        s.cubic.on_success(now, sent);
        // The rate moves continuously; the gauge follows it a few times a second.
        if now.saturating_duration_since(s.last_gauge) >= Duration::from_millis(250) {
            s.last_gauge = now;
            set_rate_gauge(s.cubic.rate(now));
        }
    }

    fn effective_rate(&self) -> f64 {
        self.state().cubic.rate(Instant::now())
    }
}

/// Up to a quarter of the horizon, so waiters told to come back do not all return at once.
pub fn come_back_jitter() -> Duration {
    HORIZON.mul_f64(rand::random::<f64>() * 0.25)
}

/// One warning per signal (a burst of 429s is one signal), never per 429.
pub fn log_cut(
    old: f64,
    w_max: f64,
    rate: f64,
    pause_until: Option<Instant>,
    retry_after: Option<Duration>,
) {
    let pause = pause_until.map(|p| p.saturating_duration_since(Instant::now()));
    tracing::warn!(
        from_rps = %describe_rate(old),
        w_max_rps = format_args!("{w_max:.1}"),
        to_rps = format_args!("{rate:.1}"),
        pause_ms = pause.map(|p| p.as_millis() as u64),
        retry_after_s = retry_after.map(|d| d.as_secs_f64()),
        "data store throttled (429): lowering the request rate"
    );
}

/// A 429 while the server admits nothing sent since the last cut: requests now go one at a time
/// as probes, `rate` per second (see `cubic`, "Closed"). Counted, and logged at debug: a window
/// closing until its second ends is routine.
pub fn log_closed(rate: f64) {
    metrics::counter!("cxrel_store_closed_probes_total").increment(1);
    tracing::debug!(
        probe_rps = format_args!("{rate:.1}"),
        "data store refuses everything sent since the last cut (429): probing one request at a time"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acquire_paces_at_the_configured_rate() {
        let budget = LocalBudget::new(200, 1);
        let start = Instant::now();
        for _ in 0..21 {
            budget.acquire().await;
        }
        // 1 immediate + 20 at 5 ms each.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
    }

    #[tokio::test]
    async fn once_a_probe_is_admitted_the_risen_rate_is_not_held_by_the_probes_empty_bucket() {
        let budget = LocalBudget::new(150, 10);
        let ra = Some(Duration::from_secs(1));
        budget.on_throttled(Instant::now(), ra);
        // Everything refused for over a second (a penalty box): probes then go as Retry-After
        // says, 1 s apart, and a bucket of 10 at 1 rps is empty for 10 s.
        let closed = Instant::now();
        while closed.elapsed() < Duration::from_millis(1100) {
            budget.on_throttled(Instant::now(), ra);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            budget.effective_rate() <= 1.0,
            "{}",
            budget.effective_rate()
        );
        budget.acquire().await;
        budget.on_success(Instant::now());
        assert!(
            budget.effective_rate() > 100.0,
            "{}",
            budget.effective_rate()
        );
        let start = Instant::now();
        for _ in 0..5 {
            budget.acquire().await;
        }
        // Five requests at ~140 rps: milliseconds. Before, the probe's bucket held them ~9 s.
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn a_cut_applies_at_once_and_leaves_no_burst() {
        let budget = LocalBudget::new(100, 10);
        budget.on_throttled(Instant::now(), Some(Duration::from_secs(1)));
        assert!((budget.effective_rate() - 90.0).abs() < 0.5);
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        // At ~90 rps and no burst left: three cells take ≥ 3 × 11 ms, and no 1 s pause.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(900), "{took:?}");
    }

    #[test]
    fn a_429_while_nothing_since_the_cut_got_through_is_counted_as_a_probe_not_a_cut() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let budget = LocalBudget::new(150, 1);
        metrics::with_local_recorder(&recorder, || {
            budget.on_throttled(Instant::now(), None);
            std::thread::sleep(Duration::from_millis(2));
            budget.on_throttled(Instant::now(), None);
        });
        // Probing at one request per 10 ms, not cut again to 0.81 × 150.
        assert!(
            (budget.effective_rate() - 100.0).abs() < 0.5,
            "{}",
            budget.effective_rate()
        );
        let rendered = handle.render();
        assert!(
            rendered.contains("cxrel_store_closed_probes_total 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("cxrel_store_throttled_total 2"),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn zero_requests_per_second_starts_a_slow_start_instead_of_one_rps() {
        let budget = LocalBudget::new(0, 1);
        assert_eq!(budget.effective_rate(), 10.0);
        assert_eq!(budget.describe(), "local budget 10 rps");
    }
}
