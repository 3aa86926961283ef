//! The shared rate budget's script against the real Redis at 127.0.0.1:6379: two budgets on one
//! key share the rate, a 429 on one slows the other, and an unreachable Redis falls back locally.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cxrel::secret::Secret;
use cxrel::store::{RateBudget, RedisBudget, RedisBudgetConfig};

const REDIS: &str = "redis://127.0.0.1:6379";

fn unique_key(test: &str) -> String {
    format!("cxrel-test:{test}:{}", uuid::Uuid::new_v4())
}

fn budget(url: &str, key: &str, rps: u32, burst: u32, replicas: u32) -> Arc<RedisBudget> {
    Arc::new(
        RedisBudget::new(RedisBudgetConfig {
            url: Secret::new(url),
            key: key.to_owned(),
            requests_per_second: rps,
            burst,
            replicas_hint: replicas,
        })
        .expect("valid url"),
    )
}

/// Waits until the budget is on Redis (the connection is made in the background).
async fn until_shared(b: &RedisBudget) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.is_shared() {
        assert!(Instant::now() < deadline, "redis budget never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Grants `budget` hands out to `tasks` concurrent callers until `until`.
fn drive(budget: Arc<RedisBudget>, tasks: usize, until: Instant) -> Arc<AtomicU32> {
    let grants = Arc::new(AtomicU32::new(0));
    for _ in 0..tasks {
        let (b, g) = (budget.clone(), grants.clone());
        tokio::spawn(async move {
            loop {
                b.acquire().await;
                if Instant::now() >= until {
                    return;
                }
                g.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_budgets_on_one_key_grant_the_rate_together() {
    let _measurement = crate::helpers::measurement("store::redis_budget").await;
    let key = unique_key("share");
    let (a, b) = (budget(REDIS, &key, 50, 5, 2), budget(REDIS, &key, 50, 5, 2));
    until_shared(&a).await;
    until_shared(&b).await;
    let until = Instant::now() + Duration::from_secs(2);
    let (ga, gb) = (drive(a.clone(), 8, until), drive(b.clone(), 8, until));
    tokio::time::sleep_until((until + Duration::from_millis(300)).into()).await;
    let (na, nb) = (ga.load(Ordering::Relaxed), gb.load(Ordering::Relaxed));
    eprintln!("granted in 2 s: {na} + {nb}");
    // 2 s at 50 rps plus a burst of 5 is 105; two separate budgets would grant about 210.
    let total = na + nb;
    assert!((70..=135).contains(&total), "granted {na} + {nb} = {total}");
    assert!(na >= 15 && nb >= 15, "both share: {na} / {nb}");
    assert!(a.is_shared() && b.is_shared(), "no fallback happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_on_one_budget_lowers_the_rate_of_the_other_once_per_signal() {
    let _measurement = crate::helpers::measurement("store::redis_budget").await;
    let key = unique_key("throttle");
    let (a, b) = (budget(REDIS, &key, 50, 5, 2), budget(REDIS, &key, 50, 5, 2));
    until_shared(&a).await;
    until_shared(&b).await;
    b.acquire().await;
    assert_eq!(b.effective_rate(), 50.0);
    let sent_before = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.on_throttled(Instant::now(), Some(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // b's 429 for a request sent before a's cut is the same signal: no second cut.
    b.on_throttled(sent_before, Some(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // An isolated 429 cuts a little (×0.9) and does not pause for Retry-After.
    let start = Instant::now();
    b.acquire().await;
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "waited {:?}",
        start.elapsed()
    );
    let rate = b.effective_rate();
    assert!((44.0..=46.5).contains(&rate), "{rate}");
    a.acquire().await;
    let rate = a.effective_rate();
    assert!((44.0..=46.5).contains(&rate), "{rate}");
    assert!(
        b.describe().contains("redis shared budget"),
        "{}",
        b.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_everything_since_the_cut_is_probed_by_every_replica_not_cut_again() {
    let _measurement = crate::helpers::measurement("store::redis_budget").await;
    let key = unique_key("closed");
    let (a, b) = (
        budget(REDIS, &key, 150, 1, 2),
        budget(REDIS, &key, 150, 1, 2),
    );
    until_shared(&a).await;
    until_shared(&b).await;
    a.on_throttled(Instant::now(), Some(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.acquire().await;
    assert!(
        (134.0..=140.0).contains(&b.effective_rate()),
        "{}",
        b.effective_rate()
    );
    // The curve climbs back from 135. A request b sent after the cut is refused too, and nothing
    // sent since was admitted: a window used up. No second cut (that would be 0.81 × 137 = 111);
    // every replica probes, one request per 10 ms (100/s).
    b.on_throttled(Instant::now(), Some(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.acquire().await;
    assert!(
        (99.0..=101.0).contains(&a.effective_rate()),
        "{}",
        a.effective_rate()
    );
    // a's probe, sent after it saw the probing generation, gets through: open again, back on the
    // curve for everyone.
    let probe_sent = Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    a.on_success(probe_sent);
    a.acquire().await;
    b.acquire().await;
    assert!(b.effective_rate() > 134.0, "{}", b.effective_rate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_back_at_the_ceiling_after_a_small_step_is_again_a_small_step() {
    let _measurement = crate::helpers::measurement("store::redis_budget").await;
    let key = unique_key("again");
    let (a, b) = (
        budget(REDIS, &key, 100, 1, 2),
        budget(REDIS, &key, 100, 1, 2),
    );
    until_shared(&a).await;
    until_shared(&b).await;
    // Refused at 100, then (back at 100 after K, one request admitted since) refused again:
    // the limit sits just below, w_max 99 and a cut to 97% of it.
    a.on_throttled(Instant::now(), None);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rate = refused_after_a_success(&b).await;
    assert!((95.5..=97.0).contains(&rate), "{rate}");
    // Probing past 99 reaches the configured 100 (1.01% above) within about three seconds and
    // is refused there: the same limit, again a 3% step, not a 10% cut to 90.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    a.acquire().await;
    assert_eq!(a.effective_rate(), 100.0);
    let rate = refused_after_a_success(&a).await;
    assert!((95.5..=97.0).contains(&rate), "{rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_probe_is_admitted_the_risen_rate_is_not_held_by_the_probes_empty_bucket() {
    let _measurement = crate::helpers::measurement("store::redis_budget").await;
    let key = unique_key("penalty");
    let b = budget(REDIS, &key, 150, 10, 1);
    until_shared(&b).await;
    b.acquire().await;
    let ra = Some(Duration::from_secs(1));
    b.on_throttled(Instant::now(), ra);
    // Everything refused for over a second (a penalty box): probes then go as Retry-After says,
    // 1 s apart, and a bucket of 10 at 1 rps is empty for 10 s.
    let closed = Instant::now();
    while closed.elapsed() < Duration::from_millis(1200) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.on_throttled(Instant::now(), ra);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.acquire().await;
    assert!(b.effective_rate() <= 1.0, "{}", b.effective_rate());
    let probe_sent = Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    b.on_success(probe_sent);
    // The success reaches the script with the next acquire; then six requests at ~140 rps
    // take milliseconds. Before, the probe's bucket held them ~9 s.
    let start = Instant::now();
    for _ in 0..6 {
        b.acquire().await;
    }
    // A penalty box, not a window: the curve resumes below where it closed, 90% of 93% of 150
    // (nothing admitted before it said more), as the local budget does.
    let rate = b.effective_rate();
    assert!((123.5..=128.5).contains(&rate), "{rate}");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// One request admitted, then one refused, both sent now: the shared rate after that signal.
async fn refused_after_a_success(budget: &RedisBudget) -> f64 {
    // Acquired first: a replica reports successes of the newest cut it has seen.
    budget.acquire().await;
    let sent = Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    budget.on_success(sent);
    budget.acquire().await;
    budget.on_throttled(Instant::now(), None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    budget.acquire().await;
    budget.effective_rate()
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_the_replicas_share() {
    let b = budget("redis://127.0.0.1:1", &unique_key("down"), 100, 1, 3);
    b.acquire().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.describe().starts_with("connecting") {
        assert!(Instant::now() < deadline, "{}", b.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.describe(), "redis unreachable; local fallback 33 rps");
    assert_eq!(b.effective_rate(), 33.0);
    assert!(!b.is_shared());
    // Grants at the fallback rate: 11 more at 33 rps take about 300 ms.
    let start = Instant::now();
    for _ in 0..11 {
        b.acquire().await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_key_holding_something_else_keeps_the_local_fallback_instead_of_flapping() {
    let key = unique_key("wrongtype");
    let set = std::process::Command::new("redis-cli")
        .args(["-u", REDIS, "SET", &key, "not a hash"])
        .output()
        .expect("redis-cli");
    assert!(set.status.success());
    let b = budget(REDIS, &key, 100, 1, 4);
    for _ in 0..5 {
        b.acquire().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_shared(), "{}", b.describe());
    assert_eq!(b.effective_rate(), 25.0);
    let _ = std::process::Command::new("redis-cli")
        .args(["-u", REDIS, "DEL", &key])
        .output();
}

/// A private redis-server on `port`, killed on drop.
struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        Self(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_and_the_budget_is_shared_again_once_redis_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = OwnRedis::start(port);
    let b = budget(&url, &unique_key("outage"), 100, 5, 4);
    until_shared(&b).await;

    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.is_shared() {
        assert!(
            Instant::now() < deadline,
            "never fell back: {}",
            b.describe()
        );
        b.acquire().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.describe(), "redis unreachable; local fallback 25 rps");
    assert_eq!(b.effective_rate(), 25.0);

    let _server = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.is_shared() {
        assert!(
            Instant::now() < deadline,
            "never back on redis: {}",
            b.describe()
        );
        b.acquire().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.acquire().await;
    assert_eq!(b.effective_rate(), 100.0);
    assert!(
        b.describe().starts_with("redis shared budget"),
        "{}",
        b.describe()
    );
}
