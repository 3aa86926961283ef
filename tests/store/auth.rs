//! Data-store client auth against the emulator (SPEC §4): both modes, discovery of the API base
//! from the tenant id, single-flight refresh under concurrency, the 401 refresh-once rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cxrel::error::ErrorClass;
use cxrel::secret::Secret;
use cxrel::settings::{AuthMode, ClientAuth};
use cxrel::store::StoreError;
use serde_json::json;

use crate::helpers::emulator::{EmulatorProcess, TENANT_ID};
use crate::support;
use crate::support::{client_for, create_store, ids, route_count};

#[tokio::test]
async fn cxone_mode_discovers_the_api_base_through_the_tenant_id() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "auth-discovery", &ids).await;
    let client = client_for(&emu, |s| {
        s.cxone.api_base = String::new();
        s.cxone.auth.mode = AuthMode::Cxone;
    });
    let record = client.get_record("auth-discovery", &ids[0]).await.unwrap();
    assert_eq!(record.id, ids[0]);
    assert_eq!(client.tenant_id().await.unwrap(), TENANT_ID);
    assert_eq!(client.api_base().await.unwrap(), emu.base);
    let stats = emu.stats().await;
    assert_eq!(stats["token_count"], 1);
    assert_eq!(
        route_count(&stats, "GET", "openid-configuration", Some(200)),
        1
    );
    assert_eq!(
        route_count(&stats, "GET", "cxone-configuration", Some(200)),
        1
    );
}

#[tokio::test]
async fn client_credentials_mode_uses_token_url_or_discovery() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "auth-cc", &ids).await;
    let explicit = client_for(&emu, |s| {
        s.cxone.auth.mode = AuthMode::ClientCredentials;
        s.cxone.auth.token_url = emu.url("/auth/token");
    });
    explicit.get_record("auth-cc", &ids[0]).await.unwrap();
    let discovered = client_for(&emu, |s| {
        s.cxone.auth.mode = AuthMode::ClientCredentials;
        s.cxone.auth.token_url = String::new();
    });
    discovered.get_record("auth-cc", &ids[0]).await.unwrap();
    let stats = emu.stats().await;
    assert_eq!(stats["token_count"], 2);
    // Only the second client needed discovery.
    assert_eq!(route_count(&stats, "GET", "openid-configuration", None), 1);
    // The tutorial's flow sends the client in the form, as its code does.
    assert_eq!(stats["token_client_auth"]["client_secret_post"], 2);
}

#[tokio::test]
async fn client_auth_picks_one_method_per_request() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "auth-method", &ids).await;
    let cases = [
        (AuthMode::Cxone, ClientAuth::Auto, "client_secret_basic"),
        (
            AuthMode::Cxone,
            ClientAuth::ClientSecretPost,
            "client_secret_post",
        ),
        (
            AuthMode::ClientCredentials,
            ClientAuth::ClientSecretBasic,
            "client_secret_basic",
        ),
    ];
    for (mode, method, expected) in cases {
        let before = emu.stats().await["token_client_auth"][expected]
            .as_u64()
            .unwrap();
        let client = client_for(&emu, |s| {
            s.cxone.auth.mode = mode;
            s.cxone.auth.client_auth = method;
            s.cxone.auth.token_url = emu.url("/auth/token");
        });
        client.get_record("auth-method", &ids[0]).await.unwrap();
        let after = emu.stats().await["token_client_auth"][expected]
            .as_u64()
            .unwrap();
        assert_eq!(after, before + 1, "{mode:?} {method:?}");
    }
}

#[tokio::test]
async fn refused_credentials_are_unauthorized_without_retries_in_the_client_and_retried_as_a_job() {
    let emu = EmulatorProcess::spawn();
    create_store(&emu, "auth-bad", &ids(1)).await;
    let client = client_for(&emu, |s| {
        s.cxone.auth.access_key_secret = Secret::new("not-the-s3cret-value");
    });
    let err = client.schema("auth-bad").await.unwrap_err();
    // Transient for the job: the worker cannot log in, the job is not wrong (hold queues give
    // the operator the retry schedule to fix the credentials).
    assert_eq!(
        (err.code(), err.class()),
        ("unauthorized", ErrorClass::Transient)
    );
    assert!(
        !format!("{err} {err:?}").contains("not-the-s3cret-value"),
        "{err}"
    );
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "POST", "/auth/token", None), 1);
    assert_eq!(route_count(&stats, "GET", "/schema", None), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_callers_waiting_on_a_failing_token_endpoint_share_one_request() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(50);
    create_store(&emu, "auth-bad-flight", &ids).await;
    let client = client_for(&emu, |s| {
        s.cxone.auth.access_key_secret = Secret::new("not-the-s3cret-value");
        s.rate_limit.requests_per_second = 100_000;
        s.rate_limit.burst = 1000;
    });
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let client = client.clone();
        tasks.spawn(async move { client.get_record("auth-bad-flight", &id).await });
    }
    while let Some(done) = tasks.join_next().await {
        let err = done.unwrap().unwrap_err();
        assert_eq!(err.code(), "unauthorized", "{err}");
    }
    let stats = emu.stats().await;
    let tokens = route_count(&stats, "POST", "/auth/token", None);
    // Not one per waiting caller (50): they share the failure.
    assert!(tokens <= 2, "{tokens} token requests");
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries_once_then_is_permanent() {
    let emu = EmulatorProcess::spawn();
    create_store(&emu, "auth-401", &ids(1)).await;
    // Every token is born expired: each data-store request gets 401.
    emu.set_faults(json!({"token_ttl_ms": 0})).await;
    let client = client_for(&emu, |_| {});
    let err = client.schema("auth-401").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
    let stats = emu.stats().await;
    assert_eq!(
        route_count(&stats, "GET", "/schema", Some(401)),
        2,
        "{stats}"
    );
    assert_eq!(stats["token_count"], 2, "one token, one refresh");
    // The worker's readiness says the store refuses the tokens, until a request succeeds again.
    let refusal = client.store_refuses_token().expect("the refusal is kept");
    assert!(refusal.contains("401"), "{refusal}");
    emu.set_faults(json!({"token_ttl_ms": 3_600_000})).await;
    client.schema("auth-401").await.unwrap();
    assert_eq!(client.store_refuses_token(), None);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_transparently() {
    let emu = EmulatorProcess::spawn();
    create_store(&emu, "auth-expired", &ids(1)).await;
    emu.set_faults(json!({"token_ttl_ms": 1000})).await;
    let client = client_for(&emu, |_| {});
    client.schema("auth-expired").await.unwrap();
    client.invalidate_schema("auth-expired");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.schema("auth-expired").await.unwrap();
    let stats = emu.stats().await;
    assert_eq!(stats["token_count"], 2);
    assert_eq!(route_count(&stats, "GET", "/schema", Some(401)), 0);
}

#[tokio::test]
async fn a_read_only_token_gets_a_permanent_forbidden_on_write() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "auth-403", &ids).await;
    let client = client_for(&emu, |s| {
        s.cxone.auth.mode = AuthMode::ClientCredentials;
        s.cxone.auth.scope = "datastore:read".into();
    });
    let fields = support::name_fields("x");
    let err = client
        .patch_record("auth-403", &ids[0], &fields, None)
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.status()), ("forbidden", Some(403)));
    assert_eq!(err.class(), ErrorClass::Permanent);
}

/// Acceptance: token TTL 2 s, 50 concurrent callers for 10 s: about one token request per expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_share_one_token_refresh_per_expiry() {
    let _measurement = crate::helpers::measurement("store::auth").await;
    let emu = EmulatorProcess::spawn();
    let ids = ids(50);
    create_store(&emu, "auth-flight", &ids).await;
    emu.set_faults(json!({"token_ttl_ms": 2000})).await;
    let client = client_for(&emu, |s| {
        s.rate_limit.requests_per_second = 100_000;
        s.rate_limit.burst = 1000;
    });
    let run_for = Duration::from_secs(10);
    let started = Instant::now();
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let client = client.clone();
        let calls = calls.clone();
        tasks.spawn(async move {
            while started.elapsed() < run_for {
                client.get_record("auth-flight", &id).await.expect("get");
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let stats = emu.stats().await;
    let tokens = stats["token_count"].as_u64().unwrap();
    let unauthorized = route_count(&stats, "GET", "/records/", Some(401));
    eprintln!(
        "single flight: {} calls by 50 tasks in {:?}, {tokens} token requests, {unauthorized} 401s",
        calls.load(Ordering::Relaxed),
        started.elapsed()
    );
    // 10 s / (2 s − 0.2 s margin) ≈ 6; never one per caller (50) or per call.
    assert!((5..=8).contains(&tokens), "{tokens} token requests");
    assert!(unauthorized <= 2, "{unauthorized} 401s");
}

#[tokio::test]
async fn auto_client_auth_switches_once_to_the_method_the_endpoint_takes() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "auth-switch", &ids).await;
    emu.set_faults(json!({"token_client_auth": "client_secret_basic"}))
        .await;
    let token_url = emu.url("/auth/token");
    let tweak = |method| {
        let token_url = token_url.clone();
        move |s: &mut cxrel::settings::Settings| {
            s.cxone.auth.mode = AuthMode::ClientCredentials;
            s.cxone.auth.client_auth = method;
            s.cxone.auth.token_url = token_url;
        }
    };
    // `auto` tries the form fields first (client_credentials), is refused, and switches.
    let auto = client_for(&emu, tweak(ClientAuth::Auto));
    auto.get_record("auth-switch", &ids[0]).await.unwrap();
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "POST", "/auth/token", Some(401)), 1);
    assert_eq!(stats["token_client_auth"]["client_secret_basic"], 1);
    // An explicit method is not second-guessed: refused once, and that is the answer.
    let explicit = client_for(&emu, tweak(ClientAuth::ClientSecretPost));
    let err = explicit
        .get_record("auth-switch", &ids[0])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized");
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "POST", "/auth/token", Some(401)), 2);
}

/// A request waiting its turn in the rate budget for longer than a token lives still goes out
/// with a live token: the token is taken when the budget lets the request go, not before.
#[tokio::test]
async fn a_request_that_waits_for_the_rate_budget_carries_a_token_taken_after_the_wait() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(8);
    create_store(&emu, "auth-queued", &ids).await;
    let client = client_for(&emu, |s| {
        s.rate_limit.requests_per_second = 4;
        s.rate_limit.burst = 1;
    });
    emu.set_faults(json!({"token_ttl_ms": 700})).await;
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let client = client.clone();
        tasks.spawn(async move { client.get_record("auth-queued", &id).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().expect("every queued request succeeds");
    }
    let stats = emu.stats().await;
    assert_eq!(
        route_count(&stats, "GET", "/records/", Some(401)),
        0,
        "no request went out with a token that expired while it waited: {stats}"
    );
}
