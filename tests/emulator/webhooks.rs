//! The emulator's webhook receiver: deliveries signed per Standard Webhooks are accepted and
//! recorded as verified; a tampered one is refused with 401 and recorded as not verified.

use cxrel::webhooks::signing::SigningKey;
use serde_json::json;

use crate::helpers::emulator;
use crate::helpers::emulator::{EmulatorProcess, client};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_signed_delivery_is_accepted_and_a_tampered_one_rejected() {
    let emu = EmulatorProcess::spawn();
    let http = client();
    let hook = emu.webhook_receiver("demo", SECRET).await;

    let key = SigningKey::from_secret(SECRET).unwrap();
    let body = br#"{"type":"cxrel.job.completed","data":{"job_id":"j1"}}"#;
    let ts = now();
    let signature = key.sign("msg_1", ts, body);
    let send = |body: &'static [u8], signature: String| {
        http.post(&hook)
            .header("content-type", "application/json")
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let good = send(body, signature.clone()).await.unwrap();
    assert_eq!(good.status(), 200);
    let tampered = send(
        br#"{"type":"cxrel.job.completed","data":{"job_id":"j2"}}"#,
        signature,
    )
    .await
    .unwrap();
    emulator::assert_error(tampered, 401, "invalid_signature").await;

    let deliveries = emu.webhook_deliveries("demo").await;
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0]["verified"], true);
    assert_eq!(deliveries[0]["json"]["data"]["job_id"], "j1");
    assert_eq!(deliveries[0]["headers"]["webhook-id"], "msg_1");
    assert_eq!(deliveries[1]["verified"], false);
    assert!(
        deliveries[1]["reason"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
}

#[tokio::test]
async fn a_receiver_can_be_told_to_fail_and_refuses_a_bad_secret() {
    let emu = EmulatorProcess::spawn();
    let http = client();
    let bad = http
        .put(emu.url("/_emulator/webhooks/x"))
        .json(&json!({"secret": "whsec_!!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    http.put(emu.url("/_emulator/webhooks/x"))
        .json(&json!({"status": 503}))
        .send()
        .await
        .unwrap();
    let response = http
        .post(emu.url("/_emulator/webhooks/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let log = emulator::fetch_json(http.get(emu.url("/_emulator/webhooks/x"))).await;
    assert_eq!(log["deliveries"][0]["reason"], "no secret configured");
}

#[tokio::test]
async fn receivers_are_capped_in_number_with_a_clear_409_when_full() {
    let emu = EmulatorProcess::spawn();
    let http = client();
    let hook = |name: &str| emu.url(&format!("/_emulator/webhooks/{name}"));
    for n in 0..cxrel::emulator::MAX_WEBHOOK_RECEIVERS {
        let response = http
            .post(hook(&format!("r{n}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "receiver {n}");
    }
    let refused = [
        http.post(hook("one-too-many"))
            .body("{}")
            .send()
            .await
            .unwrap(),
        http.put(hook("one-too-many"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    ];
    for response in refused {
        let body = emulator::assert_error(response, 409, "too_many_receivers").await;
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("DELETE")
        );
    }
    // Existing receivers keep working; removing one makes room.
    let again = http.post(hook("r0")).body("{}").send().await.unwrap();
    assert_eq!(again.status(), 200);
    http.delete(hook("r1")).send().await.unwrap();
    let room = http
        .post(hook("one-too-many"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(room.status(), 200);
}
