//! Data-store client overhead: GET one record through `StoreClient` (token cache, rate budget,
//! retry wrapper, correlation id, metrics, JSON decoding into `Record`) against a bare reqwest GET
//! with a fixed bearer token that only reads the body bytes, both against the in-process emulator
//! with no faults and a client limit far above what one caller reaches.
//!
//! Criterion reports each; a final interleaved run prints the mean overhead per request.
//! Run with `cargo bench --bench store_client`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use cxrel::emulator::{self, Emulator};
use cxrel::settings::{Settings, Sources};
use cxrel::store::StoreClient;
use serde_json::json;

const DS: &str = "bench";
const ID: &str = "550e8400-e29b-41d4-a716-446655440000";

struct Setup {
    rt: tokio::runtime::Runtime,
    client: StoreClient,
    bare: reqwest::Client,
    url: String,
    token: String,
    _server: emulator::Server,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let settings =
        Settings::load_with_env(&Sources::default(), Some(Default::default())).expect("settings");
    let (server, client, bare, url, token) = rt.block_on(async {
        let emu = Emulator::new(&settings.emulator);
        let server = emulator::serve(emu, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("emulator");
        let base = format!("http://{}", server.local_addr());
        let bare = reqwest::Client::new();
        let schema = json!({"fields": [{"name": "name", "type": "string"},
            {"name": "parent_child_link", "type": "relationship"}]});
        let status = bare
            .post(format!("{base}/_emulator/datastores"))
            .json(&json!({"id": DS, "schema": schema,
                "records": [{"id": ID, "fields": {"name": "bench"}}]}))
            .send()
            .await
            .expect("create data store")
            .status();
        assert_eq!(status, 201);
        let mut s = settings.clone();
        s.cxone.api_base = base.clone();
        s.cxone.auth.issuer = base.clone();
        s.rate_limit.requests_per_second = 10_000_000;
        s.rate_limit.burst = 100_000;
        let client = StoreClient::from_settings(&s).expect("client");
        client.get_record(DS, ID).await.expect("warm-up");
        let token: serde_json::Value = bare
            .post(format!("{base}/auth/token"))
            .basic_auth(
                &s.cxone.auth.client_id,
                Some(s.cxone.auth.client_secret.expose()),
            )
            .form(&[
                ("grant_type", "password"),
                ("username", s.cxone.auth.access_key_id.as_str()),
                ("password", s.cxone.auth.access_key_secret.expose()),
            ])
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token JSON");
        let token = token["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        let url = format!("{base}/api/v2/datastores/{DS}/records/{ID}");
        (server, client, bare, url, token)
    });
    Setup {
        rt,
        client,
        bare,
        url,
        token,
        _server: server,
    }
}

async fn bare_get(s: &Setup) {
    let response = s
        .bare
        .get(&s.url)
        .bearer_auth(&s.token)
        .header("accept", "application/json")
        .send()
        .await
        .expect("bare GET");
    assert!(response.status().is_success());
    black_box(response.bytes().await.expect("body"));
}

async fn client_get(s: &Setup) {
    black_box(s.client.get_record(DS, ID).await.expect("client GET"));
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("store_get_record");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("bare_reqwest", |b| {
        b.iter_custom(|iters| {
            s.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    bare_get(&s).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("store_client", |b| {
        b.iter_custom(|iters| {
            s.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client_get(&s).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    // Interleaved blocks so drift (CPU frequency, allocator state) hits both sides alike.
    let (mut bare, mut client) = (Duration::ZERO, Duration::ZERO);
    let (blocks, per_block) = (20u32, 500u32);
    s.rt.block_on(async {
        for _ in 0..blocks {
            let t = Instant::now();
            for _ in 0..per_block {
                bare_get(&s).await;
            }
            bare += t.elapsed();
            let t = Instant::now();
            for _ in 0..per_block {
                client_get(&s).await;
            }
            client += t.elapsed();
        }
    });
    let n = f64::from(blocks * per_block);
    let bare_us = bare.as_secs_f64() * 1e6 / n;
    let client_us = client.as_secs_f64() * 1e6 / n;
    println!(
        "store client overhead: bare reqwest {bare_us:.1} µs/request, StoreClient {client_us:.1} µs/request, \
         overhead {:.1} µs/request ({:.0}%) over {} requests each",
        client_us - bare_us,
        (client_us / bare_us - 1.0) * 100.0,
        n
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
