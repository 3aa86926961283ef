//! Reading and writing the `x-cxrel-*` message headers (SPEC §5) on AMQP properties.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub const ERROR_CODE: &str = "x-cxrel-error-code";
pub const ERROR_MESSAGE: &str = "x-cxrel-error-message";
pub const STAGE: &str = "x-cxrel-stage";
pub const ATTEMPTS: &str = "x-cxrel-attempts";
pub const JOB_ID: &str = "x-cxrel-job-id";
/// The job's data store as the worker resolved it (either job shape, or `default_datastore`).
pub const DATASTORE_ID: &str = "x-cxrel-datastore-id";
pub const FIRST_FAILED_AT: &str = "x-cxrel-first-failed-at";
pub const LAST_FAILED_AT: &str = "x-cxrel-last-failed-at";
pub const REPLAYED: &str = "x-cxrel-replayed";
/// How many times a dead letter has been replayed in all.
pub const REPLAY_COUNT: &str = "x-cxrel-replay-count";
pub const TRACEPARENT: &str = "traceparent";
/// Set by quorum queues on a redelivered message: deliveries that ended without an ack.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// Marks a copy whose oversized headers were left out: their names, comma separated.
pub const DROPPED: &str = "x-cxrel-dropped-headers";

/// Largest header table [`table`] hands out (AMQP encoding, bytes). Every copy cxrel publishes
/// (retry, dead letter, replay) starts from it, and RabbitMQ's default `frame_max` (128 KiB) bounds
/// a message's whole properties frame: a job arriving with headers just under that limit would,
/// with the failure headers added, no longer fit; the broker would close the connection on the
/// publish and the job would come back forever. Half the frame leaves room for cxrel's headers.
pub const MAX_TABLE_BYTES: usize = 64 * 1024;

/// The headers of a message, empty when it has none. Above [`MAX_TABLE_BYTES`] the largest entries
/// are left out (with a warning, and their names in [`DROPPED`]) until the rest fits.
pub fn table(properties: &BasicProperties) -> FieldTable {
    bounded(properties.headers().clone().unwrap_or_default())
}

/// `properties` with `headers`, for a copy of a message that cxrel publishes (retry, dead letter,
/// replay). Two properties stay behind, as they do when RabbitMQ itself dead-letters: the
/// per-message TTL `expiration` (a copy kept for a retry or for an operator must not expire out of
/// the dead queue unseen) and `user_id`, which the broker checks against the publishing
/// connection's user, so a job published by another AMQP user could never be settled.
pub fn copy_properties(properties: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let p = properties;
    let mut copy = BasicProperties::default().with_headers(headers);
    macro_rules! keep {
        ($($get:ident => $set:ident),*) => {
            $(if let Some(v) = p.$get() { copy = copy.$set(v.clone()); })*
        };
    }
    keep!(content_type => with_content_type, content_encoding => with_content_encoding,
        delivery_mode => with_delivery_mode, priority => with_priority,
        correlation_id => with_correlation_id, reply_to => with_reply_to,
        message_id => with_message_id, timestamp => with_timestamp, kind => with_type,
        app_id => with_app_id, cluster_id => with_cluster_id);
    copy
}

/// `table` less the entry `key`.
pub fn without(table: &FieldTable, key: &str) -> FieldTable {
    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = table
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    kept.into()
}

fn bounded(table: FieldTable) -> FieldTable {
    if table_len(&table) <= MAX_TABLE_BYTES {
        return table;
    }
    // Largest first: usually one huge header is the culprit and every other one survives.
    let mut entries: Vec<(&ShortString, &AMQPValue)> = table.inner().iter().collect();
    entries.sort_by_key(|(k, v)| std::cmp::Reverse(entry_len(k, v)));
    // Room for the list of dropped names itself.
    let budget = MAX_TABLE_BYTES - 2 * 1024;
    let mut size = table_len(&table);
    let mut dropped = Vec::new();
    let mut kept = FieldTable::default();
    for (key, value) in entries {
        if size > budget {
            size -= entry_len(key, value);
            dropped.push(key.as_str());
            continue;
        }
        kept.insert(key.clone(), value.clone());
    }
    let mut names = dropped.join(",");
    if names.len() > 1024 {
        let mut end = 1024;
        while !names.is_char_boundary(end) {
            end -= 1;
        }
        names.truncate(end);
    }
    tracing::warn!(dropped = %names, "message headers above {MAX_TABLE_BYTES} bytes; the largest are left out of copies");
    set_str(&mut kept, DROPPED, names);
    kept
}

/// Encoded size of a field table: 4-byte length, then per entry its key and value.
fn table_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| entry_len(k, v))
        .sum::<usize>()
}

fn entry_len(key: &ShortString, value: &AMQPValue) -> usize {
    1 + key.as_str().len() + value_len(value)
}

/// Encoded size of a value, type tag included (AMQP 0-9-1 with RabbitMQ's extensions).
fn value_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_len).sum::<usize>(),
        AMQPValue::FieldTable(t) => table_len(t),
    }
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
    fn a_copy_keeps_the_properties_but_not_the_ttl_or_the_user() {
        let original = BasicProperties::default()
            .with_message_id("m1".into())
            .with_content_type("application/json".into())
            .with_priority(3)
            .with_expiration("10000".into())
            .with_user_id("publisher".into());
        let mut t = FieldTable::default();
        set_str(&mut t, "x-a", "b");
        let copy = copy_properties(&original, t);
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("m1"));
        assert_eq!(copy.priority(), &Some(3));
        assert_eq!(get_str(&table(&copy), "x-a").as_deref(), Some("b"));
        assert!(copy.expiration().is_none());
        assert!(copy.user_id().is_none());
    }

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

    fn properties(table: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn headers_within_the_budget_are_handed_out_unchanged() {
        let mut t = FieldTable::default();
        set_str(&mut t, "x-small", "a");
        set_str(&mut t, "x-big", "b".repeat(MAX_TABLE_BYTES / 2));
        assert_eq!(table(&properties(t.clone())), t);
    }

    #[test]
    fn oversized_headers_lose_their_largest_entries_and_say_so() {
        let mut t = FieldTable::default();
        set_str(
            &mut t,
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        set_u64(&mut t, ATTEMPTS, 2);
        set_str(&mut t, "x-junk", "x".repeat(130_000));
        t.insert(
            ShortString::from("x-nested"),
            AMQPValue::FieldArray(vec![long_value(70_000)].into()),
        );
        let out = table(&properties(t));
        assert!(table_len(&out) <= MAX_TABLE_BYTES, "{}", table_len(&out));
        assert_eq!(get_u64(&out, ATTEMPTS), Some(2));
        assert!(get_str(&out, TRACEPARENT).is_some());
        assert_eq!(get_str(&out, DROPPED).as_deref(), Some("x-junk,x-nested"));
    }

    #[test]
    fn many_small_headers_are_trimmed_too() {
        let mut t = FieldTable::default();
        for n in 0..2000 {
            set_str(&mut t, &format!("x-h{n:04}"), "v".repeat(100));
        }
        let out = table(&properties(t));
        assert!(table_len(&out) <= MAX_TABLE_BYTES);
        assert!(get_str(&out, DROPPED).is_some_and(|d| d.len() <= 1024));
    }

    fn long_value(n: usize) -> AMQPValue {
        AMQPValue::LongString(LongString::from("y".repeat(n)))
    }

    #[test]
    fn strings_round_trip() {
        let mut t = FieldTable::default();
        set_str(&mut t, ERROR_CODE, "cycle_detected");
        assert_eq!(get_str(&t, ERROR_CODE).as_deref(), Some("cycle_detected"));
        assert_eq!(get_str(&t, "missing"), None);
    }
}
