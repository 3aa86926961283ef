//! The tenant-wide request budget in front of every data-store request: a governor limiter whose
//! rate adapts to 429s (AIMD) and a shared cool-down every request waits out after a 429.
//!
//! Behaviour of [`LocalBudget`] (parameters in [`AimdParams`]):
//! - Every request first waits until the cool-down ("not before" instant) has passed, then takes a
//!   cell from a governor GCRA limiter at the *effective* rate (starts at
//!   `[rate_limit].requests_per_second`, burst `[rate_limit].burst`).
//! - On a 429: cool down for Retry-After when the server sent one, else for an own backoff
//!   (`cool_down_min` doubling per consecutive throttle, at most `cool_down_max`), and multiply the
//!   effective rate by `decrease_factor` (0.7), at most once per cool-down window so a burst of
//!   429s from requests already in flight counts as one signal.
//! - On success, outside a cool-down: add `increase_per_second` × elapsed (at most one
//!   `increase_interval` worth at a time) back up to the configured maximum.
//!
//! governor's quota is fixed at construction, so a rate change builds a new limiter and swaps it in
//! (under a `RwLock<Arc<…>>`; changes happen at most once per `increase_interval` or per 429 window,
//! so the lock is practically uncontended). The new limiter starts with its burst used up, so a swap
//! never hands out an extra burst; a request that waited on the old limiter takes a cell from the
//! new one too, so a decrease takes effect at once.
//!
//! [`RateBudget`] is the seam for the shared budget with the same adaptive behaviour
//! ([`RedisBudget`](super::redis_budget::RedisBudget)).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A budget of data-store requests shared by every task of the client.
pub trait RateBudget: Send + Sync + 'static {
    /// Waits until one request may be sent (cool-down over, rate allows).
    fn acquire(&self) -> BoxFuture<'_, ()>;
    /// The store answered 429; `retry_after` is its Retry-After header, when present.
    fn on_throttled(&self, retry_after: Option<Duration>);
    /// A request got a non-429 answer from the store.
    fn on_success(&self);
    /// Current effective requests per second (for metrics, logs and tests).
    fn effective_rate(&self) -> f64;
    /// Where the budget comes from and its rate, for the worker's `/readyz` detail.
    fn describe(&self) -> String {
        format!("local budget {:.0} rps", self.effective_rate())
    }
}

/// Parameters of the additive-increase / multiplicative-decrease rate adaptation.
#[derive(Debug, Clone, PartialEq)]
pub struct AimdParams {
    /// Effective rate × this on a 429 (once per cool-down window).
    pub decrease_factor: f64,
    /// Requests per second added back per second of successful traffic.
    pub increase_per_second: f64,
    /// How often the rate is raised (and the limiter rebuilt) while recovering.
    pub increase_interval: Duration,
    /// The rate never drops below this.
    pub min_rate: f64,
    /// First own cool-down when a 429 carries no Retry-After; doubles per consecutive throttle.
    pub cool_down_min: Duration,
    /// Longest own cool-down, and the cap on a server's Retry-After.
    pub cool_down_max: Duration,
}

impl AimdParams {
    /// Defaults for a configured maximum of `max_rate` requests per second: ×0.7 on a 429, +2% of
    /// the maximum (at least 1 rps) per second of success, floor 1 rps (or the maximum if lower),
    /// own cool-down 250 ms doubling to 10 s.
    pub fn for_max_rate(max_rate: f64) -> Self {
        Self {
            decrease_factor: 0.7,
            increase_per_second: (max_rate * 0.02).max(1.0),
            increase_interval: Duration::from_secs(1),
            min_rate: max_rate.min(1.0),
            cool_down_min: Duration::from_millis(250),
            cool_down_max: Duration::from_secs(10),
        }
    }
}

/// The AIMD state machine, free of clocks and limiters so it can be tested step by step.
#[derive(Debug, Clone)]
pub struct Aimd {
    params: AimdParams,
    max_rate: f64,
    rate: f64,
    /// Requests wait until this instant (the cool-down).
    cool_until: Instant,
    /// 429s before this instant belong to the current window and do not decrease the rate again.
    window_until: Instant,
    /// Last time the rate changed (start of the current increase interval).
    last_change: Instant,
    /// Throttle windows in a row without a clean window between them.
    consecutive: u32,
}

/// What a throttle signal did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    /// Requests wait until then.
    pub cool_until: Instant,
    /// The new effective rate, when this 429 opened a new window and decreased it.
    pub new_rate: Option<f64>,
}

impl Aimd {
    pub fn new(max_rate: f64, params: AimdParams, now: Instant) -> Self {
        Self {
            params,
            max_rate,
            rate: max_rate,
            cool_until: now,
            window_until: now,
            last_change: now,
            consecutive: 0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn cool_until(&self) -> Instant {
        self.cool_until
    }

    /// A 429 at `now`.
    pub fn on_throttled(&mut self, now: Instant, retry_after: Option<Duration>) -> Throttled {
        let p = &self.params;
        let own = p
            .cool_down_min
            .saturating_mul(1u32 << self.consecutive.min(16))
            .min(p.cool_down_max);
        let pause = retry_after.map_or(own, |r| r.min(p.cool_down_max));
        let until = now + pause;
        self.cool_until = self.cool_until.max(until);
        if now < self.window_until {
            return Throttled {
                cool_until: self.cool_until,
                new_rate: None,
            };
        }
        // A new window: one decrease, and a window at least as long as the own cool-down so
        // answers of requests already in flight do not count again.
        self.consecutive = self.consecutive.saturating_add(1);
        self.window_until = self.cool_until.max(now + p.cool_down_min);
        self.rate = (self.rate * p.decrease_factor).max(p.min_rate);
        self.last_change = self.cool_until;
        Throttled {
            cool_until: self.cool_until,
            new_rate: Some(self.rate),
        }
    }

    /// A non-429 answer at `now`; returns the new rate when it rose.
    pub fn on_success(&mut self, now: Instant) -> Option<f64> {
        if now < self.cool_until {
            return None;
        }
        if self.consecutive > 0 && now >= self.window_until + self.params.cool_down_max {
            self.consecutive = 0;
        }
        if self.rate >= self.max_rate {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.last_change);
        if elapsed < self.params.increase_interval {
            return None;
        }
        // At most one interval's worth at once: after an idle spell, recover step by step.
        let secs = self.params.increase_interval.as_secs_f64();
        self.rate = (self.rate + self.params.increase_per_second * secs).min(self.max_rate);
        self.last_change = now;
        Some(self.rate)
    }
}

/// A governor limiter tagged with the rate it was built for.
struct Gate {
    generation: u64,
    limiter: DefaultDirectRateLimiter,
}

/// The in-process budget: one governor limiter, adapted by [`Aimd`].
pub struct LocalBudget {
    burst: NonZeroU32,
    gate: RwLock<Arc<Gate>>,
    state: Mutex<Aimd>,
}

impl LocalBudget {
    /// `requests_per_second` and `burst` from `[rate_limit]`, AIMD defaults for that rate.
    pub fn new(requests_per_second: u32, burst: u32) -> Self {
        let max = f64::from(requests_per_second.max(1));
        Self::with_params(requests_per_second, burst, AimdParams::for_max_rate(max))
    }

    pub fn with_params(requests_per_second: u32, burst: u32, params: AimdParams) -> Self {
        let max = f64::from(requests_per_second.max(1));
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let gate = Gate {
            generation: 0,
            limiter: build_limiter(max, burst, false),
        };
        metrics::gauge!("cxrel_store_rate_limit_rps").set(max);
        Self {
            burst,
            gate: RwLock::new(Arc::new(gate)),
            state: Mutex::new(Aimd::new(max, params, Instant::now())),
        }
    }

    fn current_gate(&self) -> Arc<Gate> {
        self.gate.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn swap(&self, rate: f64) {
        let mut gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        *gate = Arc::new(Gate {
            generation: gate.generation + 1,
            limiter: build_limiter(rate, self.burst, true),
        });
        metrics::gauge!("cxrel_store_rate_limit_rps").set(rate);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Aimd> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn acquire_inner(&self) {
        // Bounded: a rate change or a new cool-down while waiting costs one more round each.
        for _ in 0..8 {
            let cool_until = self.state().cool_until();
            if cool_until > Instant::now() {
                tokio::time::sleep_until(cool_until.into()).await;
                continue;
            }
            let gate = self.current_gate();
            gate.limiter.until_ready().await;
            let swapped = self.current_gate().generation != gate.generation;
            let cooling = self.state().cool_until() > Instant::now();
            if !swapped && !cooling {
                return;
            }
        }
    }
}

impl RateBudget for LocalBudget {
    fn acquire(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.acquire_inner())
    }

    fn on_throttled(&self, retry_after: Option<Duration>) {
        metrics::counter!("cxrel_store_throttled_total").increment(1);
        let (outcome, old) = {
            let mut state = self.state();
            let old = state.rate();
            (state.on_throttled(Instant::now(), retry_after), old)
        };
        if let Some(rate) = outcome.new_rate {
            self.swap(rate);
            let pause = outcome.cool_until.saturating_duration_since(Instant::now());
            tracing::warn!(
                from_rps = format_args!("{old:.1}"),
                to_rps = format_args!("{rate:.1}"),
                cool_down_ms = pause.as_millis() as u64,
                retry_after_s = retry_after.map(|d| d.as_secs_f64()),
                "data store throttled (429): cooling down and lowering the request rate"
            );
        }
    }

    fn on_success(&self) {
        let raised = self.state().on_success(Instant::now());
        if let Some(rate) = raised {
            self.swap(rate);
            tracing::debug!(
                rps = format_args!("{rate:.1}"),
                "data-store request rate raised"
            );
        }
    }

    fn effective_rate(&self) -> f64 {
        self.state().rate()
    }
}

/// A GCRA limiter at `rate` per second with `burst`; `drained` starts it with the burst used up.
fn build_limiter(rate: f64, burst: NonZeroU32, drained: bool) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    let limiter = RateLimiter::direct(quota);
    if drained {
        let _ = limiter.check_n(burst);
    }
    limiter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> AimdParams {
        AimdParams::for_max_rate(150.0)
    }

    #[test]
    fn a_429_cools_down_for_retry_after_and_cuts_the_rate_once_per_window() {
        let t0 = Instant::now();
        let mut a = Aimd::new(150.0, params(), t0);
        let first = a.on_throttled(t0, Some(Duration::from_secs(1)));
        assert_eq!(first.cool_until, t0 + Duration::from_secs(1));
        assert!((first.new_rate.unwrap() - 105.0).abs() < 1e-9);
        // More 429s from requests already in flight: same window, no further cut.
        let again = a.on_throttled(t0 + Duration::from_millis(5), Some(Duration::from_secs(1)));
        assert_eq!(again.new_rate, None);
        assert!((a.rate() - 105.0).abs() < 1e-9);
        // A 429 after the window is a new signal.
        let later = a.on_throttled(t0 + Duration::from_secs(2), None);
        assert!((later.new_rate.unwrap() - 73.5).abs() < 1e-9);
    }

    #[test]
    fn without_retry_after_the_own_cool_down_doubles_per_consecutive_window() {
        let t0 = Instant::now();
        let mut a = Aimd::new(100.0, params(), t0);
        let c1 = a.on_throttled(t0, None).cool_until - t0;
        let t1 = t0 + Duration::from_secs(1);
        let c2 = a.on_throttled(t1, None).cool_until - t1;
        let t2 = t1 + Duration::from_secs(1);
        let c3 = a.on_throttled(t2, None).cool_until - t2;
        assert_eq!(
            (c1, c2, c3),
            (
                Duration::from_millis(250),
                Duration::from_millis(500),
                Duration::from_millis(1000)
            )
        );
    }

    #[test]
    fn the_rate_recovers_additively_after_the_cool_down_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut a = Aimd::new(150.0, params(), t0);
        a.on_throttled(t0, Some(Duration::from_secs(1)));
        // Still cooling down: nothing changes.
        assert_eq!(a.on_success(t0 + Duration::from_millis(500)), None);
        // One interval after the cool-down: +3 rps (2% of 150).
        assert_eq!(a.on_success(t0 + Duration::from_millis(1500)), None);
        let r = a.on_success(t0 + Duration::from_secs(2)).unwrap();
        assert!((r - 108.0).abs() < 1e-9, "{r}");
        // After a long idle spell only one step is added.
        let r = a.on_success(t0 + Duration::from_secs(60)).unwrap();
        assert!((r - 111.0).abs() < 1e-9, "{r}");
        let mut t = t0 + Duration::from_secs(60);
        for _ in 0..100 {
            t += Duration::from_secs(1);
            a.on_success(t);
        }
        assert_eq!(a.rate(), 150.0);
    }

    #[test]
    fn the_rate_never_drops_below_the_floor() {
        let t0 = Instant::now();
        let mut a = Aimd::new(10.0, AimdParams::for_max_rate(10.0), t0);
        let mut t = t0;
        for _ in 0..50 {
            t += Duration::from_secs(20);
            a.on_throttled(t, Some(Duration::ZERO));
        }
        assert_eq!(a.rate(), 1.0);
    }

    #[tokio::test]
    async fn acquire_respects_the_rate() {
        let budget = LocalBudget::new(200, 1);
        let start = Instant::now();
        for _ in 0..21 {
            budget.acquire().await;
        }
        // 1 immediate + 20 at 5 ms each.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
    }

    #[tokio::test]
    async fn a_swapped_limiter_starts_without_burst() {
        let budget = LocalBudget::new(100, 10);
        budget.on_throttled(Some(Duration::ZERO));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        // At 70 rps and no burst left: the third cell comes ≥ 2 × 14 ms later.
        assert!(
            start.elapsed() >= Duration::from_millis(25),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn acquire_waits_out_the_cool_down() {
        let budget = LocalBudget::new(1000, 10);
        budget.on_throttled(Some(Duration::from_millis(200)));
        assert!((budget.effective_rate() - 700.0).abs() < 1e-9);
        let start = Instant::now();
        budget.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(190));
    }
}
