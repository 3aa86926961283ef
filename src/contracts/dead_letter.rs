//! The dead-letter schema (SPEC §5): a message on `{prefix}.dead` as `cxrel dlq show|export` print
//! it, its AMQP properties and headers, and the original body, which is never changed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ContractError;
use super::defs::Defs;
use super::event::STAGES;
pub use super::headers::{
    BrokerDeathHeaders, DeadLetterHeaders, FailureHeaders, ParkedWebhookHeaders, TraceHeaders,
    WebhookHeaders,
};
use crate::settings::Settings;

/// Root definition.
pub const ROOT: &str = "DeadLetter";

/// A dead letter as `cxrel dlq show` and `cxrel dlq export` print it (one JSON object each).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DeadLetter")]
pub struct DeadLetterRecord {
    /// AMQP `message_id` of the original message (the default job id).
    pub message_id: Option<String>,
    /// AMQP `content_type` of the original message.
    pub content_type: Option<String>,
    /// The other AMQP properties the message carries, by their AMQP names (`content_encoding`,
    /// `delivery_mode`, `priority`, `correlation_id`, `reply_to`, `expiration`, `timestamp`,
    /// `type`, `user_id`, `app_id`, `cluster_id`); unset ones are left out.
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
    pub headers: DeadLetterHeaders,
    /// The original body, for reading: its JSON value when it parses (usually a job), else its
    /// text as a string (invalid UTF-8 replaced). `body_base64` is the exact copy.
    pub body: Value,
    /// The original body byte for byte, base64 (standard alphabet, padded): what a restore
    /// publishes.
    pub body_base64: String,
}

pub fn define(defs: &mut Defs, _settings: &Settings) -> Result<&'static str, ContractError> {
    defs.subschema::<DeadLetterRecord>();
    constrain(defs)?;
    Ok(ROOT)
}

/// Formats and enums of the header values; also used by the AsyncAPI message headers.
pub fn constrain(defs: &mut Defs) -> Result<(), ContractError> {
    let failure = FailureHeaders::schema_name();
    defs.merge(
        &failure,
        "/properties/x-cxrel-stage",
        json!({"enum": STAGES}),
    )?;
    for key in [
        "x-cxrel-first-failed-at",
        "x-cxrel-last-failed-at",
        "x-cxrel-replayed-at",
    ] {
        defs.merge(&failure, &format!("/properties/{key}"), date_time())?;
    }
    let code = json!({"pattern": "^[a-z][a-z0-9_]*$"});
    defs.merge(&failure, "/properties/x-cxrel-error-code", code)?;
    let reasons = json!({"enum": ["delivery_limit", "rejected", "expired", "maxlen"]});
    let broker = BrokerDeathHeaders::schema_name();
    defs.merge(&broker, "/properties/x-first-death-reason", reasons)
}

fn date_time() -> Value {
    json!({"format": "date-time"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers;
    use crate::dlq::DeadLetter;
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    #[test]
    fn a_dead_letter_as_the_worker_writes_it_reads_as_worker_headers() {
        let mut t = FieldTable::default();
        headers::set_str(&mut t, headers::ERROR_CODE, "cycle_detected");
        headers::set_str(&mut t, headers::ERROR_MESSAGE, "a → b → a");
        headers::set_str(&mut t, headers::STAGE, "validate");
        headers::set_u64(&mut t, headers::ATTEMPTS, 1);
        headers::set_str(&mut t, headers::JOB_ID, "job-1");
        headers::set_str(&mut t, headers::FIRST_FAILED_AT, "2026-12-01T00:00:00.000Z");
        headers::set_str(&mut t, headers::LAST_FAILED_AT, "2026-12-01T00:00:00.000Z");
        let letter = DeadLetter {
            properties: BasicProperties::default().with_headers(t),
            body: b"{not json".to_vec(),
        };
        let record: DeadLetterRecord = serde_json::from_value(letter.to_json()).unwrap();
        let DeadLetterHeaders::Worker(h) = record.headers else {
            panic!("read as broker headers");
        };
        assert_eq!((h.error_code.as_str(), h.attempts), ("cycle_detected", 1));
        assert_eq!(record.body, "{not json");
        use base64::Engine;
        let exact = base64::engine::general_purpose::STANDARD.decode(&record.body_base64);
        assert_eq!(exact.unwrap(), letter.body);
    }
}
