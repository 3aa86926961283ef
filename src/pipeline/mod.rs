//! One job through the pipeline: parse → validate → plan → apply → publish. Each stage lives in its
//! own module; this one orders them, handles 412 revalidation and atomic compensation, and hands the
//! outcome to the worker, which alone acks, retries or dead-letters.

pub mod apply;
pub mod graphs;
pub mod report;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use apply::PatchResult;
use graphs::{DsGraph, GraphCache, LoadError};
use report::OpStatus;

use crate::error::ErrorClass;
use crate::events::EventContext;
use crate::graph::{JobOutcome, OpVerdict, Plan, Verdict, ViolationCode, plan, validate};
use crate::job::{Job, ParseContext};
use crate::store::{StoreClient, StoreError};
use crate::worker::locks::KeyLocks;
use crate::worker::{Failure, IncomingJob, JobHandler, Outcome, Stage};

/// Rounds of validate → apply after 412 answers before the job is retried later.
const CONFLICT_ROUNDS: usize = 3;

pub struct Pipeline {
    parse: ParseContext,
    store: StoreClient,
    graphs: GraphCache,
    locks: KeyLocks,
    /// `cxrel://{instance}`.
    source: String,
    parallel_patches: usize,
}

impl Pipeline {
    pub fn new(
        parse: ParseContext,
        store: StoreClient,
        graphs: GraphCache,
        instance: &str,
        parallel_patches: usize,
    ) -> Self {
        Self {
            parse,
            store,
            graphs,
            locks: KeyLocks::default(),
            source: format!("cxrel://{instance}"),
            parallel_patches,
        }
    }

    async fn handle_job(&self, incoming: IncomingJob) -> Outcome {
        let started = Instant::now();
        let attempt = incoming.previous_attempts + 1;
        let traceparent = Some(incoming.trace.header());
        let parse_context = self.parse.with_message_id(incoming.message_id.as_deref());
        let job = match Job::parse(&incoming.body, &parse_context) {
            Ok(job) => job,
            Err(error) => {
                let context = EventContext {
                    source: self.source.clone(),
                    job_id: unparsed_job_id(&incoming),
                    datastore_id: self.parse.default_datastore.clone().unwrap_or_default(),
                    traceparent,
                };
                tracing::info!(target: "audit", job_id = %context.job_id, outcome = "rejected", code = error.code(), attempt, "job body rejected: {error}");
                let failure =
                    Failure::new(error.code(), error.to_string(), Stage::Parse, error.class());
                return Outcome::failed(context, failure);
            }
        };
        let context = EventContext {
            source: self.source.clone(),
            job_id: job.job_id.clone(),
            datastore_id: job.datastore_id.clone(),
            traceparent,
        };
        let _guard = self.locks.acquire(lock_keys(&job)).await;
        let (statuses, failure) = self.execute(&job).await;
        report::audit(&job, &statuses, started.elapsed(), attempt);
        metrics::histogram!("cxrel_job_duration_seconds").record(started.elapsed().as_secs_f64());
        let (events, final_events) = report::events(&context, &job, &statuses);
        Outcome {
            context,
            events,
            final_events,
            failure,
        }
    }

    /// Validates and applies `job`, revalidating after 412 answers; returns every operation's status
    /// and the job's failure, if any.
    async fn execute(&self, job: &Job) -> (Vec<OpStatus>, Option<Failure>) {
        let ds = job.datastore_id.as_str();
        let unprocessed = || vec![OpStatus::Unprocessed; job.operations.len()];
        for _round in 0..CONFLICT_ROUNDS {
            let entry = match self.graphs.get(ds).await {
                Ok(entry) => entry,
                Err(error) => return (unprocessed(), Some(load_failure(&error))),
            };
            let (verdict, plan) = {
                let graph = entry.read();
                let verdict = validate(&graph, &entry.schema, job);
                let plan = plan(&graph, job, &verdict);
                (verdict, plan)
            };
            if verdict
                .violations
                .iter()
                .any(|v| v.code == ViolationCode::GraphOutdated)
            {
                self.graphs.invalidate(ds);
                continue;
            }
            let mut statuses = verdict_statuses(&verdict);
            let rejection = rejection_failure(&verdict);
            if verdict.outcome() == JobOutcome::Rejected {
                return (statuses, rejection);
            }
            let results = apply::apply(
                &self.store,
                &entry,
                ds,
                &plan,
                self.parallel_patches,
                job.atomic,
            )
            .await;
            let conflicts = conflicted_parents(&plan, &results);
            let failed = first_failure(&results);
            if job.atomic && (failed.is_some() || !conflicts.is_empty()) {
                let failure = self
                    .roll_back(&entry, ds, &plan, &results, &mut statuses, failed)
                    .await;
                if failure.is_some() {
                    return (statuses, failure);
                }
            } else {
                mark_results(&plan, &results, &mut statuses);
                if let Some(error) = failed {
                    return (statuses, Some(apply_failure(error)));
                }
            }
            if conflicts.is_empty() {
                return (statuses, rejection);
            }
            if let Some(failure) = self.refresh(&entry, ds, &conflicts).await {
                return (unprocessed(), Some(failure));
            }
        }
        let failure = Failure::new(
            "version_conflict",
            format!(
                "records kept changing under the job ({CONFLICT_ROUNDS} rounds of 412 answers)"
            ),
            Stage::Apply,
            ErrorClass::Transient,
        );
        (unprocessed(), Some(failure))
    }

    /// Compensates an atomic job whose PATCHes did not all succeed. Returns the job's failure, or
    /// `None` when only 412 conflicts occurred and everything was restored (revalidate and retry).
    async fn roll_back(
        &self,
        entry: &DsGraph,
        ds: &str,
        plan: &Plan,
        results: &[PatchResult],
        statuses: &mut [OpStatus],
        failed: Option<&StoreError>,
    ) -> Option<Failure> {
        let restored =
            apply::compensate(&self.store, entry, ds, plan, results, self.parallel_patches).await;
        let (code, message) = match failed {
            Some(e) => (e.code().to_owned(), e.to_string()),
            None => (
                "version_conflict".to_owned(),
                "a parent changed during the job".to_owned(),
            ),
        };
        let mut compensation_failed = false;
        for ((patch, result), restore) in plan.patches.iter().zip(results).zip(&restored) {
            let status = match (result, restore) {
                (_, Some(PatchResult::Applied { .. }))
                | (PatchResult::Applied { wrote: false, .. }, None) => OpStatus::RolledBack {
                    code: code.clone(),
                    message: message.clone(),
                },
                (_, Some(other)) => {
                    compensation_failed = true;
                    OpStatus::Failed {
                        code: "compensation_failed".to_owned(),
                        message: format!("could not restore {}: {}", patch.parent, describe(other)),
                    }
                }
                (PatchResult::Failed(e), None) => OpStatus::Failed {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                },
                _ => OpStatus::Unprocessed,
            };
            for &i in &patch.operation_indexes {
                if let Some(s) = statuses.get_mut(i) {
                    *s = status.clone();
                }
            }
        }
        if compensation_failed {
            return Some(Failure::new(
                "compensation_failed",
                format!(
                    "the job failed ({message}) and some parents could not be restored; see the job's failed events"
                ),
                Stage::Compensate,
                ErrorClass::Permanent,
            ));
        }
        failed.map(apply_failure)
    }

    /// Re-reads parents that answered 412 so the next round validates against what is stored.
    async fn refresh(&self, entry: &DsGraph, ds: &str, parents: &[String]) -> Option<Failure> {
        for parent in parents {
            match self.graphs.refresh_record(entry, ds, parent).await {
                Ok(()) => {}
                Err(LoadError::Graph(_)) => self.graphs.invalidate(ds),
                Err(error) => return Some(load_failure(&error)),
            }
        }
        None
    }
}

impl JobHandler for Pipeline {
    fn handle(&self, job: IncomingJob) -> impl Future<Output = Outcome> + Send {
        self.handle_job(job)
    }
}

impl<T: JobHandler> JobHandler for Arc<T> {
    fn handle(&self, job: IncomingJob) -> impl Future<Output = Outcome> + Send {
        self.as_ref().handle(job)
    }
}

/// A job id for a body that did not parse: the message id, else a new id (SPEC §1 default).
fn unparsed_job_id(incoming: &IncomingJob) -> String {
    incoming
        .message_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// One lock key per parent the job may write.
fn lock_keys(job: &Job) -> Vec<String> {
    let mut keys: Vec<String> = job
        .operations
        .iter()
        .map(|op| format!("{}/{}", job.datastore_id, op.parent))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn verdict_statuses(verdict: &Verdict) -> Vec<OpStatus> {
    verdict
        .operations
        .iter()
        .map(|op| match op {
            OpVerdict::Rejected(v) => OpStatus::Rejected {
                code: v.code.code().to_owned(),
                message: v.message.clone(),
            },
            _ => OpStatus::Unprocessed,
        })
        .collect()
}

fn rejection_failure(verdict: &Verdict) -> Option<Failure> {
    let first = verdict.first_violation()?;
    Some(Failure::new(
        first.code.code(),
        first.message.clone(),
        Stage::Validate,
        first.code.class(),
    ))
}

fn mark_results(plan: &Plan, results: &[PatchResult], statuses: &mut [OpStatus]) {
    for (patch, result) in plan.patches.iter().zip(results) {
        let status = match result {
            PatchResult::Applied { version, .. } => OpStatus::Applied { version: *version },
            PatchResult::Failed(e) => OpStatus::Failed {
                code: e.code().to_owned(),
                message: e.to_string(),
            },
            PatchResult::Conflict | PatchResult::NotSent => OpStatus::Unprocessed,
        };
        for &i in &patch.operation_indexes {
            if let Some(s) = statuses.get_mut(i) {
                *s = status.clone();
            }
        }
    }
}

fn conflicted_parents(plan: &Plan, results: &[PatchResult]) -> Vec<String> {
    plan.patches
        .iter()
        .zip(results)
        .filter(|(_, r)| matches!(r, PatchResult::Conflict))
        .map(|(p, _)| p.parent.as_str().to_owned())
        .collect()
}

fn first_failure(results: &[PatchResult]) -> Option<&StoreError> {
    results.iter().find_map(|r| match r {
        PatchResult::Failed(e) => Some(e),
        _ => None,
    })
}

fn describe(result: &PatchResult) -> String {
    match result {
        PatchResult::Applied { .. } => "restored".to_owned(),
        PatchResult::Conflict => "the record changed again (412)".to_owned(),
        PatchResult::Failed(e) => e.to_string(),
        PatchResult::NotSent => "not sent".to_owned(),
    }
}

fn apply_failure(error: &StoreError) -> Failure {
    Failure::new(error.code(), error.to_string(), Stage::Apply, error.class())
}

fn load_failure(error: &LoadError) -> Failure {
    let (code, class) = match error {
        LoadError::Store(e) => (e.code(), e.class()),
        LoadError::Graph(e) => (e.code(), e.class()),
    };
    Failure::new(
        code,
        format!("loading the data store: {error}"),
        Stage::Validate,
        class,
    )
}
