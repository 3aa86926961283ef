//! The tenant-wide rate budget shared by every replica through one Redis hash, with a local
//! fallback while Redis cannot be reached.
//!
//! One Lua script (`budget.lua`, run with EVALSHA) holds the whole algorithm so every decision is
//! atomic on the server and timed by the server's clock; it is the arithmetic of
//! [`Cubic`](super::cubic::Cubic) and [`Pacer`](super::pacer::Pacer) on shared state:
//! - `acquire`: a GCRA reservation at the shared rate of that moment (the CUBIC curve is a function
//!   of time, so there is no separate increase call); the reply says how long to sleep. It also
//!   carries this process's success and 429 counts since its last call (for the episode estimate
//!   and the trailing second), and the successes of requests it sent after it saw the newest cut
//!   (which end a closed run).
//! - `throttle`: a 429 seen by any replica, with the age of its request. A request sent before the
//!   last cut (by any replica) is part of a signal already taken; while nothing sent since the cut
//!   has been admitted the server is closed and every replica probes; otherwise the shared rate
//!   is cut for every replica at once and the reservations at the old rate are void.
//!
//! Round trips: one per request (`acquire`), plus one per 429 that is not obviously part of a
//! signal this process has already seen cut.
//!
//! When Redis does not answer (at start or on any call), requests go through a [`LocalBudget`] of
//! `requests_per_second / replicas_hint` (at least 1); a warning is logged once per transition and
//! a background task reconnects every [`PROBE_INTERVAL`], switching back once Redis answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::cubic::CubicParams;
use super::limiter::{
    LocalBudget, RateBudget, come_back_jitter, describe_rate, log_closed, log_cut, params_for,
    set_rate_gauge,
};
use super::pacer::HORIZON;
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
    /// The newest cut generation seen: a reservation of an older one is void.
    generation: i64,
    /// When this process learned of the newest cut: requests sent before it need no report.
    cut_seen: Option<Instant>,
    /// Successes of requests sent after `cut_seen`, not yet passed to the script (they tell it
    /// the server is open again after a closed run).
    after_cut: u64,
}

struct Shared {
    client: redis::Client,
    redacted_url: String,
    key: String,
    /// 0 = not configured (the script's slow start).
    max_rate: u32,
    burst: u32,
    params: CubicParams,
    /// Non-429 answers and 429s not yet passed to the script.
    unreported: AtomicU64,
    unreported_refused: AtomicU64,
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

/// Each replica's share when the budget cannot be shared: `rps / replicas`, at least 1; 0 (not
/// configured) stays 0: each replica discovers the limit on its own.
pub fn fallback_share(requests_per_second: u32, replicas_hint: u32) -> u32 {
    match requests_per_second {
        0 => 0,
        rps => (rps / replicas_hint.max(1)).max(1),
    }
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
        let params = params_for(config.requests_per_second);
        let fallback_rps = fallback_share(config.requests_per_second, config.replicas_hint);
        let shared = Arc::new(Shared {
            client,
            redacted_url,
            key: config.key,
            max_rate: config.requests_per_second,
            burst: config.burst.max(1),
            unreported: AtomicU64::new(0),
            unreported_refused: AtomicU64::new(0),
            script: redis::Script::new(SCRIPT),
            fallback: LocalBudget::new(fallback_rps, config.burst),
            fallback_rps,
            link: Mutex::new(Link {
                mode: Mode::Connecting,
                conn: None,
                generation: 0,
            }),
            view: Mutex::new(View {
                rate: params.max_rate.unwrap_or(params.start_rate),
                generation: 0,
                cut_seen: None,
                after_cut: 0,
            }),
            params,
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
        // Bounded: each cut seen while waiting costs one more reservation.
        let mut cuts = 0;
        while cuts < 8 {
            let Some((generation, mut conn)) = s.connection() else {
                if !s.probing.load(Ordering::Relaxed) {
                    start_probe(s);
                }
                return s.fallback.acquire().await;
            };
            let mut call = s.script.prepare_invoke();
            call.key(&s.key);
            for arg in s.common_args("acquire") {
                call.arg(arg);
            }
            let reply =
                tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<Vec<i64>>(&mut conn));
            let (wait, slot, reserved) = match flatten(reply.await) {
                Ok(reply) if reply.len() == 4 => {
                    s.seen(reply[1], reply[2]);
                    (
                        u64::try_from(reply[0]).unwrap_or(0),
                        reply[2],
                        reply[3] == 1,
                    )
                }
                Ok(reply) => {
                    s.fall_back(generation, &format!("unexpected script reply {reply:?}"));
                    return s.fallback.acquire().await;
                }
                Err(error) => {
                    s.fall_back(generation, &error);
                    return s.fallback.acquire().await;
                }
            };
            let wait = Duration::from_micros(wait);
            if !reserved {
                tokio::time::sleep(wait + come_back_jitter()).await;
                continue;
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if s.view().generation <= slot {
                return;
            }
            cuts += 1;
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

    /// A script reply's shared rate and cut generation.
    fn seen(&self, rate_milli: i64, generation: i64) {
        let rate = rate_milli as f64 / 1000.0;
        let mut view = self.view();
        if generation > view.generation {
            view.generation = generation;
            view.cut_seen = Some(Instant::now());
            view.after_cut = 0;
        }
        if (view.rate - rate).abs() > 0.5 {
            view.rate = rate;
            set_rate_gauge(rate);
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
        set_rate_gauge(self.fallback.effective_rate());
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

    /// The arguments every call passes: op, limits, unreported successes, adaptation parameters.
    fn common_args(&self, op: &str) -> Vec<String> {
        let p = &self.params;
        let successes = self.unreported.swap(0, Ordering::Relaxed);
        let refused = self.unreported_refused.swap(0, Ordering::Relaxed);
        let (generation, after_cut) = {
            let mut view = self.view();
            (view.generation, std::mem::take(&mut view.after_cut))
        };
        vec![
            op.to_owned(),
            self.max_rate.to_string(),
            self.burst.to_string(),
            KEY_TTL_MS.to_string(),
            successes.to_string(),
            refused.to_string(),
            p.beta.to_string(),
            p.recover.as_micros().to_string(),
            p.min_rate.to_string(),
            p.estimate_successes.to_string(),
            p.estimate_refused.to_string(),
            p.escalate_after.to_string(),
            p.cool_down_min.as_micros().to_string(),
            p.cool_down_max.as_micros().to_string(),
            p.start_rate.to_string(),
            p.doubling.as_micros().to_string(),
            HORIZON.as_micros().to_string(),
            p.closed_probe.as_micros().to_string(),
            generation.to_string(),
            after_cut.to_string(),
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
                set_rate_gauge(shared.view().rate);
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
    let fallback = match fallback_rps {
        0 => "discovering".to_owned(),
        rps => format!("{rps} rps"),
    };
    match mode {
        Mode::Redis => format!("redis shared budget {key}: {}", describe_rate(shared_rate)),
        Mode::Connecting => format!("connecting to redis; local fallback {fallback}"),
        Mode::Fallback => format!("redis unreachable; local fallback {fallback}"),
    }
}

impl RateBudget for RedisBudget {
    fn acquire(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.acquire_inner())
    }

    fn on_throttled(&self, sent: Instant, retry_after: Option<Duration>) {
        let s = &self.shared;
        if s.connection().is_none() {
            return s.fallback.on_throttled(sent, retry_after);
        }
        metrics::counter!("cxrel_store_throttled_total").increment(1);
        s.unreported_refused.fetch_add(1, Ordering::Relaxed);
        // Sent before a cut this process already saw: no need to ask (the script would agree).
        if s.view().cut_seen.is_some_and(|seen| sent < seen) {
            return;
        }
        let age = i64::try_from(sent.elapsed().as_micros()).unwrap_or(i64::MAX);
        let retry_us = retry_after.map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut args = s.common_args("throttle");
        args.extend([age.to_string(), retry_us.to_string()]);
        s.spawn_call(args, move |shared, reply| {
            let [cut, rate_milli, w_max_milli, pause_left, generation] = reply[..] else {
                return;
            };
            let (old, old_generation) = {
                let view = shared.view();
                (view.rate, view.generation)
            };
            shared.seen(rate_milli, generation);
            // The script answers "no cut" with a new generation only when the server is closed.
            if cut == 0 && generation > old_generation {
                log_closed(rate_milli as f64 / 1000.0);
            }
            if cut == 1 {
                let pause = u64::try_from(pause_left)
                    .ok()
                    .map(|us| Instant::now() + Duration::from_micros(us));
                let (w_max, rate) = (w_max_milli as f64 / 1000.0, rate_milli as f64 / 1000.0);
                log_cut(old, w_max, rate, pause, retry_after);
            }
        });
    }

    fn on_success(&self, sent: Instant) {
        let s = &self.shared;
        if s.connection().is_none() {
            return s.fallback.on_success(sent);
        }
        s.unreported.fetch_add(1, Ordering::Relaxed);
        let mut view = s.view();
        if view.cut_seen.is_some_and(|seen| sent >= seen) {
            view.after_cut += 1;
        }
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
        assert_eq!(fallback_share(0, 3), 0);
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
