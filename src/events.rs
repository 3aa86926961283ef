//! Result events (SPEC §6): CloudEvents 1.0 in structured JSON, with ids derived from
//! (job_id, operation index, type) so a redelivered job repeats the same ids and subscribers can
//! drop duplicates. Routing key on the events exchange = type without the `cxrel.` prefix.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// Namespace of event ids (UUIDv5); fixed forever so ids stay stable across versions.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a0c_51f5_8c3e_4d0b_9f5e_2b1d_7c4a_9e11);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "cxrel.relationship.applied")]
    Applied,
    #[serde(rename = "cxrel.relationship.rejected")]
    Rejected,
    #[serde(rename = "cxrel.relationship.failed")]
    Failed,
    #[serde(rename = "cxrel.relationship.rolled_back")]
    RolledBack,
    #[serde(rename = "cxrel.job.completed")]
    JobCompleted,
    #[serde(rename = "cxrel.job.dead_lettered")]
    JobDeadLettered,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        Self::Applied,
        Self::Rejected,
        Self::Failed,
        Self::RolledBack,
        Self::JobCompleted,
        Self::JobDeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "cxrel.relationship.applied",
            Self::Rejected => "cxrel.relationship.rejected",
            Self::Failed => "cxrel.relationship.failed",
            Self::RolledBack => "cxrel.relationship.rolled_back",
            Self::JobCompleted => "cxrel.job.completed",
            Self::JobDeadLettered => "cxrel.job.dead_lettered",
        }
    }

    /// Routing key on the events topic exchange, e.g. `relationship.applied`.
    pub fn routing_key(self) -> &'static str {
        self.as_str().trim_start_matches("cxrel.")
    }
}

/// One CloudEvent, structured mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: EventType,
    pub time: String,
    pub subject: String,
    pub datacontenttype: String,
    /// W3C trace context (CloudEvents distributed-tracing extension), when the job carried one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub traceparent: Option<String>,
    pub data: Value,
}

impl CloudEvent {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and a JSON value always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The stable id of an event: the same job, operation and type always give the same id.
pub fn event_id(job_id: &str, operation: Option<usize>, ty: EventType) -> String {
    let index = operation.map_or_else(|| "job".to_owned(), |i| i.to_string());
    let name = format!("{job_id}\u{1f}{index}\u{1f}{}", ty.as_str());
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// What every event of one job shares.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// `cxrel://{instance}`.
    pub source: String,
    pub job_id: String,
    pub datastore_id: String,
    pub traceparent: Option<String>,
}

/// The per-operation facts of a relationship event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationOutcome {
    pub operation_index: usize,
    pub parent_id: String,
    pub relationship_field: String,
    pub child_ids: Vec<String>,
    /// applied | rejected | failed | rolled_back | unprocessed
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

impl EventContext {
    /// A relationship event (`applied`, `rejected`, `failed`, `rolled_back`) for one operation.
    pub fn relationship(&self, ty: EventType, outcome: &OperationOutcome) -> CloudEvent {
        let mut data = json!({
            "job_id": self.job_id,
            "datastore_id": self.datastore_id,
            "operation_index": outcome.operation_index,
            "parent_id": outcome.parent_id,
            "relationship_field": outcome.relationship_field,
            "child_ids": outcome.child_ids,
        });
        insert_opt(&mut data, "version", outcome.version.map(Value::from));
        insert_opt(&mut data, "code", outcome.code.clone().map(Value::from));
        insert_opt(
            &mut data,
            "message",
            outcome.message.clone().map(Value::from),
        );
        let subject = format!("{}/{}", self.datastore_id, outcome.parent_id);
        self.event(ty, Some(outcome.operation_index), subject, data)
    }

    /// `cxrel.job.completed`, listing every operation's result.
    pub fn job_completed(&self, atomic: bool, operations: &[OperationOutcome]) -> CloudEvent {
        let count = |status: &str| operations.iter().filter(|o| o.status == status).count();
        let data = json!({
            "job_id": self.job_id,
            "datastore_id": self.datastore_id,
            "atomic": atomic,
            "summary": {
                "applied": count("applied"),
                "rejected": count("rejected"),
                "failed": count("failed"),
                "rolled_back": count("rolled_back"),
                "unprocessed": count("unprocessed"),
            },
            "operations": operations,
        });
        self.event(EventType::JobCompleted, None, self.job_subject(), data)
    }

    /// `cxrel.job.dead_lettered`: the job left the pipeline for the dead-letter queue.
    pub fn job_dead_lettered(
        &self,
        code: &str,
        message: &str,
        stage: &str,
        attempts: u64,
    ) -> CloudEvent {
        let data = json!({
            "job_id": self.job_id,
            "datastore_id": self.datastore_id,
            "code": code,
            "message": message,
            "stage": stage,
            "attempts": attempts,
        });
        self.event(EventType::JobDeadLettered, None, self.job_subject(), data)
    }

    fn job_subject(&self) -> String {
        format!("{}/jobs/{}", self.datastore_id, self.job_id)
    }

    fn event(
        &self,
        ty: EventType,
        operation: Option<usize>,
        subject: String,
        data: Value,
    ) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: event_id(&self.job_id, operation, ty),
            source: self.source.clone(),
            ty,
            time: now_rfc3339(),
            subject,
            datacontenttype: "application/json".to_owned(),
            traceparent: self.traceparent.clone(),
            data,
        }
    }
}

fn insert_opt(data: &mut Value, key: &str, value: Option<Value>) {
    if let (Some(map), Some(value)) = (data.as_object_mut(), value) {
        map.insert(key.to_owned(), value);
    }
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> EventContext {
        EventContext {
            source: "cxrel://test".into(),
            job_id: "job-1".into(),
            datastore_id: "accounts".into(),
            traceparent: None,
        }
    }

    fn outcome() -> OperationOutcome {
        OperationOutcome {
            operation_index: 2,
            parent_id: "p".into(),
            relationship_field: "parent_child_link".into(),
            child_ids: vec!["c".into()],
            status: "applied".into(),
            version: Some(4),
            code: None,
            message: None,
        }
    }

    #[test]
    fn the_same_job_operation_and_type_always_give_the_same_id() {
        let a = context().relationship(EventType::Applied, &outcome());
        let b = context().relationship(EventType::Applied, &outcome());
        assert_eq!(a.id, b.id);
        let rejected = context().relationship(EventType::Rejected, &outcome());
        assert_ne!(a.id, rejected.id);
    }

    #[test]
    fn a_relationship_event_carries_the_fields_subscribers_need() {
        let e = context().relationship(EventType::Applied, &outcome());
        let v: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "cxrel.relationship.applied");
        assert_eq!(v["subject"], "accounts/p");
        assert_eq!(v["data"]["job_id"], "job-1");
        assert_eq!(v["data"]["version"], 4);
        assert!(v["data"].get("code").is_none());
        assert!(v.get("traceparent").is_none());
    }

    #[test]
    fn routing_keys_drop_the_cxrel_prefix() {
        assert_eq!(EventType::JobCompleted.routing_key(), "job.completed");
        assert_eq!(
            EventType::RolledBack.routing_key(),
            "relationship.rolled_back"
        );
    }

    #[test]
    fn job_completed_summarises_operation_statuses() {
        let mut rejected = outcome();
        rejected.status = "rejected".into();
        let e = context().job_completed(true, &[outcome(), rejected]);
        assert_eq!(e.data["summary"]["applied"], 1);
        assert_eq!(e.data["summary"]["rejected"], 1);
        assert_eq!(e.data["operations"].as_array().unwrap().len(), 2);
    }
}
