//! Result events (SPEC §6): CloudEvents 1.0 in structured JSON, with ids derived from
//! (job_id, operation index, type) so a redelivered job repeats the same ids and subscribers can
//! drop duplicates; a job replayed from the dead letters adds its replay number (a new run).
//! Routing key on the events exchange = type without the `cxrel.` prefix.
//! The `data` shapes are typed structs, so `cxrel schema event` derives its schemas from them.

use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Namespace of event ids (UUIDv5); fixed forever so ids stay stable across versions.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a0c_51f5_8c3e_4d0b_9f5e_2b1d_7c4a_9e11);

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// CloudEvents `datacontenttype`: `data` is JSON.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// AMQP `content_type` (and webhook `Content-Type`) of a structured-mode CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The CloudEvents `type` of a result event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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

/// One CloudEvent 1.0 in structured mode: the whole event is the JSON message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Derived from (job_id, operation index, type): a redelivered or retried job repeats it, so
    /// subscribers can drop duplicates by id. A job replayed from the dead letters is a new run:
    /// its replay number (`x-cxrel-replay-count`) is part of the id.
    pub id: String,
    /// `cxrel://{[worker].instance}`.
    pub source: String,
    #[serde(rename = "type")]
    pub ty: EventType,
    /// When the event was built, RFC 3339 UTC.
    pub time: String,
    /// `{datastore_id}/{parent_id}` for relationship events, `{datastore_id}/jobs/{job_id}` for
    /// job events (`/jobs/{job_id}` when the body named no data store that could be read). A data
    /// store id never holds `/` while a job id may, so split at the first slashes only; `data`
    /// carries each id on its own.
    pub subject: String,
    /// Always `application/json`.
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

/// The stable id of an event: the same job, operation and type always give the same id, within
/// one run of the job. `replay` is how often an operator replayed the job from the dead letters
/// (0 for its first run, whose ids it leaves as they always were): a replay is a new run whose
/// outcome may differ, so its events must not be dropped as duplicates of the failed run's.
pub fn event_id(job_id: &str, operation: Option<usize>, ty: EventType, replay: u64) -> String {
    let index = operation.map_or_else(|| "job".to_owned(), |i| i.to_string());
    let mut name = format!("{job_id}\u{1f}{index}\u{1f}{}", ty.as_str());
    if replay > 0 {
        name.push_str(&format!("\u{1f}replay {replay}"));
    }
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
    /// Replays of the job so far (`x-cxrel-replay-count`); part of its event ids.
    pub replay: u64,
}

/// The result of one operation, as listed in `cxrel.job.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperationOutcome {
    /// Position of the operation in the job, from 0.
    pub operation_index: usize,
    pub parent_id: String,
    pub relationship_field: String,
    pub child_ids: Vec<String>,
    /// applied | rejected | failed | rolled_back | unprocessed
    // A string in the schema (the contract constrains it to `OutcomeStatus::ALL`), as it always was.
    #[schemars(with = "String")]
    pub status: OutcomeStatus,
    /// The parent record's new `_version`, when applied.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u64>,
    /// Stable snake_case error code, when not applied.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    /// What went wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

/// How one operation ended: `OperationOutcome.status`, and the key it is counted under in
/// `OutcomeSummary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Applied,
    Rejected,
    Failed,
    RolledBack,
    Unprocessed,
}

impl OutcomeStatus {
    pub const ALL: [Self; 5] = [
        Self::Applied,
        Self::Rejected,
        Self::Failed,
        Self::RolledBack,
        Self::Unprocessed,
    ];

    /// The wire name, also the audit log's `outcome` and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Unprocessed => "unprocessed",
        }
    }
}

/// `data` of `cxrel.relationship.applied`, `.rejected`, `.failed` and `.rolled_back`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RelationshipData {
    pub job_id: String,
    pub datastore_id: String,
    /// Position of the operation in the job, from 0.
    pub operation_index: usize,
    pub parent_id: String,
    pub relationship_field: String,
    pub child_ids: Vec<String>,
    /// The parent record's new `_version` (applied).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u64>,
    /// Stable snake_case error code (rejected, failed, rolled back).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    /// What went wrong, for people (rejected, failed, rolled back).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

/// `data` of `cxrel.job.completed`: every operation's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobCompletedData {
    pub job_id: String,
    pub datastore_id: String,
    pub atomic: bool,
    pub summary: OutcomeSummary,
    /// One entry per operation, in job order.
    pub operations: Vec<OperationOutcome>,
}

/// How many operations ended in each status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeSummary {
    pub applied: usize,
    pub rejected: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub unprocessed: usize,
}

/// `data` of `cxrel.job.dead_lettered`: the job went to `{prefix}.dead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobDeadLetteredData {
    pub job_id: String,
    /// Empty when the body did not parse far enough to name one.
    pub datastore_id: String,
    /// The `x-cxrel-error-code` of the dead letter.
    pub code: String,
    pub message: String,
    /// parse | validate | apply | compensate
    pub stage: String,
    /// Deliveries made, this one included.
    pub attempts: u64,
}

impl EventContext {
    /// A relationship event (`applied`, `rejected`, `failed`, `rolled_back`) for one operation.
    pub fn relationship(&self, ty: EventType, outcome: &OperationOutcome) -> CloudEvent {
        let data = to_data(&RelationshipData {
            job_id: self.job_id.clone(),
            datastore_id: self.datastore_id.clone(),
            operation_index: outcome.operation_index,
            parent_id: outcome.parent_id.clone(),
            relationship_field: outcome.relationship_field.clone(),
            child_ids: outcome.child_ids.clone(),
            version: outcome.version,
            code: outcome.code.clone(),
            message: outcome.message.clone(),
        });
        let subject = format!("{}/{}", self.datastore_id, outcome.parent_id);
        self.event(ty, Some(outcome.operation_index), subject, data)
    }

    /// `cxrel.job.completed`, listing every operation's result.
    pub fn job_completed(&self, atomic: bool, operations: &[OperationOutcome]) -> CloudEvent {
        let count = |status| operations.iter().filter(|o| o.status == status).count();
        let data = to_data(&JobCompletedData {
            job_id: self.job_id.clone(),
            datastore_id: self.datastore_id.clone(),
            atomic,
            summary: OutcomeSummary {
                applied: count(OutcomeStatus::Applied),
                rejected: count(OutcomeStatus::Rejected),
                failed: count(OutcomeStatus::Failed),
                rolled_back: count(OutcomeStatus::RolledBack),
                unprocessed: count(OutcomeStatus::Unprocessed),
            },
            operations: operations.to_vec(),
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
        let data = to_data(&JobDeadLetteredData {
            job_id: self.job_id.clone(),
            datastore_id: self.datastore_id.clone(),
            code: code.to_owned(),
            message: message.to_owned(),
            stage: stage.to_owned(),
            attempts,
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
            specversion: SPEC_VERSION.to_owned(),
            id: event_id(&self.job_id, operation, ty, self.replay),
            source: self.source.clone(),
            ty,
            time: now_rfc3339(),
            subject,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            traceparent: self.traceparent.clone(),
            data,
        }
    }
}

/// A data struct as JSON; structs of strings and numbers always serialize.
fn to_data<T: Serialize>(data: &T) -> Value {
    serde_json::to_value(data).unwrap_or_default()
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    impl EventContext {
        fn job_completed_id(&self) -> String {
            event_id(&self.job_id, None, EventType::JobCompleted, self.replay)
        }
    }

    fn context() -> EventContext {
        EventContext {
            source: "cxrel://test".into(),
            job_id: "job-1".into(),
            datastore_id: "accounts".into(),
            traceparent: None,
            replay: 0,
        }
    }

    fn outcome() -> OperationOutcome {
        OperationOutcome {
            operation_index: 2,
            parent_id: "p".into(),
            relationship_field: "parent_child_link".into(),
            child_ids: vec!["c".into()],
            status: OutcomeStatus::Applied,
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
    fn a_replayed_job_gets_new_ids_that_its_redeliveries_repeat() {
        let first = context().job_completed_id();
        let replayed = EventContext {
            replay: 1,
            ..context()
        };
        assert_ne!(replayed.job_completed_id(), first);
        assert_eq!(
            replayed.job_completed_id(),
            replayed.clone().job_completed_id()
        );
        assert_ne!(
            EventContext {
                replay: 2,
                ..context()
            }
            .job_completed_id(),
            replayed.job_completed_id()
        );
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
    fn typed_data_serializes_to_the_documented_keys_only() {
        use serde_json::json;
        let mut rejected = outcome();
        rejected.version = None;
        rejected.code = Some("cycle_detected".into());
        rejected.message = Some("p → c → p".into());
        let e = context().relationship(EventType::Rejected, &rejected);
        let expected = json!({"job_id": "job-1", "datastore_id": "accounts",
            "operation_index": 2, "parent_id": "p", "relationship_field": "parent_child_link",
            "child_ids": ["c"], "code": "cycle_detected", "message": "p → c → p"});
        assert_eq!(e.data, expected);
        let dead = context().job_dead_lettered("invalid_job", "bad", "parse", 1);
        let expected = json!({"job_id": "job-1", "datastore_id": "accounts",
            "code": "invalid_job", "message": "bad", "stage": "parse", "attempts": 1});
        assert_eq!(dead.data, expected);
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
        rejected.status = OutcomeStatus::Rejected;
        let e = context().job_completed(true, &[outcome(), rejected]);
        assert_eq!(e.data["summary"]["applied"], 1);
        assert_eq!(e.data["summary"]["rejected"], 1);
        assert_eq!(e.data["operations"].as_array().unwrap().len(), 2);
    }
}
