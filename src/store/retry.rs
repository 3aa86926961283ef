//! The in-client retry budget (`[retry]`): which errors are retried, how often, how long.
//!
//! Transient = 429, 408, 425, 5xx, timeouts, connection errors; everything else returns at once. A
//! PATCH is retried only after 429, 408 and 425, which say it was not processed (see
//! `StoreError::is_retryable_before_write`); the apply stage settles its other errors. Attempts are
//! capped at `max_attempts` (the first included) and at `max_elapsed` of wall time; delays between
//! attempts come from backon's exponential backoff (`min_backoff` doubling to `max_backoff`, with
//! jitter). A 429 waits the same backoff: the rate budget lowers the rate for every request but
//! pauses them all only when cutting stops helping (see `cubic`), so without this wait a
//! throttled request would come back within milliseconds and draw 429 after 429 from a store
//! far below the configured rate. Retry-After is not waited out per request: stores send it in
//! whole seconds, which for a bucket overstates the wait; the budget honours it when 429s persist.
//! The 401 refresh-and-retry-once rule is separate (it lives in the request executor).

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::error::StoreError;
use super::instrumentation::Route;
use crate::settings::RetrySettings;

/// Retry limits of one client call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_elapsed: Duration,
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        Self {
            max_attempts: s.max_attempts.max(1),
            min_backoff: s.min_backoff,
            max_backoff: s.max_backoff,
            max_elapsed: s.max_elapsed,
        }
    }
}

impl RetryPolicy {
    /// The delays between attempts (at most `max_attempts - 1`, `max_elapsed` in all).
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::new()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff.max(self.min_backoff))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_total_delay(Some(self.max_elapsed))
            .build()
    }

    /// Runs `attempt(n)` (n from 1) until it succeeds, fails permanently, or the budget is spent.
    /// The returned error carries the number of attempts made.
    pub async fn run<T, F, Fut>(&self, route: Route, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_if(route, StoreError::is_retryable_in_client, attempt)
            .await
    }

    /// [`run`](Self::run), retrying only the errors `retryable` accepts.
    pub async fn run_if<T, F, Fut>(
        &self,
        route: Route,
        retryable: fn(&StoreError) -> bool,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let mut backoff = self.backoff();
        let mut n = 1;
        loop {
            let error = match attempt(n).await {
                Ok(value) => return Ok(value),
                Err(e) if !retryable(&e) => return Err(e),
                Err(e) => e,
            };
            if n >= self.max_attempts {
                return Err(error.with_attempts(n));
            }
            let delay = backoff.next();
            let Some(delay) = delay else {
                return Err(error.with_attempts(n));
            };
            if started.elapsed() + delay > self.max_elapsed {
                return Err(error.with_attempts(n));
            }
            tracing::debug!(
                route = route.as_str(),
                attempt = n,
                code = error.code(),
                delay_ms = delay.as_millis() as u64,
                "data-store request failed transiently; retrying"
            );
            tokio::time::sleep(delay).await;
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::error::ErrorBody;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(5),
        }
    }

    fn server_error() -> StoreError {
        StoreError::from_status(503, ErrorBody::default(), None)
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let out = policy(5)
            .run(Route::GetRecord, |_| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err(server_error()),
                    _ => Ok(7),
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_attempt_cap_ends_a_persistent_failure_with_a_transient_error() {
        let calls = AtomicU32::new(0);
        let err = policy(3)
            .run(Route::GetRecord, |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(server_error())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(err.class(), crate::error::ErrorClass::Transient);
        assert!(
            matches!(err, StoreError::Server { attempts: 3, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn permanent_errors_and_409_412_are_not_retried() {
        for status in [400, 404, 409, 412] {
            let calls = AtomicU32::new(0);
            let err = policy(5)
                .run(Route::PatchRecord, |_| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(StoreError::from_status(status, ErrorBody::default(), None))
                })
                .await
                .unwrap_err();
            assert_eq!(calls.load(Ordering::SeqCst), 1, "HTTP {status}");
            assert_eq!(err.status(), Some(status));
        }
    }

    #[tokio::test]
    async fn the_time_budget_ends_retries_early() {
        let p = RetryPolicy {
            max_attempts: 100,
            min_backoff: Duration::from_millis(40),
            max_backoff: Duration::from_millis(40),
            max_elapsed: Duration::from_millis(100),
        };
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let _ = p
            .run(Route::GetRecord, |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StoreError::Timeout { attempts: 1 })
            })
            .await;
        assert!(calls.load(Ordering::SeqCst) <= 4);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
