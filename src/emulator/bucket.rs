//! The emulator's rate limiters: governor's GCRA (the same algorithm as the worker's pacing) or an
//! independent token bucket written the textbook way, so a benchmark can check that the worker's
//! adaptation does not depend on the server limiting exactly the way it paces.

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

/// A limiter of either kind; starts with a full burst.
pub enum Limiter {
    Gcra(DefaultDirectRateLimiter),
    TokenBucket(Mutex<Bucket>),
}

impl Limiter {
    pub fn new(algorithm: Algorithm, requests_per_second: f64, burst: u32) -> Self {
        match algorithm {
            Algorithm::Gcra => Self::Gcra(gcra(requests_per_second, burst)),
            Algorithm::TokenBucket => Self::TokenBucket(Mutex::new(Bucket {
                rate: requests_per_second,
                capacity: f64::from(burst.max(1)),
                tokens: f64::from(burst.max(1)),
                at: Instant::now(),
            })),
        }
    }

    /// Admits one request, or says how long until one would be admitted.
    pub fn check(&self) -> Result<(), Duration> {
        match self {
            Self::Gcra(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
            Self::TokenBucket(bucket) => bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now()),
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
}
