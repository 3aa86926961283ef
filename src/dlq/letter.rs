//! One dead letter: typed reads of its `x-cxrel-*` headers, its JSON form (show, export, the
//! console's message view) and the properties it is replayed with.

use std::time::{Duration, SystemTime};

use base64::Engine;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Value, json};

use crate::amqp::headers;
use crate::events::now_rfc3339;

/// RabbitMQ's own dead-lettering of a message: its reason and, when readable, its time.
struct BrokerDeath {
    reason: String,
    at: Option<SystemTime>,
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can print.
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// When the message was last replayed (RFC 3339).
pub const REPLAYED_AT: &str = "x-cxrel-replayed-at";
/// Why the operator replayed it, as typed.
pub const REPLAY_REASON: &str = "x-cxrel-replay-reason";
pub use crate::amqp::headers::REPLAY_COUNT;

/// One dead-lettered message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl DeadLetter {
    fn header(&self, key: &str) -> Option<String> {
        headers::get_str(&headers::table(&self.properties), key)
    }

    /// The worker's error code; for a message the broker dead-lettered itself (a publisher's TTL
    /// ran out in the jobs queue, its length limit, its delivery limit) `broker_` and RabbitMQ's
    /// reason, e.g. `broker_expired`; `unknown` when neither says.
    pub fn code(&self) -> String {
        match self.broker_death() {
            Some(death) => format!("broker_{}", death.reason),
            None => self
                .header(headers::ERROR_CODE)
                .unwrap_or_else(|| "unknown".to_owned()),
        }
    }

    /// RabbitMQ's newest dead-lettering of this message (the first `x-death` entry), when that is
    /// what brought it here: not a hold queue's expiry (that sends a job back for its retry), and
    /// later than the worker's own last failure (a retry copy carries the worker's headers).
    fn broker_death(&self) -> Option<BrokerDeath> {
        let table = headers::table(&self.properties);
        let Some(AMQPValue::FieldArray(deaths)) = table.inner().get("x-death") else {
            return None;
        };
        let Some(AMQPValue::FieldTable(newest)) = deaths.as_slice().first() else {
            return None;
        };
        let queue = headers::get_str(newest, "queue").unwrap_or_default();
        if queue.contains(".retry.") {
            return None;
        }
        let at = match newest.inner().get("time") {
            // Past year 9999 a time cannot be printed (RFC 3339): treated as unknown.
            Some(AMQPValue::Timestamp(t)) if *t <= MAX_RFC3339_SECS => {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(*t))
            }
            _ => None,
        };
        if let Some(worker) = self.worker_failed_at()
            && at.is_none_or(|at| at <= worker)
        {
            return None;
        }
        let reason = headers::get_str(newest, "reason")?;
        Some(BrokerDeath { reason, at })
    }

    fn worker_failed_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.header(headers::LAST_FAILED_AT)?).ok()
    }

    /// The job id: the worker's `x-cxrel-job-id`. On a letter the broker dead-lettered itself
    /// (expired, delivery limit) that header may be the producer's own, never checked by a worker,
    /// so the id the worker would use comes first there: the body's `job_id`, else the message id.
    pub fn job_id(&self) -> Option<String> {
        if self.broker_death().is_some() {
            let declared = std::str::from_utf8(&self.body)
                .ok()
                .and_then(crate::jobfile::declared_job_id);
            if let Some(id) = declared.or_else(|| self.message_id()) {
                return Some(id);
            }
        }
        self.header(headers::JOB_ID)
    }

    pub fn message_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
    }

    /// The id operators see: job id, else message id, else "-".
    pub fn display_id(&self) -> String {
        self.job_id()
            .or(self.message_id())
            .unwrap_or_else(|| "-".into())
    }

    /// True when `id` is this message's job id or message id.
    pub fn has_id(&self, id: &str) -> bool {
        self.job_id().as_deref() == Some(id) || self.message_id().as_deref() == Some(id)
    }

    pub fn attempts(&self) -> u64 {
        headers::get_u64(&headers::table(&self.properties), headers::ATTEMPTS).unwrap_or(0)
    }

    /// When the broker dead-lettered it, when it did; else when the worker last failed it.
    pub fn last_failed_at(&self) -> Option<SystemTime> {
        match self.broker_death() {
            Some(death) => death.at,
            None => self.worker_failed_at(),
        }
    }

    /// Time since the last failure; `None` when the header is missing or in the future.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        now.duration_since(self.last_failed_at()?).ok()
    }

    pub fn error_message(&self) -> String {
        self.header(headers::ERROR_MESSAGE).unwrap_or_default()
    }

    /// The worker's stage; `broker` when the broker dead-lettered the message itself.
    pub fn stage(&self) -> String {
        if self.broker_death().is_some() {
            return "broker".to_owned();
        }
        self.header(headers::STAGE)
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// The job's data store: as the worker resolved it (any job shape, or its
    /// `default_datastore`), else as the body names it (`datastore_id` or the tutorial's
    /// `datastoreId`), for letters written before the header existed.
    pub fn datastore(&self) -> Option<String> {
        self.header(headers::DATASTORE_ID).or_else(|| {
            std::str::from_utf8(&self.body)
                .ok()
                .and_then(crate::jobfile::declared_datastore_id)
        })
    }

    pub fn replay_count(&self) -> u64 {
        headers::get_u64(&headers::table(&self.properties), REPLAY_COUNT).unwrap_or(0)
    }

    /// Earlier replays, oldest first (`x-cxrel-replayed` entries).
    pub fn replay_history(&self) -> Vec<String> {
        match headers::table(&self.properties)
            .inner()
            .get(headers::REPLAYED)
        {
            Some(AMQPValue::FieldArray(items)) => items
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Headers, properties and body as one JSON object (for `show` and `export`): `body` for
    /// reading (a body that is not JSON is kept as a string), `body_base64` byte for byte.
    pub fn to_json(&self) -> Value {
        let body = serde_json::from_slice::<Value>(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        json!({
            "message_id": self.message_id(),
            "content_type": self.properties.content_type().as_ref().map(|c| c.as_str()),
            "properties": properties_to_json(&self.properties),
            "headers": table_to_json(&headers::table(&self.properties)),
            "body": body,
            "body_base64": base64::engine::general_purpose::STANDARD.encode(&self.body),
        })
    }

    /// The short form the console lists: ids, code, stage, attempts, age, error and replays.
    pub fn to_row(&self, now: SystemTime) -> Value {
        json!({
            "id": self.display_id(),
            "message_id": self.message_id(),
            "job_id": self.job_id(),
            "code": self.code(),
            "stage": self.stage(),
            "datastore_id": self.datastore(),
            "attempts": self.attempts(),
            "age_seconds": self.age(now).map(|a| a.as_secs()),
            "last_failed_at": match self.broker_death() {
                Some(death) => death.at.map(|at| humantime::format_rfc3339_millis(at).to_string()),
                None => self.header(headers::LAST_FAILED_AT),
            },
            "error": self.error_message(),
            "replay_count": self.replay_count(),
        })
    }

    /// The properties a replay publishes with: every header kept (the job id above all) except the
    /// attempt count, which is reset so the job gets its whole retry budget again, and the
    /// broker's own death/delivery bookkeeping; plus the replay stamps and one history entry
    /// ("{time} {code} after {n} attempts: {reason}").
    pub fn replay_properties(&self, reason: &str) -> BasicProperties {
        let now = now_rfc3339();
        let entry = format!(
            "{now} {} after {} attempts: {reason}",
            self.code(),
            self.attempts()
        );
        let old = headers::table(&self.properties);
        let mut history = match old.inner().get(headers::REPLAYED) {
            Some(AMQPValue::FieldArray(items)) => items.clone(),
            _ => FieldArray::default(),
        };
        history.push(AMQPValue::LongString(LongString::from(entry)));
        let mut kept = FieldTable::default();
        for (key, value) in old.inner() {
            if !is_reset_on_replay(key.as_str()) {
                kept.insert(key.clone(), value.clone());
            }
        }
        kept.insert(headers::REPLAYED.into(), AMQPValue::FieldArray(history));
        headers::set_str(&mut kept, REPLAYED_AT, now);
        headers::set_str(&mut kept, REPLAY_REASON, reason);
        headers::set_u64(&mut kept, REPLAY_COUNT, self.replay_count() + 1);
        headers::copy_properties(&self.properties, kept)
    }
}

/// Headers a replay drops: the attempt count (a replay starts the retry budget afresh) and what
/// the broker adds when it dead-letters or redelivers (it would count old deaths as new ones).
fn is_reset_on_replay(key: &str) -> bool {
    key == headers::ATTEMPTS
        || key == "x-delivery-count"
        || key.starts_with("x-death")
        || key.starts_with("x-first-death")
        || key.starts_with("x-last-death")
}

/// The properties besides message id, content type and headers (those have keys of their own).
fn properties_to_json(p: &BasicProperties) -> Value {
    let mut out = serde_json::Map::new();
    let mut text = |key: &str, value: &Option<lapin::types::ShortString>| {
        if let Some(v) = value {
            out.insert(key.to_owned(), json!(v.as_str()));
        }
    };
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(v) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        out.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        out.insert("timestamp".into(), json!(v));
    }
    Value::Object(out)
}

pub(crate) fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(v) => json!(v),
        AMQPValue::ShortShortUInt(v) => json!(v),
        AMQPValue::ShortInt(v) => json!(v),
        AMQPValue::ShortUInt(v) => json!(v),
        AMQPValue::LongInt(v) => json!(v),
        AMQPValue::LongUInt(v) => json!(v),
        AMQPValue::LongLongInt(v) => json!(v),
        AMQPValue::Float(v) => json!(v),
        AMQPValue::Double(v) => json!(v),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::Void => Value::Null,
        // Raw bytes stay byte for byte, as the body does in `body_base64`.
        AMQPValue::ByteArray(bytes) => {
            json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes.as_slice())})
        }
        AMQPValue::DecimalValue(d) => json!(decimal(d.value, d.scale)),
    }
}

/// An AMQP decimal (`value` × 10^-`scale`) as its exact decimal text, e.g. `12.5`.
fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A dead letter as the worker writes it, failed `failed_secs_ago` seconds ago.
    pub(crate) fn letter(code: &str, job: &str, failed_secs_ago: u64) -> DeadLetter {
        let mut t = FieldTable::default();
        headers::set_str(&mut t, headers::ERROR_CODE, code);
        headers::set_str(&mut t, headers::JOB_ID, job);
        headers::set_str(&mut t, headers::STAGE, "validate");
        headers::set_u64(&mut t, headers::ATTEMPTS, 3);
        headers::set_str(&mut t, "x-custom", "kept");
        let at = SystemTime::now() - Duration::from_secs(failed_secs_ago);
        headers::set_str(
            &mut t,
            headers::LAST_FAILED_AT,
            humantime::format_rfc3339_millis(at).to_string(),
        );
        DeadLetter {
            properties: BasicProperties::default().with_headers(t),
            body: br#"{"datastore_id":"ds1"}"#.to_vec(),
        }
    }

    #[test]
    fn bytes_void_and_decimal_headers_read_as_json_values_not_debug_text() {
        let mut t = FieldTable::default();
        t.insert("void".into(), AMQPValue::Void);
        t.insert(
            "bytes".into(),
            AMQPValue::ByteArray(vec![0u8, 255, 7].into()),
        );
        t.insert(
            "price".into(),
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 3,
                value: 12_500,
            }),
        );
        t.insert(
            "tiny".into(),
            AMQPValue::DecimalValue(lapin::types::DecimalValue { scale: 2, value: 5 }),
        );
        let json = table_to_json(&t);
        assert_eq!(json["void"], Value::Null);
        assert_eq!(json["bytes"]["base64"], "AP8H");
        assert_eq!(json["price"], "12.500");
        assert_eq!(json["tiny"], "0.05");
    }

    #[test]
    fn replay_resets_attempts_keeps_other_headers_and_stamps_the_reason() {
        let props = letter("server_error", "j1", 5).replay_properties("store is back");
        let t = headers::table(&props);
        assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), None);
        assert_eq!(headers::get_str(&t, headers::JOB_ID).as_deref(), Some("j1"));
        assert_eq!(headers::get_str(&t, "x-custom").as_deref(), Some("kept"));
        assert_eq!(
            headers::get_str(&t, REPLAY_REASON).as_deref(),
            Some("store is back")
        );
        assert_eq!(headers::get_u64(&t, REPLAY_COUNT), Some(1));
        assert!(headers::get_str(&t, REPLAYED_AT).is_some());
        let history = table_to_json(&t)[headers::REPLAYED].clone();
        let entry = history[0].as_str().unwrap();
        assert!(
            entry.contains("server_error after 3 attempts: store is back"),
            "{entry}"
        );
    }

    #[test]
    fn a_letter_the_broker_dead_lettered_takes_its_job_id_from_the_body_not_a_producers_header() {
        let mut death = FieldTable::default();
        headers::set_str(&mut death, "reason", "expired");
        let mut t = FieldTable::default();
        headers::set_str(&mut t, headers::JOB_ID, "forged");
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let letter = |body: &[u8], message_id: Option<&str>| {
            let mut properties = BasicProperties::default().with_headers(t.clone());
            if let Some(id) = message_id {
                properties = properties.with_message_id(id.into());
            }
            DeadLetter {
                properties,
                body: body.to_vec(),
            }
        };
        let declared = letter(br#"{"job_id":"real"}"#, Some("m-1"));
        assert_eq!(declared.display_id(), "real");
        assert_eq!(letter(b"{}", Some("m-1")).display_id(), "m-1");
        assert_eq!(letter(b"not json", None).display_id(), "forged");
    }

    #[test]
    fn a_message_the_broker_dead_lettered_reads_its_reason_and_time_from_x_death() {
        let mut death = FieldTable::default();
        headers::set_str(&mut death, "reason", "expired");
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut t = FieldTable::default();
        headers::set_str(&mut t, "x-first-death-reason", "expired");
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let letter = DeadLetter {
            properties: BasicProperties::default().with_headers(t),
            body: b"{}".to_vec(),
        };
        assert_eq!(letter.code(), "broker_expired");
        assert_eq!(letter.stage(), "broker");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(letter.last_failed_at(), Some(at));
        assert_eq!(
            letter.to_row(SystemTime::now())["last_failed_at"],
            "2023-11-14T22:13:20.000Z"
        );
    }

    /// `letter` with one `x-death` entry (queue, reason, time) added.
    fn with_death(mut letter: DeadLetter, queue: &str, reason: &str, time: u64) -> DeadLetter {
        let mut death = FieldTable::default();
        headers::set_str(&mut death, "queue", queue);
        headers::set_str(&mut death, "reason", reason);
        death.insert("time".into(), AMQPValue::Timestamp(time));
        let mut t = headers::table(&letter.properties);
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        letter.properties = letter.properties.clone().with_headers(t);
        letter
    }

    #[test]
    fn the_worker_code_stands_unless_the_broker_dead_lettered_the_message_after_it() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // A retry copy's hold-queue expiry, then the worker dead-lettered it: the worker's code.
        let retried = with_death(
            letter("server_error", "j", 5),
            "p.retry.1s",
            "expired",
            now - 7,
        );
        assert_eq!(
            (retried.code(), retried.stage()),
            ("server_error".into(), "validate".into())
        );
        // Dead-lettered by the jobs queue after the worker's last failure: the broker's reason.
        let limit = with_death(
            letter("server_error", "j", 60),
            "p.jobs",
            "delivery_limit",
            now,
        );
        assert_eq!(limit.code(), "broker_delivery_limit");
        assert_eq!(limit.stage(), "broker");
        // A forged time past year 9999 neither panics nor counts.
        let forged = with_death(
            letter("server_error", "j", 5),
            "p.jobs",
            "expired",
            u64::MAX,
        );
        assert_eq!(forged.code(), "server_error");
        let bare = DeadLetter {
            properties: BasicProperties::default(),
            body: Vec::new(),
        };
        let forged = with_death(bare, "p.jobs", "expired", u64::MAX);
        assert_eq!(forged.code(), "broker_expired");
        assert_eq!(forged.last_failed_at(), None);
        let _ = forged.to_row(SystemTime::now());
    }

    #[test]
    fn a_second_replay_counts_two_and_keeps_the_first_history_entry() {
        let once = DeadLetter {
            properties: letter("timeout", "j1", 5).replay_properties("first"),
            body: Vec::new(),
        };
        let twice = DeadLetter {
            properties: once.replay_properties("second"),
            body: Vec::new(),
        };
        assert_eq!(twice.replay_count(), 2);
        assert_eq!(twice.replay_history().len(), 2);
    }

    #[test]
    fn the_data_store_comes_from_the_worker_header_else_from_either_body_shape() {
        assert_eq!(letter("x", "j", 1).datastore().as_deref(), Some("ds1"));
        let tutorial = DeadLetter {
            properties: BasicProperties::default(),
            body: br#"{"parentId":"p","childIds":[],"relationshipField":"f","datastoreId":"ds2"}"#
                .to_vec(),
        };
        assert_eq!(tutorial.datastore().as_deref(), Some("ds2"));
        let mut t = FieldTable::default();
        headers::set_str(&mut t, headers::DATASTORE_ID, "ds3");
        let defaulted = DeadLetter {
            properties: BasicProperties::default().with_headers(t),
            body: br#"{"operations":[]}"#.to_vec(),
        };
        assert_eq!(defaulted.datastore().as_deref(), Some("ds3"));
    }
}
