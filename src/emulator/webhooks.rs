//! A webhook receiver for tests and the demo: `POST /_emulator/webhooks/{name}` records each
//! delivery and checks its Standard Webhooks signature against the secret configured for `name`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ApiError, ApiJson, body_error};
use super::state::{Shared, lock};
use crate::webhooks::signing::{SignatureError, SigningKey};

/// Deliveries kept per receiver; older ones are dropped first.
const MAX_DELIVERIES: usize = 10_000;

/// Bytes of recorded bodies and headers kept per receiver (older deliveries are dropped first),
/// so 10,000 one-MiB deliveries cannot fill the emulator's memory.
const MAX_RECEIVER_BYTES: usize = 32 << 20;

/// Receivers at once. Any POST creates one, so without a cap anyone who can reach the port could
/// fill the emulator's memory with names; tests and demos use a handful.
pub const MAX_RECEIVERS: usize = 256;

#[derive(Debug, Default)]
pub struct WebhookStore {
    receivers: Mutex<HashMap<String, Receiver>>,
}

#[derive(Debug)]
struct Receiver {
    key: Option<SigningKey>,
    /// Status answered to verified (or unverifiable, no secret) deliveries.
    status: StatusCode,
    /// How long each answer takes (a slow subscriber), after the delivery is recorded.
    delay: std::time::Duration,
    /// `Retry-After` (seconds) sent with every answer, to play a subscriber that throttles.
    retry_after: Option<u64>,
    deliveries: VecDeque<Delivery>,
    /// Sum of the recorded deliveries' `size`.
    bytes: usize,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            key: None,
            status: StatusCode::OK,
            delay: std::time::Duration::ZERO,
            retry_after: None,
            deliveries: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl Receiver {
    /// Keeps `delivery`, dropping the oldest ones beyond [`MAX_DELIVERIES`] or [`MAX_RECEIVER_BYTES`].
    fn record(&mut self, delivery: Delivery) {
        self.bytes += delivery.size;
        self.deliveries.push_back(delivery);
        while self.deliveries.len() > MAX_DELIVERIES
            || (self.bytes > MAX_RECEIVER_BYTES && self.deliveries.len() > 1)
        {
            if let Some(old) = self.deliveries.pop_front() {
                self.bytes -= old.size;
            }
        }
    }
}

/// One recorded delivery.
#[derive(Debug, Clone, Serialize)]
struct Delivery {
    received_at: String,
    headers: BTreeMap<String, String>,
    /// The raw body as text (lossy UTF-8) and, when it parses, as JSON.
    body: String,
    json: Option<Value>,
    verified: bool,
    reason: Option<String>,
    /// Bytes this record holds (body twice, as text and JSON, plus headers), for the cap.
    #[serde(skip)]
    size: usize,
}

/// `PUT /_emulator/webhooks/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// `whsec_…`; null or absent = record without verifying.
    #[serde(default)]
    secret: Option<String>,
    /// Status answered to accepted deliveries (default 200), e.g. 500 to exercise retries.
    #[serde(default)]
    status: Option<u16>,
    /// Milliseconds each answer takes (at most 60,000), to play a slow subscriber.
    #[serde(default)]
    delay_ms: Option<u64>,
    /// `Retry-After` seconds sent with each answer (e.g. with status 429); absent = none.
    #[serde(default)]
    retry_after: Option<u64>,
}

impl WebhookStore {
    pub fn clear(&self) {
        lock(&self.receivers).clear();
    }
}

/// The receiver `name`, created when there is room; 409 `too_many_receivers` when there is not.
fn receiver(
    receivers: &mut HashMap<String, Receiver>,
    name: String,
) -> Result<&mut Receiver, ApiError> {
    if receivers.len() >= MAX_RECEIVERS && !receivers.contains_key(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_receivers",
            format!(
                "the emulator keeps at most {MAX_RECEIVERS} webhook receivers; remove one with \
                 DELETE /_emulator/webhooks/{{name}} (or POST /_emulator/reset) first"
            ),
        ));
    }
    Ok(receivers.entry(name).or_default())
}

/// `PUT /_emulator/webhooks/{name}`: sets the secret and answer status; keeps recorded deliveries.
pub async fn configure(
    State(state): State<Shared>,
    Path(name): Path<String>,
    ApiJson(config): ApiJson<ReceiverConfig>,
) -> Result<Json<Value>, ApiError> {
    let key = config
        .secret
        .as_deref()
        .map(SigningKey::from_secret)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_secret", e.to_string()))?;
    let status = match config.status {
        None => StatusCode::OK,
        Some(code) => StatusCode::from_u16(code)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or_else(|| ApiError::bad_request("invalid_request", "status must be 200..=599"))?,
    };
    let delay_ms = config.delay_ms.unwrap_or(0);
    if delay_ms > 60_000 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "delay_ms must be 0..=60000",
        ));
    }
    let mut receivers = lock(&state.webhooks.receivers);
    let receiver = receiver(&mut receivers, name.clone())?;
    receiver.key = key;
    receiver.status = status;
    receiver.delay = std::time::Duration::from_millis(delay_ms);
    receiver.retry_after = config.retry_after;
    let configured = receiver.key.is_some();
    Ok(Json(
        json!({"name": name, "secret_configured": configured, "status": status.as_u16(), "delay_ms": delay_ms}),
    ))
}

/// `POST /_emulator/webhooks/{name}`: records the delivery; 401 `invalid_signature` when a
/// secret is configured and the signature does not verify.
pub async fn receive(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let (answer, delay) = record(&state, name, &headers, &body)?;
    tokio::time::sleep(delay).await;
    answer
}

/// Records one delivery; returns the answer and how long to wait before giving it.
fn record(
    state: &Shared,
    name: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Result<Response, ApiError>, std::time::Duration), ApiError> {
    let mut receivers = lock(&state.webhooks.receivers);
    let receiver = receiver(&mut receivers, name)?;
    let verdict = receiver.key.as_ref().map(|key| verify(key, headers, body));
    let (verified, reason) = match &verdict {
        None => (false, Some("no secret configured".to_owned())),
        Some(Ok(())) => (true, None),
        Some(Err(e)) => (false, Some(e.to_string())),
    };
    let headers_map = header_map(headers);
    let size = 2 * body.len()
        + headers_map
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    receiver.record(Delivery {
        received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        headers: headers_map,
        body: String::from_utf8_lossy(body).into_owned(),
        json: serde_json::from_slice(body).ok(),
        verified,
        reason: reason.clone(),
        size,
    });
    let answer = match verdict {
        Some(Err(_)) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            reason.unwrap_or_default(),
        )),
        _ => {
            let mut response = (
                receiver.status,
                Json(json!({"received": true, "verified": verified})),
            )
                .into_response();
            if let Some(seconds) = receiver.retry_after {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, seconds.into());
            }
            Ok(response)
        }
    };
    Ok((answer, receiver.delay))
}

/// `GET /_emulator/webhooks/{name}`: the recorded deliveries, oldest first.
pub async fn deliveries(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let receivers = lock(&state.webhooks.receivers);
    let receiver = receivers
        .get(&name)
        .ok_or_else(|| ApiError::not_found("webhook_not_found", format!("no receiver {name:?}")))?;
    let list: Vec<&Delivery> = receiver.deliveries.iter().collect();
    Ok(Json(json!({
        "name": name,
        "secret_configured": receiver.key.is_some(),
        "count": list.len(),
        "deliveries": list,
    })))
}

/// `DELETE /_emulator/webhooks/{name}`: forgets the receiver and its deliveries.
pub async fn remove(State(state): State<Shared>, Path(name): Path<String>) -> StatusCode {
    lock(&state.webhooks.receivers).remove(&name);
    StatusCode::NO_CONTENT
}

fn verify(key: &SigningKey, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignatureError::MissingHeader)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    key.verify(
        get("webhook-id")?,
        get("webhook-timestamp")?,
        get("webhook-signature")?,
        body,
        now,
    )
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(size: usize) -> Delivery {
        Delivery {
            received_at: String::new(),
            headers: BTreeMap::new(),
            body: String::new(),
            json: None,
            verified: false,
            reason: None,
            size,
        }
    }

    #[test]
    fn a_receiver_keeps_its_newest_deliveries_within_the_byte_cap() {
        let mut r = Receiver::default();
        for _ in 0..40 {
            r.record(delivery(1 << 20));
        }
        assert_eq!(r.deliveries.len(), 32);
        assert_eq!(r.bytes, 32 << 20);
        // One delivery above the cap on its own is still kept (the newest always is).
        r.record(delivery(40 << 20));
        assert_eq!((r.deliveries.len(), r.bytes), (1, 40 << 20));
    }

    #[test]
    fn a_receiver_keeps_at_most_max_deliveries() {
        let mut r = Receiver::default();
        for _ in 0..MAX_DELIVERIES + 5 {
            r.record(delivery(1));
        }
        assert_eq!(r.deliveries.len(), MAX_DELIVERIES);
        assert_eq!(r.bytes, MAX_DELIVERIES);
    }
}
