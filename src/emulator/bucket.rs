//! The emulator's rate limiters: governor's GCRA (the same algorithm as the worker's pacing), or an
//! independent token bucket, fixed window or sliding log written the textbook way, so a benchmark
//! can check that the worker's adaptation does not depend on the server limiting exactly the way
//! it paces.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Which algorithm enforces `rate_limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// governor's GCRA: `burst` at once, then one request per `1/rate`.
    #[default]
    Gcra,
    /// A bucket of `burst` tokens refilled continuously at `rate`; a request takes a whole token.
    TokenBucket,
    /// At most `rate` requests in each one-second window counted from the limiter's start (the
    /// counter resets at every window's end; `burst` does not apply: a window admits its count
    /// however the requests bunch, and two windows' worth can pass around a boundary).
    FixedWindow,
    /// At most `rate` requests in any rolling second (a log of admission times; `burst` does not
    /// apply). The strictest of the four: no bunching is ever forgiven.
    SlidingWindow,
}

/// A token bucket: refilled by elapsed time × rate on every request, at most `capacity`.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token at `now`, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// Counts admissions in windows of `length`: fixed windows from `start`, or a rolling log.
#[derive(Debug)]
pub struct Window {
    /// Admissions per window (at least 1).
    count: usize,
    /// `count / rate`: one second for rates of 1/s and above.
    length: Duration,
    rolling: bool,
    start: Instant,
    /// Admission times still inside the window (fixed: those of the current window).
    admitted: VecDeque<Instant>,
}

impl Window {
    fn new(requests_per_second: f64, rolling: bool, start: Instant) -> Self {
        // Whole requests per window: `floor(rate)` per second, or one per `1/rate` below 1/s.
        let count = requests_per_second.floor().max(1.0);
        let length = Duration::from_secs_f64(count / requests_per_second.max(1e-9));
        Self {
            count: count as usize,
            length,
            rolling,
            start,
            admitted: VecDeque::new(),
        }
    }

    /// Admits one request at `now`, or says how long until the window has room.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let window_start = if self.rolling {
            now.checked_sub(self.length).unwrap_or(self.start)
        } else {
            let since = now.saturating_duration_since(self.start).as_secs_f64();
            let windows = (since / self.length.as_secs_f64()).floor();
            self.start + self.length.mul_f64(windows)
        };
        // Rolling: the window is (now − length, now]. Fixed: [its start, now].
        let rolling = self.rolling;
        let outside = |t: &Instant| {
            if rolling {
                *t <= window_start
            } else {
                *t < window_start
            }
        };
        while self.admitted.front().is_some_and(outside) {
            self.admitted.pop_front();
        }
        if self.admitted.len() < self.count {
            self.admitted.push_back(now);
            return Ok(());
        }
        let frees_at = if self.rolling {
            self.admitted.front().map_or(now, |t| *t + self.length)
        } else {
            window_start + self.length
        };
        Err(frees_at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)))
    }
}

/// A limiter of any kind; starts with a full burst (or an empty window).
pub enum Limiter {
    Gcra(DefaultDirectRateLimiter),
    TokenBucket(Mutex<Bucket>),
    Window(Mutex<Window>),
}

impl Limiter {
    pub fn new(algorithm: Algorithm, requests_per_second: f64, burst: u32) -> Self {
        Self::starting_at(algorithm, requests_per_second, burst, Instant::now())
    }

    /// A limiter whose bucket or first window starts at `start` (a simulation's clock; GCRA
    /// keeps governor's own).
    pub fn starting_at(
        algorithm: Algorithm,
        requests_per_second: f64,
        burst: u32,
        start: Instant,
    ) -> Self {
        match algorithm {
            Algorithm::Gcra => Self::Gcra(gcra(requests_per_second, burst)),
            Algorithm::TokenBucket => Self::TokenBucket(Mutex::new(Bucket {
                rate: requests_per_second,
                capacity: f64::from(burst.max(1)),
                tokens: f64::from(burst.max(1)),
                at: start,
            })),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                let rolling = algorithm == Algorithm::SlidingWindow;
                Self::Window(Mutex::new(Window::new(requests_per_second, rolling, start)))
            }
        }
    }

    /// Admits one request, or says how long until one would be admitted.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_at(Instant::now())
    }

    /// [`Limiter::check`] at `now` (GCRA reads governor's clock instead).
    pub fn check_at(&self, now: Instant) -> Result<(), Duration> {
        match self {
            Self::Gcra(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
            Self::TokenBucket(bucket) => bucket.lock().unwrap_or_else(|e| e.into_inner()).take(now),
            Self::Window(window) => window.lock().unwrap_or_else(|e| e.into_inner()).take(now),
        }
    }
}

fn gcra(requests_per_second: f64, burst: u32) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / requests_per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_allow_the_burst_then_refuse() {
        for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
            let l = Limiter::new(algorithm, 1.0, 3);
            assert!((0..3).all(|_| l.check().is_ok()), "{algorithm:?}");
            let wait = l.check().unwrap_err();
            assert!(wait > Duration::from_millis(900), "{algorithm:?} {wait:?}");
        }
    }

    #[test]
    fn the_bucket_refills_by_elapsed_time_up_to_its_capacity() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 100.0,
            capacity: 2.0,
            tokens: 0.0,
            at: t0,
        };
        assert!(b.take(t0 + Duration::from_millis(5)).is_err());
        assert!(b.take(t0 + Duration::from_millis(10)).is_ok());
        // A long pause refills only up to the capacity.
        let later = t0 + Duration::from_secs(10);
        assert!(b.take(later).is_ok() && b.take(later).is_ok());
        assert!(b.take(later).is_err());
    }

    fn window(rate: f64, rolling: bool, t0: Instant) -> Window {
        Window::new(rate, rolling, t0)
    }

    #[test]
    fn a_fixed_window_admits_its_count_then_refuses_until_the_next_window() {
        let t0 = Instant::now();
        let mut w = window(3.0, false, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!((0..3).all(|i| w.take(at(900 + i)).is_ok()));
        assert_eq!(w.take(at(950)), Err(Duration::from_millis(50)));
        // A new window: the boundary lets two windows' worth through within 100 ms.
        assert!((0..3).all(|i| w.take(at(1000 + i)).is_ok()));
        assert!(w.take(at(1010)).is_err());
    }

    #[test]
    fn a_sliding_window_counts_any_rolling_second() {
        let t0 = Instant::now();
        let mut w = window(3.0, true, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!((0..3).all(|i| w.take(at(900 + i)).is_ok()));
        // Past the fixed window's boundary the log still holds the three.
        assert_eq!(w.take(at(1000)), Err(Duration::from_millis(900)));
        assert!(w.take(at(1900)).is_ok());
        assert!(w.take(at(1900)).is_err());
    }

    #[test]
    fn a_window_below_one_request_per_second_stretches_to_hold_one() {
        let t0 = Instant::now();
        let mut w = window(0.5, true, t0);
        assert!(w.take(t0).is_ok());
        assert!(w.take(t0 + Duration::from_millis(1999)).is_err());
        assert!(w.take(t0 + Duration::from_millis(2001)).is_ok());
    }

    #[test]
    fn windows_and_the_bucket_admit_their_rate_over_a_long_run() {
        // Offered 1,000/s for 5 simulated seconds against 100/s: the kinds differ in bursts, not
        // in the long-run rate.
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_millis(i);
        let mut b = Bucket {
            rate: 100.0,
            capacity: 10.0,
            tokens: 10.0,
            at: t0,
        };
        let mut fixed = window(100.0, false, t0);
        let mut rolling = window(100.0, true, t0);
        let bucket = (0..5000).filter(|i| b.take(at(*i)).is_ok()).count();
        let fixed = (0..5000).filter(|i| fixed.take(at(*i)).is_ok()).count();
        let rolling = (0..5000).filter(|i| rolling.take(at(*i)).is_ok()).count();
        assert_eq!((bucket, fixed, rolling), (509, 500, 500));
    }
}
