//! Reading and writing the `x-cxrel-*` message headers (SPEC §5) on AMQP properties.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub const ERROR_CODE: &str = "x-cxrel-error-code";
pub const ERROR_MESSAGE: &str = "x-cxrel-error-message";
pub const STAGE: &str = "x-cxrel-stage";
pub const ATTEMPTS: &str = "x-cxrel-attempts";
pub const JOB_ID: &str = "x-cxrel-job-id";
pub const FIRST_FAILED_AT: &str = "x-cxrel-first-failed-at";
pub const LAST_FAILED_AT: &str = "x-cxrel-last-failed-at";
pub const REPLAYED: &str = "x-cxrel-replayed";
pub const TRACEPARENT: &str = "traceparent";
/// Set by quorum queues on a redelivered message: deliveries that ended without an ack.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// The headers of a message, empty when it has none.
pub fn table(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

/// A header read as a string (AMQP long or short string).
pub fn get_str(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header read as a non-negative integer, whatever integer width the publisher chose.
pub fn get_u64(table: &FieldTable, key: &str) -> Option<u64> {
    let value = match table.inner().get(key)? {
        AMQPValue::ShortShortUInt(v) => i128::from(*v),
        AMQPValue::ShortUInt(v) => i128::from(*v),
        AMQPValue::LongUInt(v) => i128::from(*v),
        AMQPValue::ShortShortInt(v) => i128::from(*v),
        AMQPValue::ShortInt(v) => i128::from(*v),
        AMQPValue::LongInt(v) => i128::from(*v),
        AMQPValue::LongLongInt(v) => i128::from(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    u64::try_from(value).ok()
}

pub fn set_str(table: &mut FieldTable, key: &str, value: impl Into<String>) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value.into())),
    );
}

pub fn set_u64(table: &mut FieldTable, key: &str, value: u64) {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    table.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_whatever_width_was_written() {
        let mut t = FieldTable::default();
        set_u64(&mut t, ATTEMPTS, 3);
        assert_eq!(get_u64(&t, ATTEMPTS), Some(3));
        t.insert(ShortString::from("small"), AMQPValue::ShortShortUInt(7));
        assert_eq!(get_u64(&t, "small"), Some(7));
    }

    #[test]
    fn a_negative_attempt_count_reads_as_absent() {
        let mut t = FieldTable::default();
        t.insert(ShortString::from(ATTEMPTS), AMQPValue::LongInt(-1));
        assert_eq!(get_u64(&t, ATTEMPTS), None);
    }

    #[test]
    fn strings_round_trip() {
        let mut t = FieldTable::default();
        set_str(&mut t, ERROR_CODE, "cycle_detected");
        assert_eq!(get_str(&t, ERROR_CODE).as_deref(), Some("cycle_detected"));
        assert_eq!(get_str(&t, "missing"), None);
    }
}
