//! A job's identity, fixed at first sight (SPEC §10): the body's `job_id`, else the AMQP
//! `message_id`, else the `x-cxrel-job-id` a retry copy, dead letter or replay carries, else a UUIDv5
//! of the body (and of the AMQP `timestamp` when the publisher set one), so a redelivery of the same
//! message gets the same id and its events repeat ids, while the same body published again at
//! another second does not share them.

use lapin::BasicProperties;
use uuid::Uuid;

use crate::amqp::headers;
use crate::job::printable_name;

/// Namespace of the body-derived ids (a fixed random UUID; changing it changes every derived id).
const BODY_NAMESPACE: Uuid = Uuid::from_u128(0x5d2c_1f0e_8a4b_4c1d_9e7f_3b6a_0c2d_4e8f);

/// The id of a job whose body names none.
pub fn default_job_id(properties: &BasicProperties, body: &[u8]) -> String {
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let carried = || headers::get_str(&headers::table(properties), headers::JOB_ID);
    // The parser's rule for job ids (SPEC §1): an id it refuses would be replaced by a fresh one on
    // every delivery, so it is skipped here instead.
    let usable = |id: &String| printable_name(id);
    if let Some(id) = message_id.as_ref().filter(|id| !usable(id)) {
        let start: String = id.chars().take(40).collect();
        tracing::warn!(
            message_id_start = ?start,
            message_id_chars = id.chars().count(),
            "AMQP message_id cannot be a job id (1-128 characters, no control characters); passed over"
        );
    }
    message_id
        .filter(usable)
        .or_else(|| carried().filter(usable))
        .unwrap_or_else(|| body_job_id(properties, body))
}

/// UUIDv5 of the body, and of the publisher's `timestamp` property when set (fixed per message).
fn body_job_id(properties: &BasicProperties, body: &[u8]) -> String {
    match properties.timestamp() {
        Some(at) => {
            let mut name = body.to_vec();
            name.extend_from_slice(&at.to_be_bytes());
            Uuid::new_v5(&BODY_NAMESPACE, &name).to_string()
        }
        None => Uuid::new_v5(&BODY_NAMESPACE, body).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn the_message_id_is_the_default_job_id() {
        let props = BasicProperties::default().with_message_id("m-1".into());
        assert_eq!(default_job_id(&props, b"{}"), "m-1");
    }

    #[test]
    fn a_carried_job_id_survives_a_message_without_message_id() {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::JOB_ID, "j-7");
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(default_job_id(&props, b"{}"), "j-7");
    }

    #[test]
    fn an_oversized_carried_job_id_is_ignored() {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::JOB_ID, "x".repeat(4096));
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(default_job_id(&props, b"{}").len(), 36);
    }

    #[test]
    fn a_message_id_with_control_characters_is_passed_over_for_a_stable_one() {
        let props = BasicProperties::default().with_message_id("m\u{7}1".into());
        let id = default_job_id(&props, b"{}");
        assert_eq!(id, default_job_id(&BasicProperties::default(), b"{}"));
    }

    #[test]
    fn the_same_body_published_at_other_times_gets_other_ids() {
        let at = |t| BasicProperties::default().with_timestamp(t);
        let a = default_job_id(&at(1_700_000_000), b"{}");
        assert_eq!(a, default_job_id(&at(1_700_000_000), b"{}"));
        assert_ne!(a, default_job_id(&at(1_700_000_001), b"{}"));
        assert_ne!(a, default_job_id(&BasicProperties::default(), b"{}"));
    }

    #[test]
    fn the_same_body_without_ids_gets_the_same_id_on_every_delivery() {
        let props = BasicProperties::default();
        let a = default_job_id(&props, br#"{"parentId":"p"}"#);
        let b = default_job_id(&props, br#"{"parentId":"p"}"#);
        let c = default_job_id(&props, br#"{"parentId":"q"}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
