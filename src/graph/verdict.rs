//! What validation decided: per-operation verdicts, the violations found, the job's outcome.

use serde::Serialize;

use crate::error::ErrorClass;
use crate::job::RecordId;

/// The rules of SPEC §2, in precedence order: when one operation breaks several rules, the first
/// one in this order is the one reported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationCode {
    UnknownField,
    NotRelationshipField,
    RecordNotFound,
    DuplicateChild,
    CycleDetected,
    MaxChildrenExceeded,
    ParentConflict,
    OwnershipConflict,
    MaxDepthExceeded,
    /// The schema handed to `validate` is not the one the graph was built for: rebuild, retry.
    GraphOutdated,
}

impl ViolationCode {
    pub fn code(self) -> &'static str {
        match self {
            ViolationCode::UnknownField => "unknown_field",
            ViolationCode::NotRelationshipField => "not_relationship_field",
            ViolationCode::RecordNotFound => "record_not_found",
            ViolationCode::DuplicateChild => "duplicate_child",
            ViolationCode::CycleDetected => "cycle_detected",
            ViolationCode::MaxChildrenExceeded => "max_children_exceeded",
            ViolationCode::ParentConflict => "parent_conflict",
            ViolationCode::OwnershipConflict => "ownership_conflict",
            ViolationCode::MaxDepthExceeded => "max_depth_exceeded",
            ViolationCode::GraphOutdated => "graph_outdated",
        }
    }

    /// Broken rules are permanent; an outdated graph is cured by rebuilding it.
    pub fn class(self) -> ErrorClass {
        match self {
            ViolationCode::GraphOutdated => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// One broken rule, with the records and operations (indexes in the job) involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub code: ViolationCode,
    pub message: String,
    pub records: Vec<RecordId>,
    pub operations: Vec<usize>,
}

/// The fate of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpVerdict {
    /// Valid; it will be applied.
    Accepted,
    /// Breaks a rule (the first in precedence order).
    Rejected(Violation),
    /// Valid on its own, but its atomic job was rejected because of other operations.
    Blocked,
}

impl OpVerdict {
    pub fn is_accepted(&self) -> bool {
        matches!(self, OpVerdict::Accepted)
    }

    pub fn code(&self) -> Option<ViolationCode> {
        match self {
            OpVerdict::Rejected(v) => Some(v.code),
            _ => None,
        }
    }
}

/// The job as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// Every operation is accepted.
    Accepted,
    /// Non-atomic job: some operations accepted, some rejected.
    Partial,
    /// Nothing will be written.
    Rejected,
}

/// The validator's answer: one verdict per operation (job order) and every violation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub atomic: bool,
    pub operations: Vec<OpVerdict>,
    /// All violations, sorted by precedence; for an atomic job these are the reasons it failed.
    pub violations: Vec<Violation>,
}

impl Verdict {
    pub fn outcome(&self) -> JobOutcome {
        let accepted = self.operations.iter().filter(|o| o.is_accepted()).count();
        match accepted {
            n if n == self.operations.len() && n > 0 => JobOutcome::Accepted,
            0 => JobOutcome::Rejected,
            _ => JobOutcome::Partial,
        }
    }

    /// Nothing will be written: an atomic job that broke a rule, or no operation accepted.
    pub fn is_rejected(&self) -> bool {
        self.outcome() == JobOutcome::Rejected
    }

    /// The first violation in precedence order: what a rejected job is dead-lettered with.
    pub fn first_violation(&self) -> Option<&Violation> {
        self.violations.first()
    }

    /// Indexes of the operations that will be applied.
    pub fn accepted(&self) -> impl Iterator<Item = usize> + '_ {
        self.operations
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_accepted())
            .map(|(i, _)| i)
    }
}
