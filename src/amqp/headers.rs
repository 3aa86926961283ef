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

/// Largest count [`get_u64`] returns: far beyond any retry schedule, and small enough that the
/// callers' `+ 1` can never overflow whatever a publisher wrote.
pub const MAX_COUNT: u64 = u32::MAX as u64;

/// A header read as a non-negative integer, whatever integer width (or decimal string) the
/// publisher chose. Values above [`MAX_COUNT`] are clamped to it; a negative value or one that is
/// not an integer reads as absent, with a warning naming the header (headers come from whoever
/// published the message, so they never panic or fail the job).
pub fn get_u64(table: &FieldTable, key: &str) -> Option<u64> {
    let raw = table.inner().get(key)?;
    match integer(raw) {
        Some(Integer::Count(n)) => Some(n.min(MAX_COUNT)),
        Some(Integer::Negative) => {
            tracing::warn!(
                header = key,
                "negative count header ignored (read as absent)"
            );
            None
        }
        None => {
            tracing::warn!(header = key, kind = ?raw.get_type(), "non-integer count header ignored (read as absent)");
            None
        }
    }
}

/// An integer header, reduced to what a count needs.
enum Integer {
    Count(u64),
    Negative,
}

fn integer(value: &AMQPValue) -> Option<Integer> {
    let signed = match value {
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongString(s) => return decimal(s.as_bytes()),
        AMQPValue::ShortString(s) => return decimal(s.as_str().as_bytes()),
        _ => return None,
    };
    Some(u64::try_from(signed).map_or(Integer::Negative, Integer::Count))
}

/// `"42"`, `"-1"`, `"99999999999999999999999"` (saturates); anything else is not an integer.
fn decimal(text: &[u8]) -> Option<Integer> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative && digits.bytes().any(|b| b != b'0') {
        return Some(Integer::Negative);
    }
    Some(Integer::Count(digits.parse().unwrap_or(u64::MAX)))
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
    fn huge_counts_are_clamped_so_adding_one_never_overflows() {
        let mut t = FieldTable::default();
        t.insert(ShortString::from("a"), AMQPValue::LongLongInt(i64::MAX));
        t.insert(
            ShortString::from("b"),
            AMQPValue::LongString(LongString::from("184467440737095516150000")),
        );
        t.insert(ShortString::from("c"), AMQPValue::LongUInt(u32::MAX));
        for key in ["a", "b", "c"] {
            assert_eq!(get_u64(&t, key), Some(MAX_COUNT), "{key}");
        }
        assert!(MAX_COUNT.checked_add(1).is_some());
    }

    #[test]
    fn negative_or_non_integer_counts_read_as_absent() {
        let mut t = FieldTable::default();
        let cases = [
            ("neg", AMQPValue::LongLongInt(i64::MIN)),
            ("neg-text", AMQPValue::LongString(LongString::from("-7"))),
            ("word", AMQPValue::LongString(LongString::from("three"))),
            ("float", AMQPValue::Double(2.5)),
            ("bool", AMQPValue::Boolean(true)),
            ("empty", AMQPValue::LongString(LongString::from(""))),
            (
                "bytes",
                AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
            ),
            ("table", AMQPValue::FieldTable(FieldTable::default())),
        ];
        for (key, value) in cases {
            t.insert(ShortString::from(key), value);
            assert_eq!(get_u64(&t, key), None, "{key}");
        }
    }

    #[test]
    fn decimal_strings_with_spaces_or_a_plus_sign_still_count() {
        let mut t = FieldTable::default();
        t.insert(
            ShortString::from("a"),
            AMQPValue::LongString(LongString::from(" +4 ")),
        );
        t.insert(
            ShortString::from("b"),
            AMQPValue::ShortString(ShortString::from("-0")),
        );
        assert_eq!(get_u64(&t, "a"), Some(4));
        assert_eq!(get_u64(&t, "b"), Some(0));
    }

    #[test]
    fn strings_round_trip() {
        let mut t = FieldTable::default();
        set_str(&mut t, ERROR_CODE, "cycle_detected");
        assert_eq!(get_str(&t, ERROR_CODE).as_deref(), Some("cycle_detected"));
        assert_eq!(get_str(&t, "missing"), None);
    }
}
