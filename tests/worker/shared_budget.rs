//! Three worker processes share one Redis rate budget: three deployments (prefixes) of one tenant
//! together stay within the data store's limit, and three replicas of one deployment (one active,
//! two standing by) lose no job when one is killed mid-drain.

use std::time::{Duration, Instant};

use cxrel::amqp::Publisher;
use cxrel::settings::RateLimitBackend;
use serde_json::{Value, json};

use crate::helpers::broker;
use crate::helpers::emulator::{self, EmulatorProcess};
use crate::helpers::workers::pairs::{assert_pairs_stored, completed, emulator_with, pair_jobs};
use crate::helpers::workers::{EventTap, QUICK_BACKOFF, WorkerProcess, publish_jobs, test_config};

/// One worker per prefix of `prefixes` (three), all sharing the Redis budget at `key`.
fn spawn_three(
    emu: &EmulatorProcess,
    prefixes: &[String],
    key: &str,
    rps: u32,
    burst: u32,
) -> Vec<WorkerProcess> {
    prefixes
        .iter()
        .map(|prefix| {
            let config = test_config(&emu.base, prefix)
                .rate(rps, burst)
                .rate_backend(RateLimitBackend::Redis, 3)
                .redis_key(key)
                .store_retry(5, QUICK_BACKOFF, Duration::from_secs(20));
            WorkerProcess::spawn(&config)
        })
        .collect()
}

/// Waits until each worker is ready with `/readyz` budget detail starting with `detail`.
async fn wait_budget(workers: &[WorkerProcess], want: &str) {
    let client = reqwest::Client::new();
    for worker in workers {
        worker.wait_ready(Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = emulator::fetch_json(client.get(format!("{}/readyz", worker.http))).await;
            let detail = body["checks"]["rate_budget"]["detail"]
                .as_str()
                .unwrap_or("");
            if detail.starts_with(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "budget detail not {want:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn budget_key(test: &str) -> String {
    format!("cxrel-test:{test}:{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn three_workers_sharing_one_budget_stay_within_the_store_limit() {
    let _measurement = crate::helpers::measurement("worker::shared_budget").await;
    const JOBS: usize = 3000;
    let emu = emulator_with(2 * JOBS).await;
    // The store's limit: 100 rps with a small burst, as a real tenant limit would be.
    emu.set_faults(json!({"rate_limit": {"requests_per_second": 100, "burst": 10}}))
        .await;
    // Three deployments of one tenant: each has its own jobs queue (and one active worker).
    let prefixes: Vec<String> = (0..3)
        .map(|i| broker::unique_prefix(&format!("sharedbudget{i}")))
        .collect();
    let topologies: Vec<_> = prefixes
        .iter()
        .map(|p| broker::topology(p, &[200, 400, 800]))
        .collect();
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    for topology in &topologies {
        cxrel::amqp::topology::declare(&channel, topology)
            .await
            .expect("declare");
    }
    let publisher = Publisher::open(&conn).await.unwrap();
    let workers = spawn_three(&emu, &prefixes, &budget_key("limit"), 100, 5);
    wait_budget(&workers, "redis shared budget").await;

    let started = Instant::now();
    let jobs = pair_jobs("shared", JOBS);
    for (i, topology) in topologies.iter().enumerate() {
        let share: Vec<Value> = jobs.iter().skip(i).step_by(3).cloned().collect();
        publish_jobs(&publisher, topology, &share).await;
    }
    // Progress from the store's side: the events tap lags far behind 100 jobs/s in a debug build.
    let deadline = started + Duration::from_secs(120);
    let stats = loop {
        let stats = emu.stats().await;
        if stats["patch_count"].as_u64() >= Some(JOBS as u64) || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = started.elapsed();
    emu.set_faults(json!({"rate_limit": null})).await;
    assert_pairs_stored(&emu, JOBS).await;

    let total = stats["requests_total"].as_u64().unwrap_or(0);
    let throttled = stats["throttled_count"].as_u64().unwrap_or(0);
    let peak = stats["max_requests_in_1s"].as_u64().unwrap_or(0);
    eprintln!(
        "shared budget: {JOBS} jobs in {took:.1?}; requests {total}, 429s {throttled} ({:.2}%), \
         peak 1-s count {peak}, patches {}",
        100.0 * throttled as f64 / total.max(1) as f64,
        stats["patch_count"]
    );
    // One PATCH per job: none applied twice.
    assert_eq!(stats["patch_count"], JOBS, "{stats}");
    assert!(
        throttled * 100 <= total,
        "429s above 1%: {throttled} of {total}"
    );
    assert!(peak <= 110, "peak 1-s count {peak}");
    // The budget was shared by three workers that all took part, not held by one of them.
    for worker in &workers {
        let metrics = worker.metrics().await;
        let applied = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cxrel_operations_total{outcome=\"applied\"}"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(applied > 0.0, "worker {} applied nothing", worker.http);
    }
    for topology in &topologies {
        broker::assert_no_dead_letters(&channel, topology).await;
    }
    drop(workers);
    for topology in &topologies {
        broker::teardown(&channel, topology).await;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_drain_loses_no_job() {
    const JOBS: usize = 1000;
    let emu = emulator_with(2 * JOBS).await;
    let prefix = broker::unique_prefix("sharedkill");
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let replicas = vec![prefix.clone(), prefix.clone(), prefix.clone()];
    let mut workers = spawn_three(&emu, &replicas, &budget_key("kill"), 200, 10);
    wait_budget(&workers, "redis shared budget").await;

    publish_jobs(&publisher, &topology, &pair_jobs("killed", JOBS)).await;
    assert!(
        tap.until(Duration::from_secs(60), |e| completed(e).len() >= 150)
            .await,
        "jobs started completing"
    );
    workers[0].signal("KILL");
    let mut victim = workers.remove(0);
    let code = tokio::task::spawn_blocking(move || victim.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(code.is_some(), "the killed worker exited");
    let at_kill = completed(&tap.events).len();
    assert!(
        at_kill < JOBS,
        "killed before the queue drained ({at_kill})"
    );

    let done = tap
        .until(Duration::from_secs(90), |e| completed(e).len() == JOBS)
        .await;
    assert!(done, "{} of {JOBS} completed", completed(&tap.events).len());
    assert_pairs_stored(&emu, JOBS).await;
    broker::assert_no_dead_letters(&channel, &topology).await;
    drop(workers);
    broker::teardown(&channel, &topology).await;
}

#[tokio::test]
async fn with_redis_unreachable_a_worker_stays_ready_on_its_share_and_applies_jobs() {
    const JOBS: usize = 20;
    let emu = emulator_with(2 * JOBS).await;
    let prefix = broker::unique_prefix("sharedfallback");
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let config = test_config(&emu.base, &prefix)
        .rate(100, 5)
        .rate_backend(RateLimitBackend::Redis, 3)
        .redis_key(&budget_key("fallback"))
        .redis_url("redis://127.0.0.1:1");
    let worker = WorkerProcess::spawn(&config);
    wait_budget(
        std::slice::from_ref(&worker),
        "redis unreachable; local fallback 33 rps",
    )
    .await;
    publish_jobs(&publisher, &topology, &pair_jobs("fallback", JOBS)).await;
    let done = tap
        .until(Duration::from_secs(30), |e| completed(e).len() == JOBS)
        .await;
    assert!(done, "{} of {JOBS} completed", completed(&tap.events).len());
    assert_pairs_stored(&emu, JOBS).await;
    drop(worker);
    broker::teardown(&channel, &topology).await;
}
