//! Typed views of the message headers cxrel writes (SPEC §5, §7), for the schemas: the worker's
//! failure headers, the broker's own death headers, parked webhooks and webhook deliveries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Headers of a dead letter: the worker's failure headers, or the broker's death headers when the
/// broker itself moved the job (the jobs queue's delivery limit). The original message's other
/// headers (`traceparent`, `x-death` of earlier hold-queue passes, …) are kept as they were.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DeadLetterHeaders {
    Worker(FailureHeaders),
    Broker(BrokerDeathHeaders),
}

/// What the worker writes on every message it dead-letters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FailureHeaders {
    /// Stable snake_case error code, e.g. `cycle_detected`, `invalid_job`, `store_unavailable`.
    #[serde(rename = "x-cxrel-error-code")]
    pub error_code: String,
    /// What went wrong, for people (at most 4000 bytes).
    #[serde(rename = "x-cxrel-error-message")]
    pub error_message: String,
    /// parse | validate | apply | compensate
    #[serde(rename = "x-cxrel-stage")]
    pub stage: String,
    /// Deliveries made, the failing one included.
    #[serde(rename = "x-cxrel-attempts")]
    pub attempts: u64,
    /// The job's id, fixed at first sight; stable across retries and replays.
    #[serde(rename = "x-cxrel-job-id")]
    pub job_id: String,
    /// The job's data store as the worker resolved it (either job shape, or
    /// `[cxone].default_datastore`); absent when the body names none it could read.
    #[serde(rename = "x-cxrel-datastore-id", default)]
    pub datastore_id: Option<String>,
    /// RFC 3339 time of the first failure.
    #[serde(rename = "x-cxrel-first-failed-at")]
    pub first_failed_at: String,
    /// RFC 3339 time of this failure.
    #[serde(rename = "x-cxrel-last-failed-at")]
    pub last_failed_at: String,
    /// One entry per earlier `cxrel dlq replay`: "{time} {code} after {n} attempts: {reason}".
    #[serde(rename = "x-cxrel-replayed", default)]
    pub replayed: Option<Vec<String>>,
    /// Replays of this job from the dead letters so far (absent before the first); part of its
    /// event ids.
    #[serde(rename = "x-cxrel-replay-count", default)]
    pub replay_count: Option<u64>,
    /// RFC 3339 time of the last replay.
    #[serde(rename = "x-cxrel-replayed-at", default)]
    pub replayed_at: Option<String>,
    /// The operator's `--reason` for the last replay.
    #[serde(rename = "x-cxrel-replay-reason", default)]
    pub replay_reason: Option<String>,
    /// Names of headers left out of this copy because the header table was too large, comma
    /// separated.
    #[serde(rename = "x-cxrel-dropped-headers", default)]
    pub dropped_headers: Option<String>,
}

/// What RabbitMQ writes when it dead-letters a message itself.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BrokerDeathHeaders {
    /// `delivery_limit` when the jobs queue's `x-delivery-limit` was reached.
    #[serde(rename = "x-first-death-reason")]
    pub first_death_reason: String,
    #[serde(rename = "x-first-death-queue")]
    pub first_death_queue: String,
    #[serde(rename = "x-first-death-exchange", default)]
    pub first_death_exchange: Option<String>,
    /// The broker's death history.
    #[serde(rename = "x-death", default)]
    pub death: Option<Vec<Value>>,
    /// The job's id, when a worker had already fixed it.
    #[serde(rename = "x-cxrel-job-id", default)]
    pub job_id: Option<String>,
}

/// Headers of a webhook delivery that ran out of attempts (`{prefix}.webhooks.dead`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ParkedWebhookHeaders {
    /// The subscriber's URL redacted to scheme, host and port (it often carries a token); empty
    /// when the event never reached an endpoint's queue (the delivery queue was full, or the job's
    /// share of it used up, or delivery had stopped): then it was parked once for whichever
    /// endpoints wanted it.
    #[serde(rename = "x-cxrel-webhook-url")]
    pub webhook_url: String,
    /// Which `[[webhooks]]` entry the event was for, counted from 1 in the configuration's order
    /// (the redacted URL cannot tell two endpoints on one host apart); absent with an empty URL.
    #[serde(rename = "x-cxrel-webhook-number", default)]
    pub webhook_number: Option<u64>,
    #[serde(rename = "x-cxrel-error-message")]
    pub error_message: String,
    #[serde(rename = "x-cxrel-attempts")]
    pub attempts: u64,
    #[serde(rename = "x-cxrel-last-failed-at")]
    pub last_failed_at: String,
}

/// Standard Webhooks 1.0 headers of a webhook POST.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WebhookHeaders {
    /// The CloudEvent's id: a redelivered event repeats it.
    #[serde(rename = "webhook-id")]
    pub id: String,
    /// Seconds since the Unix epoch, when this attempt was signed.
    #[serde(rename = "webhook-timestamp")]
    pub timestamp: String,
    /// `v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, key from the
    /// subscriber's `whsec_…` secret.
    #[serde(rename = "webhook-signature")]
    pub signature: String,
    /// `application/cloudevents+json`: structured mode, the body is the whole CloudEvent.
    #[serde(rename = "content-type")]
    pub content_type: String,
}

/// AMQP headers a job or an event may carry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TraceHeaders {
    /// W3C trace context; a job's is carried into its events.
    #[serde(default)]
    pub traceparent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers;

    fn property_names<T: JsonSchema>() -> Vec<String> {
        let schema = schemars::schema_for!(T).to_value();
        schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_failure_headers_are_exactly_the_ones_the_worker_and_a_replay_write() {
        let mut names = property_names::<FailureHeaders>();
        names.sort();
        let mut expected = [
            headers::ERROR_CODE,
            headers::ERROR_MESSAGE,
            headers::STAGE,
            headers::ATTEMPTS,
            headers::JOB_ID,
            headers::DATASTORE_ID,
            headers::FIRST_FAILED_AT,
            headers::LAST_FAILED_AT,
            headers::REPLAYED,
            headers::REPLAY_COUNT,
            crate::dlq::letter::REPLAYED_AT,
            crate::dlq::letter::REPLAY_REASON,
            headers::DROPPED,
        ];
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    #[test]
    fn parked_webhook_headers_use_the_shared_header_names() {
        let names = property_names::<ParkedWebhookHeaders>();
        for name in [
            headers::ERROR_MESSAGE,
            headers::ATTEMPTS,
            headers::LAST_FAILED_AT,
        ] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
    }
}
