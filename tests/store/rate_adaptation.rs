//! The rate budget's adaptation against the emulator's independent token bucket (100 req/s,
//! bucket 10) with 2–20 ms of latency jitter, over real HTTP: configured at the limit, 1.5× above
//! it, not configured at all, 1.5× above a fixed window, and two clients sharing the Redis budget.
//! Only counts and shares are
//! asserted (every PATCH succeeds, the 429 share stays within the goal); the rates reached are
//! printed, never asserted (these machines are noisy).

use std::sync::Arc;
use std::time::Instant;

use cxrel::settings::RateLimitBackend;
use cxrel::store::StoreClient;
use serde_json::json;

use crate::helpers::emulator::EmulatorProcess;
use crate::support::{client_for, create_store, ids, patch_chained, route_count};

/// Tasks sending PATCHes at once (the worker's default jobs in flight).
const TASKS: usize = 16;

/// An emulator limiting the record API with `algorithm` (`token_bucket`, `fixed_window`,
/// `sliding_window`) at 100/s (bucket 10) and jitter, and a store of records.
async fn limited_emulator(datastore: &str, algorithm: &str) -> (EmulatorProcess, Arc<Vec<String>>) {
    let emu = EmulatorProcess::spawn();
    let records = ids(TASKS * 4);
    create_store(&emu, datastore, &records).await;
    emu.set_faults(json!({
        "rate_limit": {"requests_per_second": 100.0, "burst": 10, "algorithm": algorithm},
        "latency_ms": 2,
        "latency_jitter_ms": 18,
        "retry_after": true,
    }))
    .await;
    (emu, Arc::new(records))
}

/// `patches` PATCHes from `TASKS` tasks spread over `clients`; each task chains If-Match
/// through the versions of its own four records.
async fn patch_all(
    clients: &[StoreClient],
    datastore: &str,
    records: &Arc<Vec<String>>,
    patches: usize,
) {
    for client in clients {
        // The token endpoint is not rate limited; take the token before the clock starts.
        client.tenant_id().await.unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let client = clients[task % clients.len()].clone();
        let (records, datastore) = (records.clone(), datastore.to_owned());
        let count = patches / TASKS + usize::from(task < patches % TASKS);
        tasks.spawn(async move {
            let mine = &records[task * 4..task * 4 + 4];
            patch_chained(&client, &datastore, mine, task, count).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Runs `patches` through `clients` and checks every one succeeded with at most `max_429` of
/// the requests throttled.
async fn check_run(
    label: &str,
    clients: &[StoreClient],
    emu: &EmulatorProcess,
    datastore: &str,
    records: &Arc<Vec<String>>,
    patches: usize,
    max_429: f64,
) {
    let started = Instant::now();
    patch_all(clients, datastore, records, patches).await;
    let took = started.elapsed().as_secs_f64();
    let stats = emu.stats().await;
    let requests = route_count(&stats, "PATCH", "/records/", None);
    let ok = route_count(&stats, "PATCH", "/records/", Some(200));
    let throttled = stats["throttled_count"].as_u64().unwrap();
    let share = throttled as f64 / requests as f64;
    eprintln!(
        "{label}: {patches} PATCHes in {took:.1} s ({:.1}/s), {throttled} 429s of {requests} \
         requests ({:.2}%), max {} requests in 1 s, budget now {:.1} rps",
        patches as f64 / took,
        share * 100.0,
        stats["max_requests_in_1s"],
        clients[0].budget().effective_rate(),
    );
    assert_eq!(ok, patches as u64);
    assert_eq!(stats["patch_count"], patches);
    assert!(share <= max_429, "{throttled} 429s of {requests} requests");
}

async fn local_run(label: &str, requests_per_second: u32, patches: usize, max_429: f64) {
    local_run_against("token_bucket", label, requests_per_second, patches, max_429).await;
}

async fn local_run_against(
    algorithm: &str,
    label: &str,
    requests_per_second: u32,
    patches: usize,
    max_429: f64,
) {
    let _measurement = crate::helpers::measurement("store::rate_adaptation").await;
    let datastore = format!("adapt-{requests_per_second}-{algorithm}");
    let (emu, records) = limited_emulator(&datastore, algorithm).await;
    let client = client_for(&emu, |s| {
        s.rate_limit.requests_per_second = requests_per_second;
        s.rate_limit.burst = 1;
    });
    check_run(
        label,
        &[client],
        &emu,
        &datastore,
        &records,
        patches,
        max_429,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_at_the_limit_at_most_half_a_percent_of_requests_are_throttled() {
    local_run("at the limit", 100, 1500, 0.005).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_half_again_above_the_limit_at_most_two_percent_are_throttled() {
    local_run("1.5x above", 150, 1500, 0.02).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_half_again_above_a_fixed_window_at_most_two_percent_are_throttled() {
    // A window refuses everything once its count is used up: the client probes instead of
    // cutting at every 429 (which once took it to a fifth of the limit).
    local_run_against("fixed_window", "1.5x above a fixed window", 150, 1500, 0.02).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_configured_the_client_discovers_the_limit_with_at_most_two_percent_throttled() {
    local_run("not configured", 0, 2000, 0.02).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_redis_budget_adapt_together_above_the_limit() {
    redis_run("token_bucket", "redis, 2 clients, 1.5x above", 0.02).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_redis_budget_probe_a_closed_fixed_window_together() {
    // 1.25–1.83% run alone, 4.1% once beside the other rate tests and a CI build: successes
    // reach the script on each client's next call, so a closed run ends a little later than with
    // a local budget, and a loaded machine delays those calls. The bound is loose on purpose; the
    // rule itself is checked in `redis_budget` without timing.
    let label = "redis, 2 clients, 1.5x above a fixed window";
    redis_run("fixed_window", label, 0.05).await;
}

/// Two clients sharing one Redis budget of 150/s against the emulator's `algorithm` at 100/s,
/// with at most `max_429` of the requests throttled.
async fn redis_run(algorithm: &str, label: &str, max_429: f64) {
    let _measurement = crate::helpers::measurement("store::rate_adaptation").await;
    let datastore = format!("adapt-redis-{algorithm}");
    let (emu, records) = limited_emulator(&datastore, algorithm).await;
    let key = format!("cxrel-test:adapt:{}", uuid::Uuid::new_v4());
    let clients: Vec<StoreClient> = (0..2)
        .map(|_| {
            client_for(&emu, |s| {
                s.rate_limit.backend = RateLimitBackend::Redis;
                s.rate_limit.redis_key = key.clone();
                s.rate_limit.requests_per_second = 150;
                s.rate_limit.burst = 1;
                s.rate_limit.replicas_hint = 2;
            })
        })
        .collect();
    // Wait until both budgets are on Redis, not on their local fallback.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !clients
        .iter()
        .all(|c| c.budget().describe().starts_with("redis shared budget"))
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            clients[0].budget().describe()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check_run(label, &clients, &emu, &datastore, &records, 1500, max_429).await;
}
