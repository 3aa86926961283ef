//! Data-store client calls against the emulator (SPEC §3): schema cache, get, paged list, PATCH
//! with If-Match and its 412, 409 locked, DELETE, unknown-field handling; and the headers every
//! request carries (checked on a capturing server).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxrel::error::ErrorClass;
use cxrel::schema::FieldLookup;
use cxrel::settings::AuthMode;
use cxrel::store::{StoreClient, StoreError};
use futures::TryStreamExt;
use serde_json::json;

use crate::helpers::emulator::EmulatorProcess;
use crate::support;
use crate::support::{client_for, create_store, ids, name_fields, route_count};

#[tokio::test]
async fn the_schema_is_cached_for_its_ttl_and_dropped_on_an_unknown_field_answer() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "rec-schema", &ids).await;
    let client = client_for(&emu, |s| s.cxone.schema_ttl = Duration::from_millis(400));
    let schema = client.schema("rec-schema").await.unwrap();
    assert!(matches!(
        schema.lookup("parent_child_link"),
        FieldLookup::Relationship(..)
    ));
    client.schema("rec-schema").await.unwrap();
    assert_eq!(
        route_count(&emu.stats().await, "GET", "/schema", None),
        1,
        "second call is served from the cache"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    client.schema("rec-schema").await.unwrap();
    assert_eq!(
        route_count(&emu.stats().await, "GET", "/schema", None),
        2,
        "TTL over"
    );

    let mut fields = serde_json::Map::new();
    fields.insert("no_such_field".into(), json!({"ids": []}));
    let err = client
        .patch_record("rec-schema", &ids[0], &fields, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownField { .. }), "{err:?}");
    assert_eq!(err.store_code(), Some("unknown_field"));
    assert_eq!(err.class(), ErrorClass::Permanent);
    client.schema("rec-schema").await.unwrap();
    assert_eq!(
        route_count(&emu.stats().await, "GET", "/schema", None),
        3,
        "the unknown-field answer dropped the cached schema"
    );
}

#[tokio::test]
async fn patch_with_if_match_returns_the_new_version_and_412_is_its_own_unretried_variant() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(2);
    create_store(&emu, "rec-patch", &ids).await;
    let client = client_for(&emu, |_| {});
    let before = client.get_record("rec-patch", &ids[0]).await.unwrap();
    let mut fields = serde_json::Map::new();
    fields.insert(
        "parent_child_link".into(),
        json!({"ids": [ids[1]], "cascade_action": "update"}),
    );
    let after = client
        .patch_record("rec-patch", &ids[0], &fields, Some(before.version))
        .await
        .unwrap();
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.fields["parent_child_link"]["ids"], json!([ids[1]]));
    let again = client.get_record("rec-patch", &ids[0]).await.unwrap();
    assert_eq!(again.version, after.version);

    let err = client
        .patch_record("rec-patch", &ids[0], &fields, Some(before.version))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { .. }), "{err:?}");
    assert_eq!(
        (err.code(), err.status(), err.class()),
        ("version_mismatch", Some(412), ErrorClass::Transient)
    );
    let stats = emu.stats().await;
    assert_eq!(
        route_count(&stats, "PATCH", "/records/", Some(412)),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn a_locked_record_is_record_locked_and_not_retried_in_the_client() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "rec-lock", &ids).await;
    let response = emu
        .control_post(
            &format!("/_emulator/records/rec-lock/{}/lock", ids[0]),
            &json!({}),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let client = client_for(&emu, |_| {});
    let err = client
        .patch_record("rec-lock", &ids[0], &name_fields("x"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.status(), err.class()),
        ("record_locked", Some(409), ErrorClass::Transient)
    );
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "PATCH", "/records/", None), 1);
}

#[tokio::test]
async fn list_records_streams_every_page() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1234);
    create_store(&emu, "rec-list", &ids).await;
    let client = client_for(&emu, |s| s.cxone.page_size = 100);
    let records: Vec<_> = client.list_records("rec-list").try_collect().await.unwrap();
    let seen: HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(records.len(), 1234);
    assert_eq!(seen, ids.iter().cloned().collect());
    let stats = emu.stats().await;
    assert_eq!(route_count(&stats, "GET", "/records", Some(200)), 13);

    let empty = ids_store(&emu, "rec-list-empty").await;
    let records: Vec<_> = empty
        .list_records("rec-list-empty")
        .try_collect()
        .await
        .unwrap();
    assert!(records.is_empty());
}

async fn ids_store(emu: &EmulatorProcess, datastore: &str) -> StoreClient {
    create_store(emu, datastore, &[]).await;
    client_for(emu, |_| {})
}

#[tokio::test]
async fn delete_removes_the_record_and_missing_ones_are_not_found() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(1);
    create_store(&emu, "rec-delete", &ids).await;
    let client = client_for(&emu, |_| {});
    client.delete_record("rec-delete", &ids[0]).await.unwrap();
    let err = client.get_record("rec-delete", &ids[0]).await.unwrap_err();
    assert_eq!(
        (err.code(), err.status(), err.class()),
        ("not_found", Some(404), ErrorClass::Permanent)
    );
    let err = client.schema("no-such-store").await.unwrap_err();
    assert_eq!(err.code(), "not_found");
}

/// Every data-store request carries the bearer token, `Accept: application/json` and an
/// `X-Correlation-Id` (UUIDv7, one per call, the same on the 401 retry).
#[tokio::test]
async fn every_request_carries_accept_bearer_and_a_correlation_id() {
    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::{get, post};

    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let capture = seen.clone();
    let tokens = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/auth/token",
            post(move || {
                let n = tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    axum::Json(
                        json!({"access_token": format!("tok{n}"), "expires_in": 3600,
                        "token_type": "Bearer"}),
                    )
                }
            }),
        )
        .route(
            "/api/v2/datastores/{ds}/records/{id}",
            get(move |headers: HeaderMap| {
                let capture = capture.clone();
                async move {
                    let mut seen = capture.lock().unwrap();
                    seen.push(headers.clone());
                    // The first request of all gets a 401, to exercise the retry.
                    if seen.len() == 1 {
                        return (
                            axum::http::StatusCode::UNAUTHORIZED,
                            axum::Json(json!({
                            "error": "invalid_token"})),
                        );
                    }
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"id": "a", "fields": {}, "_version": 1})),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut s = support::default_settings();
    s.cxone.api_base = base.clone();
    s.cxone.auth.mode = AuthMode::ClientCredentials;
    s.cxone.auth.token_url = format!("{base}/auth/token");
    let client = StoreClient::from_settings(&s).unwrap();
    client.get_record("ds", "a").await.unwrap();
    client.get_record("ds", "a").await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let header = |i: usize, name: &str| {
        seen[i]
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    for i in 0..3 {
        assert_eq!(header(i, "accept"), "application/json");
        let id = uuid::Uuid::parse_str(&header(i, "x-correlation-id")).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
    }
    assert_eq!(header(0, "authorization"), "Bearer tok0");
    assert_eq!(
        header(1, "authorization"),
        "Bearer tok1",
        "refreshed after the 401"
    );
    assert_eq!(header(0, "x-correlation-id"), header(1, "x-correlation-id"));
    assert_ne!(header(1, "x-correlation-id"), header(2, "x-correlation-id"));
}
