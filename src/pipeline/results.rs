//! The publish stage's input: per-operation results turned into result events (SPEC §6), one audit
//! log line per operation (target `audit`) and operation counters.

use std::time::Duration;

use super::Failure;
use crate::events::{CloudEvent, EventContext, EventType, OperationOutcome, OutcomeStatus};
use crate::job::Job;

/// The fate of one operation, before it becomes an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStatus {
    Applied { version: u64 },
    Rejected { code: String, message: String },
    Failed { code: String, message: String },
    RolledBack { code: String, message: String },
    Unprocessed,
}

impl OpStatus {
    fn outcome(&self) -> OutcomeStatus {
        match self {
            Self::Applied { .. } => OutcomeStatus::Applied,
            Self::Rejected { .. } => OutcomeStatus::Rejected,
            Self::Failed { .. } => OutcomeStatus::Failed,
            Self::RolledBack { .. } => OutcomeStatus::RolledBack,
            Self::Unprocessed => OutcomeStatus::Unprocessed,
        }
    }

    fn event_type(&self) -> Option<EventType> {
        match self {
            Self::Applied { .. } => Some(EventType::Applied),
            Self::Rejected { .. } => Some(EventType::Rejected),
            Self::Failed { .. } => Some(EventType::Failed),
            Self::RolledBack { .. } => Some(EventType::RolledBack),
            Self::Unprocessed => None,
        }
    }

    fn code_and_message(&self) -> (Option<String>, Option<String>) {
        match self {
            Self::Rejected { code, message }
            | Self::Failed { code, message }
            | Self::RolledBack { code, message } => (Some(code.clone()), Some(message.clone())),
            _ => (None, None),
        }
    }
}

/// Every operation's outcome for the events, in job order. An operation left unprocessed carries
/// the job's failure, if any, as its code (why it was not processed: SPEC §6 wants codes).
pub fn outcomes(
    job: &Job,
    statuses: &[OpStatus],
    failure: Option<&Failure>,
) -> Vec<OperationOutcome> {
    job.operations
        .iter()
        .zip(statuses)
        .enumerate()
        .map(|(i, (op, status))| {
            let (code, message) = match (status, failure) {
                (OpStatus::Unprocessed, Some(f)) => (Some(f.code.clone()), Some(f.message.clone())),
                _ => status.code_and_message(),
            };
            OperationOutcome {
                operation_index: i,
                parent_id: op.parent.as_str().to_owned(),
                relationship_field: op.field.as_str().to_owned(),
                child_ids: op.children.iter().map(|c| c.as_str().to_owned()).collect(),
                status: status.outcome(),
                version: match status {
                    OpStatus::Applied { version } => Some(*version),
                    _ => None,
                },
                code,
                message,
            }
        })
        .collect()
}

/// Relationship events for the operations whose status has one, plus `job.completed`.
/// Returns (events published in any case, events published only if the job ends here).
pub fn events(
    context: &EventContext,
    job: &Job,
    statuses: &[OpStatus],
    failure: Option<&Failure>,
) -> (Vec<CloudEvent>, Vec<CloudEvent>) {
    let outcomes = outcomes(job, statuses, failure);
    let mut now = Vec::new();
    let mut at_end = Vec::new();
    for (outcome, status) in outcomes.iter().zip(statuses) {
        let Some(ty) = status.event_type() else {
            continue;
        };
        let event = context.relationship(ty, outcome);
        // A failure may still be retried; only its last attempt reports `failed`.
        if ty == EventType::Failed {
            at_end.push(event);
        } else {
            now.push(event);
        }
    }
    at_end.push(context.job_completed(job.atomic, &outcomes));
    (now, at_end)
}

/// One structured audit line and one counter per operation.
pub fn audit(
    job: &Job,
    statuses: &[OpStatus],
    failure: Option<&Failure>,
    latency: Duration,
    attempt: u64,
) {
    for (i, (op, status)) in job.operations.iter().zip(statuses).enumerate() {
        // An operation left unprocessed carries the job's failure, the reason it was not done.
        let (code, _) = status.code_and_message();
        let code = code.or_else(|| failure.map(|f| f.code.clone()));
        tracing::info!(
            target: "audit",
            job_id = %job.job_id,
            datastore = %job.datastore_id,
            operation = i,
            record = %op.parent,
            field = %op.field,
            outcome = status.outcome().as_str(),
            code = code.as_deref().unwrap_or(""),
            latency_ms = latency.as_millis() as u64,
            attempt,
        );
        metrics::counter!("cxrel_operations_total", "outcome" => status.outcome().as_str())
            .increment(1);
    }
}
