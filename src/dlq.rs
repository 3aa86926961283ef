//! Dead-letter inspection and replay for operators (`cxrel dlq`). Browsing holds messages unacked
//! and hands them back, so it never removes anything. Replay republishes each chosen message to the
//! jobs queue with a broker confirm before acking it off the dead queue, so nothing is ever lost;
//! messages it passes over are rotated (republished to the dead queue, confirmed, then acked).

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};

use crate::amqp::{AmqpError, Publisher, Topology, headers};
use crate::events::now_rfc3339;

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

    pub fn code(&self) -> String {
        self.header(headers::ERROR_CODE)
            .unwrap_or_else(|| "unknown".to_owned())
    }

    pub fn job_id(&self) -> Option<String> {
        self.header(headers::JOB_ID)
    }

    pub fn message_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
    }

    pub fn attempts(&self) -> u64 {
        headers::get_u64(&headers::table(&self.properties), headers::ATTEMPTS).unwrap_or(0)
    }

    pub fn last_failed_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.header(headers::LAST_FAILED_AT)?).ok()
    }

    pub fn error_message(&self) -> String {
        self.header(headers::ERROR_MESSAGE).unwrap_or_default()
    }

    pub fn stage(&self) -> String {
        self.header(headers::STAGE).unwrap_or_default()
    }

    /// Headers, properties and body as one JSON object (for `show` and `export`). A body that is
    /// not JSON is kept as a string.
    pub fn to_json(&self) -> Value {
        let body = serde_json::from_slice::<Value>(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        json!({
            "message_id": self.message_id(),
            "content_type": self.properties.content_type().as_ref().map(|c| c.as_str()),
            "headers": table_to_json(&headers::table(&self.properties)),
            "body": body,
        })
    }
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub code: Option<String>,
    pub job_id: Option<String>,
    /// Only messages whose last failure is at least this old.
    pub older_than: Option<Duration>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter, now: SystemTime) -> bool {
        let code_ok = self.code.as_ref().is_none_or(|c| *c == letter.code());
        let job_ok = self.job_id.as_ref().is_none_or(|j| {
            letter.job_id().as_ref() == Some(j) || letter.message_id().as_ref() == Some(j)
        });
        let age_ok = self.older_than.is_none_or(|min_age| {
            letter
                .last_failed_at()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= min_age)
        });
        code_ok && job_ok && age_ok
    }
}

/// Messages currently in `queue`.
pub async fn depth(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    Ok(queue.message_count())
}

/// Reads up to `limit` messages without removing any: they are held unacked, then the channel is
/// closed, which hands them all back to the queue.
pub async fn browse(
    connection: &Connection,
    queue: &str,
    limit: u16,
) -> Result<Vec<DeadLetter>, AmqpError> {
    let channel = connection.create_channel().await?;
    let wanted = usize::try_from(depth(&channel, queue).await?)
        .unwrap_or(usize::MAX)
        .min(usize::from(limit));
    let mut letters = Vec::with_capacity(wanted);
    if wanted > 0 {
        channel
            .basic_qos(limit.max(1), BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "cxrel-dlq-browse".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        while letters.len() < wanted {
            let next = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
            let Ok(Some(delivery)) = next else { break };
            let delivery = delivery?;
            letters.push(DeadLetter {
                properties: delivery.properties,
                body: delivery.data,
            });
        }
    }
    let _ = channel.close(200, "browsed".into()).await;
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub scanned: u64,
    pub replayed: u64,
    pub job_ids: Vec<String>,
}

/// Moves matching dead letters back to the jobs queue, at most `limit` of them. Each is republished
/// (attempt count reset, replay history added) and confirmed before it is acked off the dead queue.
pub async fn replay(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: u64,
) -> Result<ReplayReport, AmqpError> {
    let channel = connection.create_channel().await?;
    let publisher = Publisher::open(connection).await?;
    let dead = topology.dead();
    let initial = depth(&channel, &dead).await?;
    let now = SystemTime::now();
    let mut report = ReplayReport::default();
    // Only the messages present at the start are visited; rotated ones go behind them.
    while report.scanned < u64::from(initial) && report.replayed < limit {
        let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        report.scanned += 1;
        let delivery = message.delivery;
        let letter = DeadLetter {
            properties: delivery.properties.clone(),
            body: delivery.data.clone(),
        };
        if filter.matches(&letter, now) {
            publisher
                .to_queue(&topology.jobs(), &letter.body, replay_properties(&letter))
                .await?;
            report.replayed += 1;
            report
                .job_ids
                .push(letter.job_id().or(letter.message_id()).unwrap_or_default());
        } else {
            publisher
                .to_queue(&dead, &letter.body, letter.properties.clone())
                .await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    let _ = channel.close(200, "replayed".into()).await;
    Ok(report)
}

/// The original properties with the failure headers cleared, attempts reset and one more entry in
/// `x-cxrel-replayed` ("{time} {code} after {n} attempts").
fn replay_properties(letter: &DeadLetter) -> BasicProperties {
    let mut table = headers::table(&letter.properties);
    let entry = format!(
        "{} {} after {} attempts",
        now_rfc3339(),
        letter.code(),
        letter.attempts()
    );
    let mut history = match table.inner().get(headers::REPLAYED) {
        Some(AMQPValue::FieldArray(items)) => items.clone(),
        _ => FieldArray::default(),
    };
    history.push(AMQPValue::LongString(LongString::from(entry)));
    let mut kept = FieldTable::default();
    for (key, value) in table.inner() {
        let failure_header = matches!(
            key.as_str(),
            headers::ATTEMPTS
                | headers::ERROR_CODE
                | headers::ERROR_MESSAGE
                | headers::STAGE
                | headers::FIRST_FAILED_AT
                | headers::LAST_FAILED_AT
                | headers::REPLAYED
        );
        if !failure_header && !key.as_str().starts_with("x-death") {
            kept.insert(key.clone(), value.clone());
        }
    }
    kept.insert(headers::REPLAYED.into(), AMQPValue::FieldArray(history));
    table = kept;
    letter.properties.clone().with_headers(table)
}

/// Removes every message from the dead queue; returns how many there were.
pub async fn purge(connection: &Connection, queue: &str) -> Result<u32, AmqpError> {
    let channel = connection.create_channel().await?;
    let count = channel
        .queue_purge(queue.into(), Default::default())
        .await?;
    let _ = channel.close(200, "purged".into()).await;
    Ok(count)
}

fn table_to_json(table: &FieldTable) -> Value {
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
        other => json!(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(code: &str, job: &str, failed_secs_ago: u64) -> DeadLetter {
        let mut t = FieldTable::default();
        headers::set_str(&mut t, headers::ERROR_CODE, code);
        headers::set_str(&mut t, headers::JOB_ID, job);
        headers::set_u64(&mut t, headers::ATTEMPTS, 3);
        let at = SystemTime::now() - Duration::from_secs(failed_secs_ago);
        headers::set_str(
            &mut t,
            headers::LAST_FAILED_AT,
            humantime::format_rfc3339_millis(at).to_string(),
        );
        DeadLetter {
            properties: BasicProperties::default().with_headers(t),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn filters_combine_code_job_and_age() {
        let now = SystemTime::now();
        let l = letter("cycle_detected", "j1", 3600);
        assert!(Filter::default().matches(&l, now));
        let by_code = Filter {
            code: Some("cycle_detected".into()),
            ..Filter::default()
        };
        assert!(by_code.matches(&l, now));
        let other_job = Filter {
            job_id: Some("j2".into()),
            ..Filter::default()
        };
        assert!(!other_job.matches(&l, now));
        let too_young = Filter {
            older_than: Some(Duration::from_secs(7200)),
            ..Filter::default()
        };
        assert!(!too_young.matches(&l, now));
    }

    #[test]
    fn replay_resets_attempts_and_records_history() {
        let props = replay_properties(&letter("server_error", "j1", 5));
        let t = headers::table(&props);
        assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), None);
        assert_eq!(headers::get_str(&t, headers::ERROR_CODE), None);
        assert_eq!(headers::get_str(&t, headers::JOB_ID).as_deref(), Some("j1"));
        let history = table_to_json(&t)[headers::REPLAYED].clone();
        let entry = history[0].as_str().unwrap();
        assert!(entry.contains("server_error after 3 attempts"), "{entry}");
    }
}
