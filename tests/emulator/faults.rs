//! Fault injection and statistics of the emulator over real HTTP: rate limit with and without
//! Retry-After, the 5xx ratio, a record another writer keeps changing, and the counters
//! benchmarks read.

use std::time::Instant;

use serde_json::json;

use crate::helpers::emulator;
use crate::helpers::emulator::{EmulatorProcess, client, named_record};

/// Sends `n` GETs of one record, one after another; returns the responses' (status, Retry-After).
async fn burst(emu: &EmulatorProcess, token: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let http = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let response = http
            .get(emu.record_url("ds", "r"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        if status == 429 {
            emulator::assert_error(response, 429, "rate_limited").await;
        }
        out.push((status, retry_after));
    }
    out
}

#[tokio::test]
async fn a_rate_limit_answers_429_with_retry_after_and_can_drop_the_header() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    emu.set_faults(json!({"rate_limit": {"requests_per_second": 2, "burst": 3}}))
        .await;

    let started = Instant::now();
    let results = burst(&emu, &token, 20).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok + limited.len(), 20);
    // Burst of 3 plus the 2/s refill over the elapsed time (+1 for rounding at the edges).
    assert!(
        ok as f64 <= 3.0 + 2.0 * elapsed + 1.0,
        "{ok} passed in {elapsed:.2}s"
    );
    assert!(!limited.is_empty());
    for (_, retry_after) in &limited {
        let secs: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=2).contains(&secs), "Retry-After {secs}");
    }

    emu.set_faults(json!({"retry_after": false})).await;
    let results = burst(&emu, &token, 20).await;
    let limited: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!limited.is_empty());
    assert!(
        limited.iter().all(|(_, r)| r.is_none()),
        "no Retry-After when disabled"
    );

    let stats = emu.stats().await;
    assert!(stats["throttled_count"].as_u64().unwrap() >= 2);
    let route = &stats["requests"]["GET /api/v2/datastores/{ds}/records/{id}"];
    assert_eq!(route["429"], stats["throttled_count"]);

    // Removing the limit lets everything through again; the control API is never limited.
    emu.set_faults(json!({"rate_limit": null})).await;
    assert!(burst(&emu, &token, 10).await.iter().all(|(s, _)| *s == 200));
}

#[tokio::test]
async fn the_5xx_ratio_is_honoured_within_tolerance_and_changes_nothing() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    emu.set_faults(json!({"error_ratio": 0.2})).await;
    let http = client();
    let n = 1000;
    let mut failed = 0;
    let mut applied = 0;
    for _ in 0..n {
        let response = http
            .patch(emu.record_url("ds", "r"))
            .bearer_auth(&token)
            .json(&json!({"fields": {"name": "y"}}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => applied += 1,
            500 | 502 | 503 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let ratio = f64::from(failed) / f64::from(n);
    assert!((0.15..=0.25).contains(&ratio), "5xx ratio {ratio}");
    emu.set_faults(json!({"error_ratio": 0.0})).await;
    let (_, record) = emu.get_record("ds", "r").await;
    assert_eq!(
        record["_version"],
        1 + applied,
        "only answered-200 PATCHes were applied"
    );
    let stats = emu.stats().await;
    assert_eq!(stats["patch_count"], applied);
    assert_eq!(stats["injected_error_count"], failed);
}

#[tokio::test]
async fn a_record_with_another_writer_answers_every_version_checked_patch_412() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    emu.set_faults(json!({"conflict_records": ["r"]})).await;
    let http = client();
    let patch = |version: u64| {
        http.patch(emu.record_url("ds", "r"))
            .bearer_auth(&token)
            .header("If-Match", version.to_string())
            .json(&json!({"fields": {"name": "y"}}))
            .send()
    };
    for _ in 0..3 {
        let (_, record) = emu.get_record("ds", "r").await;
        let version = record["_version"].as_u64().unwrap();
        emulator::assert_error(patch(version).await.unwrap(), 412, "version_mismatch").await;
    }
    emu.set_faults(json!({"conflict_records": []})).await;
    let (_, record) = emu.get_record("ds", "r").await;
    let version = record["_version"].as_u64().unwrap();
    assert_eq!(version, 4, "each refused PATCH found the record changed");
    assert_eq!(patch(version).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn statistics_count_routes_tokens_patches_and_the_busiest_second_and_reset() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    let http = client();
    for _ in 0..5 {
        let response = http
            .patch(emu.record_url("ds", "r"))
            .bearer_auth(&token)
            .json(&json!({"fields": {"name": "y"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let stats = emu.stats().await;
    assert_eq!(stats["patch_count"], 5);
    assert_eq!(stats["token_count"], 1);
    assert_eq!(
        stats["requests"]["PATCH /api/v2/datastores/{ds}/records/{id}"]["200"],
        5
    );
    assert_eq!(stats["requests"]["POST /auth/token"]["200"], 1);
    let max = stats["max_requests_in_1s"].as_u64().unwrap();
    assert!((1..=5).contains(&max), "max_requests_in_1s {max}");

    let reset = http
        .post(emu.url("/_emulator/stats/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    let stats = emu.stats().await;
    assert_eq!(stats["patch_count"], 0);
    assert_eq!(stats["max_requests_in_1s"], 0);
}

#[tokio::test]
async fn added_latency_delays_record_api_answers() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    let faults = emu.set_faults(json!({"latency_ms": 150})).await;
    assert_eq!(faults["latency_ms"], 150);
    let started = Instant::now();
    let response = client()
        .get(emu.record_url("ds", "r"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed().as_millis() >= 150);
}
