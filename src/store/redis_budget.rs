//! The tenant-wide rate budget shared by every replica through one Redis hash, with a local
//! fallback while Redis cannot be reached.
//!
//! One Lua script (`budget.lua`, run with EVALSHA) holds the whole algorithm so every decision is
//! atomic on the server and timed by the server's clock:
//! - `acquire`: GCRA with reservations. The script advances the theoretical arrival time (TAT) by
//!   `1/rate` and answers how long the caller must sleep before sending (burst as in
//!   [`LocalBudget`]); no cell is handed out before the shared cool-down ends.
//! - `throttle`: a 429 seen by any replica extends the shared cool-down and, once per window,
//!   multiplies the shared rate by 0.7, so all replicas slow down together.
//! - `increase`: after the cool-down, +2% of the maximum per interval, shared (`last_change` lives
//!   in the hash, so N replicas recover at the same speed as one).
//!
//! Round trips: one per request (`acquire`); a 429 costs one more at most once per local window;
//! a process asks for an increase at most once per increase interval.
//!
//! When Redis does not answer (at start or on any call), requests go through a [`LocalBudget`] of
//! `requests_per_second / replicas_hint` (at least 1); a warning is logged once per transition and
//! a background task reconnects every [`PROBE_INTERVAL`], switching back once Redis answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::limiter::{AimdParams, LocalBudget, RateBudget};
use crate::secret::{Secret, redact_url};

/// How often a process in fallback tries to reach Redis again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one Redis call (connect, script); past it the budget falls back.
const CALL_TIMEOUT: Duration = Duration::from_millis(800);
/// The budget hash expires after this long without traffic (state is cheap to rebuild).
const KEY_TTL_MS: u64 = 3_600_000;

const SCRIPT: &str = include_str!("budget.lua");

/// What a [`RedisBudget`] needs: `[rate_limit]` plus the key it shares.
#[derive(Debug, Clone)]
pub struct RedisBudgetConfig {
    pub url: Secret,
    /// The hash holding the budget's state; one per tenant and data-store API.
    pub key: String,
    pub requests_per_second: u32,
    pub burst: u32,
    pub replicas_hint: u32,
}

/// Where requests currently get their budget from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No answer from Redis yet (start): the local fallback is used meanwhile.
    Connecting,
    Redis,
    Fallback,
}

struct Link {
    mode: Mode,
    conn: Option<ConnectionManager>,
    /// Bumped on each new connection, so a late failure of an old one cannot drop a new one.
    generation: u64,
}

/// This process's copy of the shared state, refreshed by every script reply.
struct View {
    rate: f64,
    cool_until: Instant,
    /// 429s before this instant were already reported to Redis.
    window_until: Instant,
    last_increase_ask: Instant,
}

struct Shared {
    client: redis::Client,
    redacted_url: String,
    key: String,
    max_rate: f64,
    burst: u32,
    params: AimdParams,
    script: redis::Script,
    fallback: LocalBudget,
    fallback_rps: u32,
    link: Mutex<Link>,
    view: Mutex<View>,
    probing: AtomicBool,
}

/// The shared budget; see the module docs.
pub struct RedisBudget {
    shared: Arc<Shared>,
}

/// Each replica's share when the budget cannot be shared: `rps / replicas`, at least 1.
pub fn fallback_share(requests_per_second: u32, replicas_hint: u32) -> u32 {
    (requests_per_second / replicas_hint.max(1)).max(1)
}

/// The default budget key: the queue prefix (one deployment) and the data-store API it talks to,
/// so deployments and tests sharing one Redis keep separate budgets.
pub fn default_key(amqp_prefix: &str, api: &str) -> String {
    let api = api.trim().trim_end_matches('/').to_ascii_lowercase();
    format!("{amqp_prefix}:rate_budget:{api}")
}

impl RedisBudget {
    /// Builds the budget; connecting happens in the background (now when called inside a Tokio
    /// runtime, else on the first `acquire`). Fails only on a URL that is not a Redis URL.
    pub fn new(config: RedisBudgetConfig) -> Result<Self, String> {
        let redacted_url = redact_url(config.url.expose());
        let client = redis::Client::open(config.url.expose())
            .map_err(|_| format!("rate_limit.redis_url: not a valid Redis URL ({redacted_url})"))?;
        let max_rate = f64::from(config.requests_per_second.max(1));
        let fallback_rps = fallback_share(config.requests_per_second, config.replicas_hint);
        let now = Instant::now();
        let shared = Arc::new(Shared {
            client,
            redacted_url,
            key: config.key,
            max_rate,
            burst: config.burst.max(1),
            params: AimdParams::for_max_rate(max_rate),
            script: redis::Script::new(SCRIPT),
            fallback: LocalBudget::new(fallback_rps, config.burst),
            fallback_rps,
            link: Mutex::new(Link {
                mode: Mode::Connecting,
                conn: None,
                generation: 0,
            }),
            view: Mutex::new(View {
                rate: max_rate,
                cool_until: now,
                window_until: now,
                last_increase_ask: now,
            }),
            probing: AtomicBool::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            start_probe(&shared);
        }
        Ok(Self { shared })
    }

    /// The key of the shared hash.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// True while the shared (Redis) budget is in use.
    pub fn is_shared(&self) -> bool {
        self.shared.link().mode == Mode::Redis
    }

    async fn acquire_inner(&self) {
        let s = &self.shared;
        let local_cool = s.view().cool_until;
        if local_cool > Instant::now() {
            tokio::time::sleep_until(local_cool.into()).await;
        }
        let Some((generation, mut conn)) = s.connection() else {
            if !s.probing.load(Ordering::Relaxed) {
                start_probe(s);
            }
            return s.fallback.acquire().await;
        };
        let mut call = s.script.prepare_invoke();
        call.key(&s.key)
            .arg("acquire")
            .arg(s.max_rate)
            .arg(s.burst)
            .arg(KEY_TTL_MS);
        let reply = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<Vec<i64>>(&mut conn));
        match flatten(reply.await) {
            Ok(reply) if reply.len() == 2 => {
                s.set_rate(reply[1] as f64 / 1000.0);
                let wait = Duration::from_micros(u64::try_from(reply[0]).unwrap_or(0));
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            Ok(reply) => {
                s.fall_back(generation, &format!("unexpected script reply {reply:?}"));
                s.fallback.acquire().await;
            }
            Err(error) => {
                s.fall_back(generation, &error);
                s.fallback.acquire().await;
            }
        }
    }
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connection(&self) -> Option<(u64, ConnectionManager)> {
        let link = self.link();
        match (&link.mode, &link.conn) {
            (Mode::Redis, Some(conn)) => Some((link.generation, conn.clone())),
            _ => None,
        }
    }

    fn set_rate(&self, rate: f64) {
        let mut view = self.view();
        if (view.rate - rate).abs() > 1e-9 {
            view.rate = rate;
            metrics::gauge!("cxrel_store_rate_limit_rps").set(rate);
        }
    }

    /// A call on connection `generation` failed: use the local budget until Redis answers again.
    fn fall_back(self: &Arc<Self>, generation: u64, error: &str) {
        {
            let mut link = self.link();
            if link.generation != generation || link.mode == Mode::Fallback {
                return;
            }
            let was = link.mode;
            link.mode = Mode::Fallback;
            link.conn = None;
            if was == Mode::Redis {
                tracing::warn!(
                    redis = %self.redacted_url,
                    error,
                    fallback_rps = self.fallback_rps,
                    "redis rate budget unreachable: using a local budget of \
                     requests_per_second / replicas_hint until it answers again"
                );
            }
        }
        metrics::gauge!("cxrel_store_rate_limit_rps").set(self.fallback.effective_rate());
        start_probe(self);
    }

    /// Runs one non-acquire script call in the background; `on_reply` gets the integers.
    fn spawn_call(
        self: &Arc<Self>,
        args: Vec<String>,
        on_reply: impl FnOnce(&Arc<Shared>, Vec<i64>) + Send + 'static,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some((generation, mut conn)) = self.connection() else {
            return;
        };
        let shared = self.clone();
        runtime.spawn(async move {
            let mut call = shared.script.prepare_invoke();
            call.key(&shared.key);
            for arg in &args {
                call.arg(arg);
            }
            let reply =
                tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<Vec<i64>>(&mut conn));
            match flatten(reply.await) {
                Ok(reply) => on_reply(&shared, reply),
                Err(error) => shared.fall_back(generation, &error),
            }
        });
    }

    fn common_args(&self, op: &str) -> Vec<String> {
        vec![
            op.to_owned(),
            self.max_rate.to_string(),
            self.burst.to_string(),
            KEY_TTL_MS.to_string(),
        ]
    }
}

/// Starts the reconnect loop unless one runs already. It holds only a weak reference, so it
/// ends with the budget.
fn start_probe(shared: &Arc<Shared>) {
    if shared.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        shared.probing.store(false, Ordering::Release);
        return;
    };
    let weak = Arc::downgrade(shared);
    runtime.spawn(probe(weak));
}

async fn probe(weak: Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        match connect(&shared.client, &shared.script, &shared.key).await {
            Ok(conn) => {
                let was = {
                    let mut link = shared.link();
                    let was = link.mode;
                    link.mode = Mode::Redis;
                    link.conn = Some(conn);
                    link.generation += 1;
                    was
                };
                shared.probing.store(false, Ordering::Release);
                metrics::gauge!("cxrel_store_rate_limit_rps").set(shared.view().rate);
                if was == Mode::Fallback {
                    tracing::info!(
                        redis = %shared.redacted_url,
                        key = %shared.key,
                        "redis rate budget answers again: sharing the budget"
                    );
                }
                return;
            }
            Err(error) => {
                let was = {
                    let mut link = shared.link();
                    std::mem::replace(&mut link.mode, Mode::Fallback)
                };
                if was == Mode::Connecting {
                    tracing::warn!(
                        redis = %shared.redacted_url,
                        error,
                        fallback_rps = shared.fallback_rps,
                        "redis rate budget unreachable at start: using a local budget of \
                         requests_per_second / replicas_hint until it answers"
                    );
                }
            }
        }
        drop(shared);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One connection, with the script loaded so EVALSHA finds it and the key checked: a key holding
/// something else than the budget hash would fail every call, so it counts as not connected
/// (the probe keeps the local fallback instead of flapping between the two).
async fn connect(
    client: &redis::Client,
    script: &redis::Script,
    key: &str,
) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    let attempt = async {
        let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        script.prepare_invoke().load_async(&mut conn).await?;
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>((conn, kind))
    };
    let (conn, kind) = flatten(tokio::time::timeout(CALL_TIMEOUT * 2, attempt).await)?;
    match kind.as_str() {
        "none" | "hash" => Ok(conn),
        other => Err(format!(
            "key {key} holds a {other}, not the budget hash: choose another [rate_limit].redis_key"
        )),
    }
}

/// A timed-out or failed Redis call as a loggable message (redis errors never carry the URL).
fn flatten<T>(
    result: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
) -> Result<T, String> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The `/readyz` detail for a mode.
fn describe_mode(mode: Mode, key: &str, shared_rate: f64, fallback_rps: u32) -> String {
    match mode {
        Mode::Redis => format!("redis shared budget {key}: {shared_rate:.0} rps"),
        Mode::Connecting => format!("connecting to redis; local fallback {fallback_rps} rps"),
        Mode::Fallback => format!("redis unreachable; local fallback {fallback_rps} rps"),
    }
}

impl RateBudget for RedisBudget {
    fn acquire(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.acquire_inner())
    }

    fn on_throttled(&self, retry_after: Option<Duration>) {
        let s = &self.shared;
        if s.connection().is_none() {
            return s.fallback.on_throttled(retry_after);
        }
        metrics::counter!("cxrel_store_throttled_total").increment(1);
        let now = Instant::now();
        let p = &s.params;
        {
            // Pause this process at once; the script's answer sets the shared cool-down.
            let mut view = s.view();
            let pause = retry_after.unwrap_or(p.cool_down_min).min(p.cool_down_max);
            view.cool_until = view.cool_until.max(now + pause);
            if now < view.window_until {
                return;
            }
            view.window_until = now + p.cool_down_min;
        }
        let retry_us = retry_after.map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut args = s.common_args("throttle");
        args.extend([
            retry_us.to_string(),
            p.decrease_factor.to_string(),
            p.min_rate.to_string(),
            p.cool_down_min.as_micros().to_string(),
            p.cool_down_max.as_micros().to_string(),
        ]);
        s.spawn_call(args, move |shared, reply| {
            let [decreased, rate_milli, cool_left] = reply[..] else {
                return;
            };
            let rate = rate_milli as f64 / 1000.0;
            let cool_left = Duration::from_micros(u64::try_from(cool_left).unwrap_or(0));
            let old = {
                let mut view = shared.view();
                let now = Instant::now();
                view.cool_until = view.cool_until.max(now + cool_left);
                view.window_until = view.window_until.max(now + cool_left);
                view.rate
            };
            shared.set_rate(rate);
            if decreased == 1 {
                tracing::warn!(
                    from_rps = format_args!("{old:.1}"),
                    to_rps = format_args!("{rate:.1}"),
                    cool_down_ms = cool_left.as_millis() as u64,
                    retry_after_s = retry_after.map(|d| d.as_secs_f64()),
                    "data store throttled (429): cooling down and lowering the shared request rate"
                );
            }
        });
    }

    fn on_success(&self) {
        let s = &self.shared;
        if s.connection().is_none() {
            return s.fallback.on_success();
        }
        let now = Instant::now();
        {
            let mut view = s.view();
            if view.rate >= s.max_rate
                || now < view.cool_until
                || now.saturating_duration_since(view.last_increase_ask)
                    < s.params.increase_interval
            {
                return;
            }
            view.last_increase_ask = now;
        }
        let p = &s.params;
        let step = p.increase_per_second * p.increase_interval.as_secs_f64();
        let mut args = s.common_args("increase");
        args.extend([
            step.to_string(),
            p.increase_interval.as_micros().to_string(),
            p.cool_down_max.as_micros().to_string(),
        ]);
        s.spawn_call(args, |shared, reply| {
            if let [rate_milli] = reply[..] {
                shared.set_rate(rate_milli as f64 / 1000.0);
            }
        });
    }

    fn effective_rate(&self) -> f64 {
        let s = &self.shared;
        match s.link().mode {
            Mode::Redis => s.view().rate,
            Mode::Connecting | Mode::Fallback => s.fallback.effective_rate(),
        }
    }

    fn describe(&self) -> String {
        let s = &self.shared;
        let mode = s.link().mode;
        describe_mode(mode, &s.key, s.view().rate, s.fallback_rps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_share_divides_the_rate_by_the_replicas_and_is_at_least_one() {
        assert_eq!(fallback_share(100, 3), 33);
        assert_eq!(fallback_share(100, 1), 100);
        assert_eq!(fallback_share(2, 5), 1);
        assert_eq!(fallback_share(100, 0), 100);
    }

    #[test]
    fn the_default_key_names_the_prefix_and_the_api() {
        assert_eq!(
            default_key("cxrel", "https://API.example.com/"),
            "cxrel:rate_budget:https://api.example.com"
        );
    }

    #[test]
    fn the_readiness_detail_names_the_mode_and_rate() {
        assert_eq!(
            describe_mode(Mode::Fallback, "k", 100.0, 33),
            "redis unreachable; local fallback 33 rps"
        );
        assert_eq!(
            describe_mode(Mode::Redis, "k", 70.0, 33),
            "redis shared budget k: 70 rps"
        );
    }

    #[test]
    fn a_url_that_is_not_a_redis_url_is_refused_without_echoing_its_password() {
        let err = RedisBudget::new(RedisBudgetConfig {
            url: Secret::new("http://user:hunter2@example.com"),
            key: "k".into(),
            requests_per_second: 10,
            burst: 1,
            replicas_hint: 1,
        })
        .err()
        .expect("refused");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("rate_limit.redis_url"), "{err}");
    }

    #[test]
    fn outside_a_runtime_the_budget_starts_on_the_local_fallback() {
        let budget = RedisBudget::new(RedisBudgetConfig {
            url: Secret::new("redis://127.0.0.1:1"),
            key: "k".into(),
            requests_per_second: 90,
            burst: 1,
            replicas_hint: 3,
        })
        .expect("valid url");
        assert!(!budget.is_shared());
        assert_eq!(budget.effective_rate(), 30.0);
        assert_eq!(
            budget.describe(),
            "connecting to redis; local fallback 30 rps"
        );
    }
}
