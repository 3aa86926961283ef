//! Why a job message cannot be parsed: one enum, stable snake_case codes, all permanent.

use crate::error::ErrorClass;

/// A job body that will never become valid by retrying. `path` is a JSON path such as
/// `$.operations[2].child_ids[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job body is {size} bytes, above the limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("job has {count} operations, above the limit of {limit}")]
    TooManyOperations { count: usize, limit: usize },
    #[error("{path}: {count} child ids, above the limit of {limit}")]
    TooManyChildren {
        path: String,
        count: usize,
        limit: usize,
    },
    #[error("{path}: {reason}")]
    InvalidJob { path: String, reason: String },
    #[error("{path}: {reason}")]
    InvalidId { path: String, reason: String },
}

impl JobError {
    /// Stable code for dead-letter headers and events.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::PayloadTooLarge { .. } => "payload_too_large",
            JobError::TooManyOperations { .. } => "too_many_operations",
            JobError::TooManyChildren { .. } => "too_many_children",
            JobError::InvalidJob { .. } => "invalid_job",
            JobError::InvalidId { .. } => "invalid_id",
        }
    }

    /// Every parse error is permanent: the same body fails the same way on every delivery.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }

    /// The JSON path of the problem, when there is one.
    pub fn path(&self) -> Option<&str> {
        match self {
            JobError::TooManyChildren { path, .. }
            | JobError::InvalidJob { path, .. }
            | JobError::InvalidId { path, .. } => Some(path),
            _ => None,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        JobError::InvalidJob {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
