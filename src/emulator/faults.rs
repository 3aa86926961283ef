//! Injected faults on the record API (rate limit with or without Retry-After, random 5xx,
//! added latency with jitter) plus the run-time token lifetime, and the middleware that applies
//! them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};

use super::bucket::{Algorithm, Limiter};
use super::error::ApiError;
use super::state::{Shared, read, write};
use super::stats::ClientMethod;

const MAX_TOKEN_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// A rate limit: `requests_per_second` steady rate, `burst` requests at once (bucket size),
/// enforced by `algorithm` (default GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFault {
    pub requests_per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
    #[serde(default)]
    pub algorithm: Algorithm,
}

fn one() -> u32 {
    1
}

/// The fault settings as the control API shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Faults {
    pub rate_limit: Option<RateLimitFault>,
    pub retry_after: bool,
    pub error_ratio: f64,
    pub latency_ms: u64,
    /// Each request's latency is `latency_ms` plus a uniform 0..=this; half of it passes before
    /// the rate limit sees the request (its way in), so arrivals bunch as on a real network.
    pub latency_jitter_ms: u64,
    pub token_ttl_ms: u64,
    /// PATCHes are applied, then answered 502 (a proxy lost the answer): the write's outcome is
    /// unknown to the client.
    pub lose_patch_answers: bool,
    /// PATCHes are answered 200 with the record as it was, and nothing is stored (a store that
    /// accepts a write and drops it).
    pub drop_patches: bool,
    /// Records another writer keeps changing: each PATCH of one finds its version bumped just
    /// before it, so an `If-Match` from any earlier read is answered 412.
    pub conflict_records: Vec<String>,
    /// The only client authentication the token endpoint takes (401 `invalid_client` for the
    /// other); `null` = both.
    pub token_client_auth: Option<ClientMethod>,
}

/// A change to the faults: absent keys keep their value; `"rate_limit": null` removes the limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimitFault>>,
    pub retry_after: Option<bool>,
    pub error_ratio: Option<f64>,
    pub latency_ms: Option<u64>,
    pub latency_jitter_ms: Option<u64>,
    pub token_ttl_ms: Option<u64>,
    pub lose_patch_answers: Option<bool>,
    pub drop_patches: Option<bool>,
    pub conflict_records: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub token_client_auth: Option<Option<ClientMethod>>,
}

/// Distinguishes `"key": null` (Some(None)) from an absent key (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The faults in force plus the limiter built from them; swapped whole on every change.
struct Active {
    faults: Faults,
    limiter: Option<Arc<Limiter>>,
}

pub struct FaultState {
    active: RwLock<Arc<Active>>,
}

impl FaultState {
    pub fn new(token_ttl: Duration) -> Self {
        Self {
            active: RwLock::new(Arc::new(Active {
                faults: defaults(token_ttl),
                limiter: None,
            })),
        }
    }

    pub fn current(&self) -> Faults {
        read(&self.active).faults.clone()
    }

    pub fn token_client_auth(&self) -> Option<ClientMethod> {
        read(&self.active).faults.token_client_auth
    }

    /// Whether PATCHes are answered without being stored (`drop_patches`).
    pub fn drops_patches(&self) -> bool {
        self.snapshot().faults.drop_patches
    }

    /// Whether another writer changes record `id` before each PATCH (`conflict_records`).
    pub fn conflicts_on(&self, id: &str) -> bool {
        self.snapshot()
            .faults
            .conflict_records
            .iter()
            .any(|r| r == id)
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_millis(read(&self.active).faults.token_ttl_ms)
    }

    /// Applies an update after checking it; a new rate limit starts with a full bucket.
    pub fn update(&self, update: FaultsUpdate) -> Result<Faults, ApiError> {
        let mut guard = write(&self.active);
        let mut faults = guard.faults.clone();
        let limit_changed = update.rate_limit.is_some();
        if let Some(limit) = update.rate_limit {
            faults.rate_limit = limit;
        }
        faults.retry_after = update.retry_after.unwrap_or(faults.retry_after);
        faults.error_ratio = update.error_ratio.unwrap_or(faults.error_ratio);
        faults.latency_ms = update.latency_ms.unwrap_or(faults.latency_ms);
        faults.latency_jitter_ms = update.latency_jitter_ms.unwrap_or(faults.latency_jitter_ms);
        faults.token_ttl_ms = update.token_ttl_ms.unwrap_or(faults.token_ttl_ms);
        faults.lose_patch_answers = update
            .lose_patch_answers
            .unwrap_or(faults.lose_patch_answers);
        faults.drop_patches = update.drop_patches.unwrap_or(faults.drop_patches);
        if let Some(records) = update.conflict_records {
            faults.conflict_records = records;
        }
        if let Some(only) = update.token_client_auth {
            faults.token_client_auth = only;
        }
        check(&faults)?;
        // An unchanged limit keeps its limiter, so the bucket level carries over.
        let limiter = if limit_changed {
            faults.rate_limit.map(|l| Arc::new(build_limiter(l))) as Option<Arc<Limiter>>
        } else {
            guard.limiter.clone()
        };
        *guard = Arc::new(Active {
            faults: faults.clone(),
            limiter,
        });
        Ok(faults)
    }

    pub fn reset(&self, token_ttl: Duration) {
        *write(&self.active) = Arc::new(Active {
            faults: defaults(token_ttl),
            limiter: None,
        });
    }

    fn snapshot(&self) -> Arc<Active> {
        read(&self.active).clone()
    }
}

fn defaults(token_ttl: Duration) -> Faults {
    Faults {
        rate_limit: None,
        retry_after: true,
        error_ratio: 0.0,
        latency_ms: 0,
        latency_jitter_ms: 0,
        token_ttl_ms: u64::try_from(token_ttl.as_millis()).unwrap_or(u64::MAX),
        lose_patch_answers: false,
        drop_patches: false,
        conflict_records: Vec::new(),
        token_client_auth: None,
    }
}

fn check(f: &Faults) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::bad_request("invalid_request", why));
    if !(0.0..=1.0).contains(&f.error_ratio) {
        return bad("error_ratio must be between 0.0 and 1.0");
    }
    if let Some(limit) = f.rate_limit {
        let rps = limit.requests_per_second;
        if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) || limit.burst == 0 {
            return bad("rate_limit needs requests_per_second > 0 and burst ≥ 1");
        }
    }
    if f.token_ttl_ms > MAX_TOKEN_TTL_MS {
        return bad("token_ttl_ms must be ≤ 10 years");
    }
    if f.latency_ms > 60_000 || f.latency_jitter_ms > 60_000 {
        return bad("latency_ms and latency_jitter_ms must be ≤ 60000");
    }
    Ok(())
}

fn build_limiter(limit: RateLimitFault) -> Limiter {
    Limiter::new(limit.algorithm, limit.requests_per_second, limit.burst)
}

/// This request's latency: `latency_ms` plus uniform jitter, split into the way in (before the
/// rate limit) and the way out.
fn latency(faults: &Faults) -> (Duration, Duration) {
    let jitter = match faults.latency_jitter_ms {
        0 => 0,
        j => rand::random_range(0..=j * 1000),
    };
    let total = Duration::from_micros(faults.latency_ms * 1000 + jitter);
    let way_in = total / 2;
    (way_in, total - way_in)
}

/// Middleware on the record API routes: the way in (half the latency), count the request for the
/// 1-second window, rate limit, the way out, 5xx injection, all before the handler so a refused
/// request changes nothing.
pub async fn api_faults(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let active = state.faults.snapshot();
    let (way_in, way_out) = latency(&active.faults);
    if !way_in.is_zero() {
        tokio::time::sleep(way_in).await;
    }
    state.stats.api_request_arrived();
    let admitted = active.limiter.as_ref().map_or(Ok(()), |l| l.check());
    if !way_out.is_zero() {
        tokio::time::sleep(way_out).await;
    }
    if let Err(wait) = admitted {
        state.stats.throttled();
        return throttled(active.faults.retry_after, wait);
    }
    if active.faults.error_ratio > 0.0 && rand::random::<f64>() < active.faults.error_ratio {
        state.stats.error_injected();
        return injected_error();
    }
    let lose_answer = active.faults.lose_patch_answers && req.method() == axum::http::Method::PATCH;
    let response = next.run(req).await;
    if lose_answer && response.status().is_success() {
        state.stats.error_injected();
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "answer_lost",
            "the write was applied; its answer was lost",
        )
        .into_response();
    }
    response
}

/// 429, with `Retry-After` in whole seconds (rounded up, at least 1) when enabled.
fn throttled(retry_after: bool, wait: Duration) -> Response {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "request rate limit exceeded",
    );
    if retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        error = error.with_header(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    error.into_response()
}

fn injected_error() -> Response {
    let status = match rand::random_range(0..3u8) {
        0 => StatusCode::INTERNAL_SERVER_ERROR,
        1 => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, "injected_fault", "fault injected by the emulator").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(json: serde_json::Value) -> FaultsUpdate {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn absent_keys_keep_their_value_and_null_removes_the_rate_limit() {
        let state = FaultState::new(Duration::from_secs(60));
        state
            .update(update(
                serde_json::json!({"rate_limit": {"requests_per_second": 5.0, "burst": 2}}),
            ))
            .unwrap();
        let f = state
            .update(update(serde_json::json!({"error_ratio": 0.5})))
            .unwrap();
        assert_eq!(f.rate_limit.map(|l| l.burst), Some(2));
        assert!(state.snapshot().limiter.is_some());
        let f = state
            .update(update(serde_json::json!({"rate_limit": null})))
            .unwrap();
        assert_eq!(f.rate_limit, None);
        assert!(state.snapshot().limiter.is_none());
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused() {
        let state = FaultState::new(Duration::from_secs(60));
        assert!(
            state
                .update(update(serde_json::json!({"error_ratio": 1.5})))
                .is_err()
        );
        assert_eq!(state.current().error_ratio, 0.0);
    }

    #[test]
    fn the_limiter_follows_the_chosen_algorithm_and_keeps_the_burst() {
        let state = FaultState::new(Duration::from_secs(60));
        let f = state
            .update(update(serde_json::json!({"rate_limit": {
                "requests_per_second": 1.0, "burst": 3, "algorithm": "token_bucket"}})))
            .unwrap();
        assert_eq!(f.rate_limit.unwrap().algorithm, Algorithm::TokenBucket);
        let limiter = state.snapshot().limiter.clone().unwrap();
        assert!(matches!(*limiter, Limiter::TokenBucket(_)));
        assert!((0..3).all(|_| limiter.check().is_ok()));
        assert!(limiter.check().is_err());
    }

    #[test]
    fn jitter_adds_up_to_its_bound_and_half_is_spent_on_the_way_in() {
        let mut faults = defaults(Duration::from_secs(60));
        faults.latency_ms = 2;
        faults.latency_jitter_ms = 18;
        for _ in 0..200 {
            let (way_in, way_out) = latency(&faults);
            let total = way_in + way_out;
            assert!(total >= Duration::from_millis(2) && total <= Duration::from_millis(20));
            assert!(way_out >= way_in && way_out - way_in <= Duration::from_micros(1));
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let r = throttled(true, Duration::from_millis(1200));
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        let r = throttled(false, Duration::from_millis(1200));
        assert!(r.headers().get(RETRY_AFTER).is_none());
    }
}
