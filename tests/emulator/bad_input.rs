//! Bad input to the emulator gets a 4xx with `{"error","error_description"}`, never a panic,
//! a hang or a plain-text body.

use reqwest::Response;
use serde_json::json;

use crate::helpers::emulator;
use crate::helpers::emulator::{EmulatorProcess, client, named_record};

/// `emulator::assert_error`, plus a JSON content type and a non-empty `error_description`.
async fn assert_error(response: Response, status: u16, code: &str) {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = emulator::assert_error(response, status, code).await;
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_json_wrong_types_and_wrong_content_types_are_400_or_415_json() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    let http = client();
    let patch = || http.patch(emu.record_url("ds", "r")).bearer_auth(&token);

    let malformed = patch()
        .header("content-type", "application/json")
        .body("{\"fields\": {")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "invalid_request").await;
    let wrong_type = patch()
        .json(&json!({"fields": "not an object"}))
        .send()
        .await
        .unwrap();
    assert_error(wrong_type, 400, "invalid_request").await;
    let no_type = patch().body("{\"fields\":{}}").send().await.unwrap();
    assert_error(no_type, 415, "unsupported_media_type").await;

    let control_wrong = http
        .post(emu.url("/_emulator/datastores"))
        .json(&json!({"id": 5}))
        .send()
        .await
        .unwrap();
    assert_error(control_wrong, 400, "invalid_request").await;
    let faults_wrong = http
        .put(emu.url("/_emulator/faults"))
        .json(&json!({"error_ratio": "lots"}))
        .send()
        .await
        .unwrap();
    assert_error(faults_wrong, 400, "invalid_request").await;
    let bad_schema = json!({"id": "x", "schema": {"fields": [{"name": "a", "type": "blob"}]}});
    let schema_wrong = http
        .post(emu.url("/_emulator/datastores"))
        .json(&bad_schema)
        .send()
        .await
        .unwrap();
    assert_error(schema_wrong, 400, "invalid_request").await;
    let page_size = http
        .get(emu.records_url("ds"))
        .bearer_auth(&token)
        .query(&[("page_size", "many")])
        .send()
        .await
        .unwrap();
    assert_error(page_size, 400, "invalid_request").await;
    let if_match = patch()
        .header("If-Match", "yesterday")
        .json(&json!({"fields": {}}))
        .send()
        .await
        .unwrap();
    assert_error(if_match, 400, "invalid_request").await;
    let token_json = http
        .post(emu.url("/auth/token"))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    assert_error(token_json, 400, "invalid_request").await;
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413_json_everywhere() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("r", "x")]))
        .await;
    let token = emu.token().await;
    let http = client();
    let huge = format!(
        "{{\"fields\":{{\"name\":\"{}\"}}}}",
        "x".repeat(1024 * 1024 + 10)
    );
    let patch = http
        .patch(emu.record_url("ds", "r"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_error(patch, 413, "request_too_large").await;
    let form = http
        .post(emu.url("/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&x={}",
            "y".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_error(form, 413, "request_too_large").await;
    let hook = http
        .post(emu.url("/_emulator/webhooks/h"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_error(hook, 413, "request_too_large").await;
    // The emulator still answers normally afterwards.
    assert_eq!(emu.get_record("ds", "r").await.0, 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let emu = EmulatorProcess::spawn();
    let http = client();
    assert_error(
        http.get(emu.url("/nope")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let wrong_method = http.put(emu.url("/auth/token")).send().await.unwrap();
    assert_error(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_413_without_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emu = EmulatorProcess::spawn();
    let addr = emu.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /_emulator/webhooks/chunked HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..24 {
        // 1.5 MiB in all, no Content-Length: only counting the bytes can catch it.
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the emulator answers within 10s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("request_too_large"), "{text}");
}
