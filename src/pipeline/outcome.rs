//! What goes into the pipeline (one job message) and what comes out: the events it produced and,
//! if it failed, how (code, stage, class). The pipeline decides the outcome; the worker's `settle`
//! alone turns it into broker actions.

use tokio_util::sync::CancellationToken;

use crate::error::ErrorClass;
use crate::events::{CloudEvent, EventContext};
use crate::trace::TraceParent;

/// One job message as the pipeline sees it.
#[derive(Debug)]
pub struct IncomingJob {
    pub body: Vec<u8>,
    /// The job id unless the body names one: fixed at first sight (see [`identity`]).
    pub default_job_id: String,
    /// Attempts made before this one (from `x-cxrel-attempts`).
    pub previous_attempts: u64,
    /// Replays from the dead letters so far (`x-cxrel-replay-count`).
    pub replay: u64,
    pub redelivered: bool,
    /// This job's span in the caller's trace (or a new trace).
    pub trace: TraceParent,
    /// Cancelled when this worker's consume session ends (it may have lost the single-active
    /// consumer slot to another replica): no new write may start after that.
    pub lease: CancellationToken,
    /// Where the job records its write intents (the session's log).
    pub journal: super::intent::Journal,
    /// Its place in line for its parents, drawn when it was delivered.
    pub turn: super::Turn,
}

/// Where in the pipeline a job failed (the `x-cxrel-stage` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Parse,
    Validate,
    Apply,
    Compensate,
    /// The job could not be settled (the broker refused its successor, or it was delivered
    /// `[amqp].delivery_limit` times without being settled).
    Settle,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Validate => "validate",
            Self::Apply => "apply",
            Self::Compensate => "compensate",
            Self::Settle => "settle",
        }
    }
}

/// A job-level failure with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub stage: Stage,
    pub class: ErrorClass,
}

impl Failure {
    pub fn new(
        code: impl Into<String>,
        message: impl Into<String>,
        stage: Stage,
        class: ErrorClass,
    ) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            stage,
            class,
        }
    }
}

/// The result of handling one delivery.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Identifies the job in headers, events and logs.
    pub context: EventContext,
    /// Published whatever happens next (applied, rejected, rolled_back events).
    pub events: Vec<CloudEvent>,
    /// Published only if the job ends here (completed or dead-lettered), not when it is retried:
    /// per-operation `failed` events and `job.completed`.
    pub final_events: Vec<CloudEvent>,
    pub failure: Option<Failure>,
}

impl Outcome {
    pub fn done(context: EventContext, events: Vec<CloudEvent>) -> Self {
        Self {
            context,
            events,
            final_events: Vec::new(),
            failure: None,
        }
    }

    pub fn failed(context: EventContext, failure: Failure) -> Self {
        Self {
            context,
            events: Vec::new(),
            final_events: Vec::new(),
            failure: Some(failure),
        }
    }
}
