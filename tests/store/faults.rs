//! The data-store client under the emulator's faults: a server rate limit below the configured
//! one (with and without Retry-After), random and total 5xx, and timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxrel::error::ErrorClass;
use cxrel::store::{StoreClient, StoreError};
use serde_json::json;

use crate::helpers::emulator::EmulatorProcess;
use crate::support;
use crate::support::{client_for, create_store, ids, name_fields, route_count};

/// Acceptance: emulator limit 100 rps, client set to 150 rps, 2,000 PATCHes from 50 tasks:
/// all succeed and 429s stay ≤ 2% of the requests.
async fn patches_settle_below_the_server_limit(retry_after: bool) {
    let _measurement = crate::helpers::measurement("store::faults").await;
    let emu = EmulatorProcess::spawn();
    let datastore = format!("faults-limit-{retry_after}");
    let records = ids(200);
    create_store(&emu, &datastore, &records).await;
    emu.set_faults(json!({
        "rate_limit": {"requests_per_second": 100.0, "burst": 10},
        "retry_after": retry_after,
    }))
    .await;
    let client = client_for(&emu, |s| {
        s.rate_limit.requests_per_second = 150;
        s.rate_limit.burst = 10;
    });
    // The token endpoint is not rate limited; take the token before the clock starts.
    client.tenant_id().await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let records = Arc::new(records);
    for task in 0..50 {
        let client = client.clone();
        let records = records.clone();
        let datastore = datastore.clone();
        tasks.spawn(async move {
            // Each task owns 4 records.
            let mine = &records[task * 4..task * 4 + 4];
            support::patch_chained(&client, &datastore, mine, task, 40).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let took = started.elapsed();
    let stats = emu.stats().await;
    let patches = route_count(&stats, "PATCH", "/records/", None);
    let ok = route_count(&stats, "PATCH", "/records/", Some(200));
    let throttled = stats["throttled_count"].as_u64().unwrap();
    let ratio = throttled as f64 / patches as f64;
    eprintln!(
        "rate limit (retry_after={retry_after}): 2000 PATCHes in {took:?} ({:.1}/s), {patches} requests, \
         {throttled} 429s ({:.2}%), max {} requests in 1 s, final client rate {:.1} rps",
        2000.0 / took.as_secs_f64(),
        ratio * 100.0,
        stats["max_requests_in_1s"],
        client.budget().effective_rate()
    );
    assert_eq!(ok, 2000);
    assert_eq!(stats["patch_count"], 2000);
    assert!(ratio <= 0.02, "{throttled} 429s of {patches} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patches_at_150_rps_settle_below_a_100_rps_server_limit_with_retry_after() {
    patches_settle_below_the_server_limit(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patches_at_150_rps_settle_below_a_100_rps_server_limit_without_retry_after() {
    patches_settle_below_the_server_limit(false).await;
}

fn fast_retries(emu: &EmulatorProcess, max_attempts: u32) -> StoreClient {
    client_for(emu, |s| {
        s.rate_limit.requests_per_second = 100_000;
        s.rate_limit.burst = 1000;
        s.retry.max_attempts = max_attempts;
        s.retry.min_backoff = Duration::from_millis(5);
        s.retry.max_backoff = Duration::from_millis(50);
        s.retry.max_elapsed = Duration::from_secs(10);
    })
}

/// Acceptance: with 20% injected 5xx every read succeeds within the retry budget. A call fails
/// only if all its attempts draw a 5xx: 0.2^n. With the default 5 attempts that is 3.2e-4 per
/// call (27% that one of these 1,000 calls fails, and then the worker's hold queue retries it);
/// with 8 attempts 2.6e-6 per call (0.3% for the whole test), so the test uses 8. A PATCH's 5xx
/// is not retried in the client (its outcome is unknown; the apply stage reads the parent back,
/// see `tests/worker/paths.rs`): here each one is answered as the apply stage would, by reading
/// the record and sending the PATCH again when its version did not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_percent_server_errors_are_absorbed_by_retries() {
    let emu = EmulatorProcess::spawn();
    let records = ids(50);
    create_store(&emu, "faults-5xx", &records).await;
    emu.set_faults(json!({"error_ratio": 0.2})).await;
    let client = fast_retries(&emu, 8);
    let mut tasks = tokio::task::JoinSet::new();
    for id in records {
        let client = client.clone();
        tasks.spawn(async move {
            let mut patch_5xx = 0;
            for i in 0..10 {
                let fields = name_fields(&format!("n{i}"));
                loop {
                    let r = client.get_record("faults-5xx", &id).await.expect("get");
                    match client
                        .patch_record("faults-5xx", &id, &fields, Some(r.version))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Server { attempts: 1, .. }) => patch_5xx += 1,
                        Err(e) => panic!("patch: {e:?}"),
                    }
                }
            }
            patch_5xx
        });
    }
    let mut patch_5xx = 0;
    while let Some(done) = tasks.join_next().await {
        patch_5xx += done.unwrap();
    }
    let stats = emu.stats().await;
    let injected = stats["injected_error_count"].as_u64().unwrap();
    let api = route_count(&stats, "GET", "/records/", None)
        + route_count(&stats, "PATCH", "/records/", None);
    eprintln!(
        "20% 5xx: {api} requests, {injected} injected 5xx, {patch_5xx} of them to PATCHes returned at once"
    );
    assert_eq!(stats["patch_count"], 500);
    assert!(injected > 100, "faults were injected: {injected}");
    assert!(
        patch_5xx > 20,
        "PATCH 5xx returned to the caller: {patch_5xx}"
    );
}

/// Acceptance: with 100% 5xx a call fails with a Transient error after `max_attempts`.
#[tokio::test]
async fn persistent_server_errors_fail_transient_after_the_configured_attempts() {
    let emu = EmulatorProcess::spawn();
    let records = ids(1);
    create_store(&emu, "faults-down", &records).await;
    emu.set_faults(json!({"error_ratio": 1.0})).await;
    let client = fast_retries(&emu, 5);
    let started = Instant::now();
    let err = client
        .get_record("faults-down", &records[0])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Server { attempts: 5, .. }),
        "{err:?}"
    );
    assert_eq!(
        (err.code(), err.class()),
        ("server_error", ErrorClass::Transient)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "GET", "/records/", None), 5);
    // A write of unknown outcome is not sent again blindly: one request, the error at once.
    let err = client
        .patch_record("faults-down", &records[0], &name_fields("x"), Some(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Server { attempts: 1, .. }),
        "{err:?}"
    );
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "PATCH", "/records/", None), 1);
}

/// During an outage, tasks waiting on one schema fetch share its failure: one fetch's attempts,
/// not one fetch per waiting task made one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_waiting_on_a_failing_schema_fetch_share_its_error() {
    let emu = EmulatorProcess::spawn();
    create_store(&emu, "faults-schema", &ids(1)).await;
    emu.set_faults(json!({"error_ratio": 1.0})).await;
    let client = fast_retries(&emu, 3);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        tasks.spawn(async move { client.schema("faults-schema").await });
    }
    while let Some(done) = tasks.join_next().await {
        let err = done.unwrap().unwrap_err();
        assert_eq!(err.code(), "server_error", "{err}");
    }
    let stats = emu.stats().await;
    let fetched = route_count(&stats, "GET", "/schema", None);
    // The first fetch's 3 attempts; a task that asked after it failed may start one more.
    assert!(
        fetched <= 6,
        "{fetched} schema requests for 20 waiting tasks"
    );
}

#[tokio::test]
async fn slow_answers_time_out_as_transient_errors_after_the_configured_attempts() {
    let emu = EmulatorProcess::spawn();
    let records = ids(1);
    create_store(&emu, "faults-slow", &records).await;
    emu.set_faults(json!({"latency_ms": 1000})).await;
    let client = client_for(&emu, |s| {
        s.cxone.request_timeout = Duration::from_millis(100);
        s.retry.max_attempts = 3;
        s.retry.min_backoff = Duration::from_millis(5);
        s.retry.max_backoff = Duration::from_millis(10);
    });
    let err = client
        .get_record("faults-slow", &records[0])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Timeout { attempts: 3 }),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn an_unreachable_store_is_a_transient_connection_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = support::default_settings();
    s.cxone.api_base = format!("http://127.0.0.1:{port}");
    s.cxone.auth.issuer = s.cxone.api_base.clone();
    s.retry.max_attempts = 2;
    s.retry.min_backoff = Duration::from_millis(5);
    let client = StoreClient::from_settings(&s).unwrap();
    let err = client.schema("x").await.unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        ("connection", ErrorClass::Transient)
    );
}
