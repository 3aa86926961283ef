//! The data-store client against answers no honest store sends but proxies, broken stores and
//! hostile endpoints do: an `expires_in` of u64::MAX, bodies above `[cxone].max_response_bytes`
//! (declared or streamed), a body that never ends, paging that loops, a 200 HTML page, 408 and 425.
//! Each ends in a coded error of the right class (or success), never a panic or a hang. The odd
//! answers come from a small real HTTP server on port 0, since the emulator answers correctly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cxrel::error::ErrorClass;
use cxrel::settings::{AuthMode, Settings};
use cxrel::store::StoreClient;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::support;

const LIMIT: usize = 64 * 1024;

/// A record whose `blob` field makes its JSON about `bytes` long.
fn record_of_size(id: &str, bytes: usize) -> Value {
    json!({"id": id, "fields": {"blob": "x".repeat(bytes)}, "_version": 1})
}

/// `GET …/records/{id}`: the id picks the odd answer.
async fn odd_record(Path((_ds, id)): Path<(String, String)>, hits: Arc<AtomicU32>) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    match id.as_str() {
        "ok" => axum::Json(record_of_size("ok", 10)).into_response(),
        "big" => axum::Json(record_of_size("big", LIMIT * 2)).into_response(),
        "streamed" => {
            // No Content-Length: only counting the bytes as they arrive can stop this one.
            let chunk = bytes::Bytes::from(vec![b' '; 16 * 1024]);
            let chunks = futures::stream::repeat(chunk)
                .take(1000)
                .map(Ok::<_, std::io::Error>);
            Response::new(Body::from_stream(chunks))
        }
        "endless" => {
            // Headers at once, then a byte now and then, forever.
            let drip = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
            });
            Response::new(Body::from_stream(drip))
        }
        "html" => (
            [("content-type", "text/html")],
            "<html><body>502 Bad Gateway (proxy)</body></html>",
        )
            .into_response(),
        "huge-502" => {
            let page = format!("<html>{}</html>", "bad gateway ".repeat(LIMIT));
            (StatusCode::BAD_GATEWAY, page).into_response()
        }
        "408" => StatusCode::REQUEST_TIMEOUT.into_response(),
        "503-retry-after" => {
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response()
        }
        "503" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "425" => StatusCode::from_u16(425).unwrap().into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET …/records`: a store whose paging goes a → b → a → …
async fn looping_pages(Query(q): Query<Vec<(String, String)>>) -> axum::Json<Value> {
    let token = q.iter().find(|(k, _)| k == "page_token").map(|(_, v)| v);
    let next = if token.map(String::as_str) == Some("a") {
        "b"
    } else {
        "a"
    };
    axum::Json(json!({"records": [record_of_size(next, 1)], "next_page_token": next}))
}

struct OddStore {
    base: String,
    hits: Arc<AtomicU32>,
}

async fn odd_store() -> OddStore {
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let app = Router::new()
        .route(
            "/auth/token",
            post(|| async {
                axum::Json(json!({"access_token": "tok", "expires_in": u64::MAX,
                    "token_type": "Bearer"}))
            }),
        )
        .route(
            "/auth/proxy-page",
            post(|| async { ([("content-type", "text/html")], "<html>login</html>") }),
        )
        .route(
            "/api/v2/datastores/{ds}/records/{id}",
            get(move |path| odd_record(path, counted.clone())),
        )
        .route("/api/v2/datastores/{ds}/records", get(looping_pages));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    OddStore { base, hits }
}

fn client(store: &OddStore, tweak: impl FnOnce(&mut Settings)) -> StoreClient {
    let mut s = support::default_settings();
    s.cxone.api_base = store.base.clone();
    s.cxone.auth.mode = AuthMode::ClientCredentials;
    s.cxone.auth.token_url = format!("{}/auth/token", store.base);
    s.cxone.max_response_bytes = LIMIT;
    s.cxone.request_timeout = Duration::from_millis(800);
    s.retry.max_attempts = 3;
    s.retry.min_backoff = Duration::from_millis(5);
    s.retry.max_backoff = Duration::from_millis(20);
    tweak(&mut s);
    StoreClient::from_settings(&s).unwrap()
}

#[tokio::test]
async fn a_token_that_claims_to_live_forever_is_used_without_overflowing_the_clock() {
    let store = odd_store().await;
    let client = client(&store, |_| {});
    client.check_auth().await.unwrap();
    let record = client.get_record("ds", "ok").await.unwrap();
    assert_eq!(record.id, "ok");
    client.get_record("ds", "ok").await.unwrap();
}

#[tokio::test]
async fn bodies_above_the_cap_are_response_too_large_whether_declared_or_streamed() {
    let store = odd_store().await;
    let client = client(&store, |_| {});
    for id in ["big", "streamed"] {
        let err = client.get_record("ds", id).await.unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            ("response_too_large", ErrorClass::Permanent),
            "{id}: {err}"
        );
        assert!(err.to_string().contains("max_response_bytes"), "{err}");
    }
    // The same answers pass with a cap that fits them.
    let roomy = client_with_cap(&store, LIMIT * 100);
    roomy.get_record("ds", "big").await.unwrap();
}

fn client_with_cap(store: &OddStore, cap: usize) -> StoreClient {
    client(store, |s| s.cxone.max_response_bytes = cap)
}

#[tokio::test]
async fn a_body_that_never_ends_times_out_within_the_request_timeout() {
    let store = odd_store().await;
    let client = client(&store, |s| {
        s.cxone.max_response_bytes = usize::MAX;
        s.retry.max_attempts = 1;
    });
    let err = client.get_record("ds", "endless").await.unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        ("timeout", ErrorClass::Transient),
        "{err}"
    );
}

#[tokio::test]
async fn a_next_page_token_that_repeats_ends_the_listing_with_an_error() {
    let store = odd_store().await;
    let client = client(&store, |_| {});
    // The guard only turns a regression (an endless load) into a failure instead of a hang.
    let listing = client.list_records("ds").try_collect::<Vec<_>>();
    let err = tokio::time::timeout(Duration::from_secs(60), listing)
        .await
        .expect("the listing ends")
        .unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        ("invalid_response", ErrorClass::Permanent),
        "{err}"
    );
    assert!(err.to_string().contains("already returned"), "{err}");
}

#[tokio::test]
async fn a_2xx_html_page_is_a_transient_unreadable_response() {
    let store = odd_store().await;
    let client = client(&store, |_| {});
    let err = client.get_record("ds", "html").await.unwrap_err();
    assert_eq!(
        (err.code(), err.class(), err.status()),
        ("unreadable_response", ErrorClass::Transient, Some(200)),
        "{err}"
    );
    assert!(err.to_string().contains("502 Bad Gateway"), "{err}");
}

#[tokio::test]
async fn an_error_answer_with_a_huge_body_keeps_its_status_and_class() {
    let store = odd_store().await;
    let client = client(&store, |_| {});
    let err = client.get_record("ds", "huge-502").await.unwrap_err();
    assert_eq!(
        (err.code(), err.class(), err.status()),
        ("server_error", ErrorClass::Transient, Some(502)),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_endpoint_answering_an_html_page_is_transient_not_a_refusal() {
    let store = odd_store().await;
    let page = format!("{}/auth/proxy-page", store.base);
    let client = client(&store, |s| s.cxone.auth.token_url = page);
    let err = client.check_auth().await.unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        ("unreadable_response", ErrorClass::Transient),
        "{err}"
    );
}

#[tokio::test]
async fn request_timeout_and_too_early_are_retried_then_transient() {
    let store = odd_store().await;
    let client = client(&store, |_| {});
    for (id, code) in [("408", "request_timeout"), ("425", "too_early")] {
        let before = store.hits.load(Ordering::SeqCst);
        let err = client.get_record("ds", id).await.unwrap_err();
        assert_eq!(
            (err.code(), err.class(), err.status()),
            (code, ErrorClass::Transient, Some(id.parse().unwrap())),
            "{err}"
        );
        let sent = store.hits.load(Ordering::SeqCst) - before;
        assert_eq!(sent, 3, "{id}: retried up to [retry].max_attempts");
    }
}

#[tokio::test]
async fn a_503_with_retry_after_lowers_the_rate_like_a_429_and_a_bare_503_does_not() {
    let store = odd_store().await;
    let client = client(&store, |s| s.rate_limit.requests_per_second = 100);
    let _ = client.get_record("ds", "503").await.unwrap_err();
    assert_eq!(client.budget().effective_rate(), 100.0);
    let err = client
        .get_record("ds", "503-retry-after")
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.status()), ("server_error", Some(503)));
    let rate = client.budget().effective_rate();
    assert!(
        rate < 100.0,
        "the gateway's 'back off' lowered the rate: {rate}"
    );
}

#[tokio::test]
async fn a_request_waiting_for_its_rate_slot_is_not_sent_once_the_lease_is_lost() {
    let store = odd_store().await;
    let client = client(&store, |s| {
        s.rate_limit.requests_per_second = 1;
        s.rate_limit.burst = 1;
    });
    client.get_record("ds", "ok").await.unwrap();
    let lease = tokio_util::sync::CancellationToken::new();
    let leased = client.with_lease(lease.clone());
    let before = store.hits.load(Ordering::SeqCst);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lease.cancel();
    };
    // The next slot is a second away; the lease goes after 100 ms.
    let (result, ()) = tokio::join!(leased.get_record("ds", "ok"), cancel);
    let err = result.unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        ("lease_lost", ErrorClass::Transient)
    );
    assert_eq!(
        store.hits.load(Ordering::SeqCst),
        before,
        "nothing was sent"
    );
}

/// A token endpoint answering 429 with Retry-After: 2 is not asked again for those 2 s, however
/// many callers want a token meanwhile.
#[tokio::test]
async fn a_throttled_token_endpoint_is_left_alone_for_its_retry_after() {
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/auth/token",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "2")],
                    "",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let store = OddStore {
        base,
        hits: Arc::new(AtomicU32::new(0)),
    };
    let client = client(&store, |_| {});
    let first = client.check_auth().await.unwrap_err();
    assert_eq!(first.code(), "rate_limited", "{first}");
    let after_first = hits.load(Ordering::SeqCst);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            client.check_auth().await.unwrap_err().code(),
            "rate_limited"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        after_first,
        "asked again within Retry-After"
    );
}
