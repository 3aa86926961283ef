//! One job through the pipeline: parse → validate → plan → apply → publish. Each stage lives in its
//! own module; this one orders them, handles 412 revalidation and atomic compensation, and hands the
//! outcome to the worker, which alone acks, retries or dead-letters.

pub mod apply;
pub mod datastore;
pub mod datastores;
pub mod intent;
pub mod locks;
pub mod outcome;
pub mod results;

pub use outcome::{Failure, IncomingJob, Outcome, Stage};

use std::sync::Arc;
use std::time::Instant;

use apply::PatchResult;
use datastore::{Check, LiveDataStore};
use datastores::{DataStores, LoadError};
use intent::{Intent, IntentId, Journal, Leftover};
use results::OpStatus;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorClass;
use crate::events::EventContext;
use crate::graph::{JobOutcome, OpVerdict, Plan, Verdict, Violation};
use crate::job::{Job, ParseContext};
use crate::store::{StoreClient, StoreError};
use locks::KeyLocks;
pub use locks::Turn;

/// Rounds of validate → apply after 412 answers before the job is retried later.
const CONFLICT_ROUNDS: usize = 3;
/// Longest one delivery may spend waiting for pending jobs in all. Bounded by time, not count:
/// each wait ends when *any* reservation is released, so the count grows with the jobs in flight.
const MAX_WAITING: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest single wait for a pending job (a PATCH that hangs is bounded by the client's timeouts).
const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Graph reloads one delivery may trigger.
const MAX_RELOADS: usize = 3;

/// One job's way from message to outcome: parse, check and reserve against the data store's live
/// state, confirm rejections, apply, compensate. Holds the per-parent locks and every data store's
/// [`LiveDataStore`]; the worker's consumer drives it and settles what it returns.
pub struct Pipeline {
    parse: ParseContext,
    store: StoreClient,
    datastores: Arc<DataStores>,
    locks: KeyLocks,
    /// `cxrel://{instance}`.
    source: String,
    parallel_patches: usize,
}

impl Pipeline {
    pub fn new(
        parse: ParseContext,
        store: StoreClient,
        datastores: Arc<DataStores>,
        instance: &str,
        parallel_patches: usize,
    ) -> Self {
        Self {
            parse,
            store,
            datastores,
            locks: KeyLocks::default(),
            source: format!("cxrel://{instance}"),
            parallel_patches,
        }
    }

    /// Forgets every data store's graph (the worker became the jobs queue's active consumer).
    pub async fn forget_graphs(&self) {
        self.datastores.forget_all().await;
    }

    /// Puts back what a replica that died mid-job left written (see [`intent`]); no write starts
    /// once `lease` is cancelled.
    pub async fn restore_leftover(&self, intent: &Intent, lease: &CancellationToken) -> Leftover {
        intent::restore_leftover(&self.store.with_lease(lease.clone()), intent).await
    }

    /// The next delivery's place in line for its parents (see [`locks`]): draw it in delivery
    /// order, before the job is handed to its task.
    pub fn turn(&self) -> Turn {
        self.locks.turn()
    }

    /// Runs one job message through every stage to its outcome.
    pub async fn handle_job(&self, incoming: IncomingJob) -> Outcome {
        let started = Instant::now();
        let attempt = incoming.previous_attempts + 1;
        let traceparent = Some(incoming.trace.header());
        let parse_context = self.parse.with_message_id(Some(&incoming.default_job_id));
        let job = match Job::parse(&incoming.body, &parse_context) {
            Ok(job) => job,
            Err(error) => {
                let context = EventContext {
                    source: self.source.clone(),
                    job_id: unparsed_job_id(&incoming),
                    datastore_id: unparsed_datastore_id(&incoming.body)
                        .or_else(|| self.parse.default_datastore.clone())
                        .unwrap_or_default(),
                    traceparent,
                    replay: incoming.replay,
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
            replay: incoming.replay,
        };
        let _guard = incoming.turn.acquire(lock_keys(&job)).await;
        let (statuses, failure) = self.execute(&job, &incoming.lease, &incoming.journal).await;
        results::audit(
            &job,
            &statuses,
            failure.as_ref(),
            started.elapsed(),
            attempt,
        );
        metrics::histogram!("cxrel_job_duration_seconds").record(started.elapsed().as_secs_f64());
        let (events, final_events) = results::events(&context, &job, &statuses, failure.as_ref());
        Outcome {
            context,
            events,
            final_events,
            failure,
        }
    }

    /// Checks and applies `job`: validation and reservation in one step against committed +
    /// reserved state, waits while the verdict depends on jobs being written, confirms rejections
    /// against the store, and revalidates after 412 answers. Returns every operation's status and
    /// the job's failure, if any.
    async fn execute(
        &self,
        job: &Job,
        lease: &CancellationToken,
        journal: &Journal,
    ) -> (Vec<OpStatus>, Option<Failure>) {
        let mut decided = vec![None; job.operations.len()];
        let (mut statuses, failure) = self.rounds(job, lease, journal, &mut decided).await;
        // Decided in an earlier round (written and kept, or written and undone after a 412),
        // then not decided again because a later round ended the job first (its 412s kept
        // coming, a refresh failed): the report says what the store holds from this job.
        for (status, earlier) in statuses.iter_mut().zip(decided) {
            if let (OpStatus::Unprocessed, Some(earlier)) = (&*status, earlier) {
                *status = earlier;
            }
        }
        (statuses, failure)
    }

    /// The rounds of [`execute`](Self::execute); `decided` keeps each operation's last decided
    /// write (applied and kept, or rolled back) from the rounds before the last.
    async fn rounds(
        &self,
        job: &Job,
        lease: &CancellationToken,
        journal: &Journal,
        decided: &mut [Option<OpStatus>],
    ) -> (Vec<OpStatus>, Option<Failure>) {
        let unprocessed = || vec![OpStatus::Unprocessed; job.operations.len()];
        let datastore = job.datastore_id.as_str();
        let mut live = match self.datastores.get(datastore).await {
            Ok(live) => live,
            Err(error) => return (unprocessed(), Some(load_failure(&error))),
        };
        let mut confirmed = false;
        let mut rounds = Rounds::default();
        loop {
            let (verdict, plan, reservation) = match live.check(job) {
                Check::Ready {
                    verdict,
                    plan,
                    reservation,
                } => (verdict, plan, reservation),
                Check::Wait(generation) => {
                    if let Some(failure) = rounds.wait() {
                        return (unprocessed(), Some(failure));
                    }
                    live.settled_after(generation, WAIT_LIMIT).await;
                    continue;
                }
                Check::Outdated => {
                    if let Some(failure) = rounds.reload() {
                        return (unprocessed(), Some(failure));
                    }
                    match self.datastores.get(datastore).await {
                        Ok(fresh) => live = fresh,
                        Err(error) => return (unprocessed(), Some(load_failure(&error))),
                    }
                    continue;
                }
            };
            if !verdict.violations.is_empty() && !confirmed {
                // Rejections are only as good as the cache: read what they rest on, then recheck.
                drop(reservation);
                confirmed = true;
                match self.datastores.confirm(&live, &verdict).await {
                    Ok(fresh) => live = fresh,
                    Err(error) => return (unprocessed(), Some(load_failure(&error))),
                }
                continue;
            }
            let mut statuses = verdict_statuses(&verdict);
            let rejection = rejection_failure(&verdict);
            if verdict.outcome() == JobOutcome::Rejected {
                return (statuses, rejection);
            }
            let intent = match record_intent(journal, Intent::of(job, &live, &plan)).await {
                Ok(intent) => intent,
                Err(failure) => return (statuses, Some(failure)),
            };
            let results = apply::apply(
                &self.store,
                &live,
                &plan,
                self.parallel_patches,
                job.atomic,
                lease,
            )
            .await;
            if lease.is_cancelled() {
                // Another replica owns the queue now and gets the job again (and the intent, to
                // undo what landed): write nothing more.
                return (unprocessed(), Some(lease_lost()));
            }
            let conflicts = conflicted_parents(&plan, &results);
            let failed = first_failure(&results);
            let ended = if job.atomic && (failed.is_some() || !conflicts.is_empty()) {
                self.roll_back(&live, &plan, &results, &mut statuses, failed, lease)
                    .await
            } else {
                mark_results(&plan, &results, &mut statuses);
                self.undo_unsupported(&live, job, &plan, &results, &mut statuses, lease)
                    .await
                    .or_else(|| failed.map(apply_failure))
            };
            if lease.is_cancelled() {
                // The next owner runs the job again (restoring an atomic one's leftovers from its
                // intent first): report nothing of this attempt.
                return (unprocessed(), Some(lease_lost()));
            }
            remember_decided(decided, &statuses);
            // The writes are decided (landed or undone): the intent goes before the job is acked.
            if let Err(failure) = release_intent(journal, intent).await {
                return (statuses, Some(failure));
            }
            if ended.is_some() {
                // The retry then validates against what the 412s said is stored.
                let _ = self.refresh(&live, &conflicts).await;
                return (statuses, ended);
            }
            drop(reservation);
            if conflicts.is_empty() {
                return (statuses, rejection);
            }
            if let Some(failure) = rounds.conflict() {
                return (unprocessed(), Some(failure));
            }
            if let Some(failure) = self.refresh(&live, &conflicts).await {
                return (unprocessed(), Some(failure));
            }
        }
    }

    /// Compensates an atomic job whose PATCHes did not all succeed. Returns the job's failure, or
    /// `None` when only 412 conflicts occurred and everything was restored (revalidate and retry).
    async fn roll_back(
        &self,
        live: &LiveDataStore,
        plan: &Plan,
        results: &[PatchResult],
        statuses: &mut [OpStatus],
        failed: Option<&StoreError>,
        lease: &CancellationToken,
    ) -> Option<Failure> {
        let restored = apply::compensate(
            &self.store,
            live,
            plan,
            results,
            self.parallel_patches,
            lease,
        )
        .await;
        let (code, message) = match failed {
            Some(e) => (write_code(e).to_owned(), e.to_string()),
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
                    code: write_code(e).to_owned(),
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
            return Some(compensation_failure(format!(
                "the job failed ({message}) and some parents could not be restored; see the job's failed events"
            )));
        }
        failed.map(apply_failure)
    }

    /// A non-atomic job written in part: undoes each landed PATCH whose operations were accepted
    /// only thanks to one that did not land (module [`crate::graph`]'s recheck), reporting them
    /// rolled back. Returns a failure only when such a write could not be undone.
    async fn undo_unsupported(
        &self,
        live: &LiveDataStore,
        job: &Job,
        plan: &Plan,
        results: &[PatchResult],
        statuses: &mut [OpStatus],
        lease: &CancellationToken,
    ) -> Option<Failure> {
        let written: Vec<bool> = results
            .iter()
            .map(|r| matches!(r, PatchResult::Applied { wrote: true, .. }))
            .collect();
        let partial = results
            .iter()
            .any(|r| !matches!(r, PatchResult::Applied { .. }));
        if !partial || !written.contains(&true) {
            return None;
        }
        let crate::graph::Unsupported {
            patches: undo,
            refused,
        } = live.unsupported_writes(job, plan, &written);
        if undo.is_empty() {
            return None;
        }
        let targets: Vec<PatchResult> = results
            .iter()
            .enumerate()
            .map(|(i, r)| match undo.contains(&i) {
                true => r.clone(),
                false => PatchResult::NotSent,
            })
            .collect();
        let restored = apply::compensate(
            &self.store,
            live,
            plan,
            &targets,
            self.parallel_patches,
            lease,
        )
        .await;
        let why = unwritten_reason(plan, results);
        let mut stuck = Vec::new();
        for &i in &undo {
            let (Some(patch), Some(restore)) = (plan.patches.get(i), restored.get(i)) else {
                continue;
            };
            let undone = matches!(restore, Some(PatchResult::Applied { .. }));
            if !undone {
                stuck.push(patch.parent.as_str().to_owned());
            }
            for &op in &patch.operation_indexes {
                let status = undone_status(op, refused.contains(&op), undone, &why, restore);
                if let Some(s) = statuses.get_mut(op) {
                    *s = status;
                }
            }
        }
        tracing::warn!(job_id = %job.job_id, undone = undo.len() - stuck.len(), stuck = stuck.len(), "a partly written job's writes that relied on an unwritten one were undone");
        (!stuck.is_empty()).then(|| {
            compensation_failure(format!(
                "the job was written in part ({why}) and what relied on the rest could not be undone on {}; see the job's failed events",
                stuck.join(", ")
            ))
        })
    }

    /// Re-reads parents that answered 412 so the next round validates against what is stored.
    async fn refresh(&self, live: &LiveDataStore, parents: &[String]) -> Option<Failure> {
        for parent in parents {
            if let Err(error) = self.datastores.refresh_record(live, parent).await {
                return Some(load_failure(&error));
            }
        }
        None
    }
}

/// Notes each operation a round decided: written and kept (applied), or written and undone
/// (rolled back). A later round's decision replaces an earlier one, so an operation undone in one
/// round and written again in the next is reported applied. A write a later round tried again
/// and did not land (its parent changed meanwhile) is forgotten: the store may no longer hold it.
fn remember_decided(decided: &mut [Option<OpStatus>], statuses: &[OpStatus]) {
    for (slot, status) in decided.iter_mut().zip(statuses) {
        match status {
            OpStatus::RolledBack { .. } | OpStatus::Applied { .. } => *slot = Some(status.clone()),
            OpStatus::Unprocessed if matches!(slot, Some(OpStatus::Applied { .. })) => *slot = None,
            _ => {}
        }
    }
}

/// A job id for a body that did not parse: its own `job_id` if readable, else the default.
fn unparsed_job_id(incoming: &IncomingJob) -> String {
    job_id_of_unparsed(&incoming.body, &incoming.default_job_id)
}

/// The `job_id` a body that did not parse declares (one the parser would accept), else `default`.
pub fn job_id_of_unparsed(body: &[u8], default: &str) -> String {
    std::str::from_utf8(body)
        .ok()
        .and_then(crate::jobfile::declared_job_id)
        .unwrap_or_else(|| default.to_owned())
}

/// The data store an unparsable body names, if it names a usable one.
fn unparsed_datastore_id(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()
        .and_then(crate::jobfile::declared_datastore_id)
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

/// The job's failure when validation rejected it: the first violation's code, and a message that
/// also counts the others, which only their `relationship.rejected` events detail.
fn rejection_failure(verdict: &Verdict) -> Option<Failure> {
    let first = verdict.first_violation()?;
    Some(Failure::new(
        first.code.code(),
        with_other_violations(&first.message, &verdict.violations[1..]),
        Stage::Validate,
        first.code.class(),
    ))
}

fn with_other_violations(message: &str, others: &[Violation]) -> String {
    if others.is_empty() {
        return message.to_owned();
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for violation in others {
        let code = violation.code.code();
        match counts.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => counts.push((code, 1)),
        }
    }
    let listed: Vec<String> = counts.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
    format!(
        "{message} (and {} more in this job: {}; each operation's reason is in its relationship.rejected event)",
        others.len(),
        listed.join(", ")
    )
}

fn mark_results(plan: &Plan, results: &[PatchResult], statuses: &mut [OpStatus]) {
    for (patch, result) in plan.patches.iter().zip(results) {
        let status = match result {
            PatchResult::Applied { version, .. } => OpStatus::Applied { version: *version },
            PatchResult::Failed(e) => OpStatus::Failed {
                code: write_code(e).to_owned(),
                message: e.to_string(),
            },
            PatchResult::Conflict | PatchResult::NotSent | PatchResult::GaveUp(_) => {
                OpStatus::Unprocessed
            }
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

/// A job some of whose writes could not be put back: permanent, the store may break a rule until
/// someone does (the job's failed events say where).
fn compensation_failure(message: String) -> Failure {
    Failure::new(
        "compensation_failed",
        message,
        Stage::Compensate,
        ErrorClass::Permanent,
    )
}

/// The status of operation `op` of a PATCH undone (or not, `undone` false) because an operation
/// in it relied on one that was not written (`why`); `relied` says `op` was that one.
fn undone_status(
    op: usize,
    relied: bool,
    undone: bool,
    why: &str,
    restore: &Option<PatchResult>,
) -> OpStatus {
    let reason = match relied {
        true => format!("relied on an operation of this job that was not written ({why})"),
        false => format!(
            "holds on its own, but shares its parent's PATCH with an operation that relied on one of this job that was not written ({why})"
        ),
    };
    if !undone {
        let what = restore
            .as_ref()
            .map_or_else(|| "nothing to restore".to_owned(), describe);
        return OpStatus::Failed {
            code: "compensation_failed".to_owned(),
            message: format!("operation {op} {reason}, and could not be undone: {what}"),
        };
    }
    let code = match relied {
        true => "depends_on_unwritten_operation",
        false => "undone_with_dependent_operation",
    };
    OpStatus::RolledBack {
        code: code.to_owned(),
        message: format!("operation {op} {reason}; undone"),
    }
}

/// What kept a PATCH of the plan from landing, for messages.
fn unwritten_reason(plan: &Plan, results: &[PatchResult]) -> String {
    plan.patches
        .iter()
        .zip(results)
        .find(|(_, r)| !matches!(r, PatchResult::Applied { .. }))
        .map_or_else(String::new, |(patch, r)| {
            format!("{}: {}", patch.parent.as_str(), describe_unwritten(r))
        })
}

fn describe_unwritten(result: &PatchResult) -> String {
    match result {
        PatchResult::NotSent => "not sent".to_owned(),
        PatchResult::Conflict => "it changed since it was read (412)".to_owned(),
        other => describe(other),
    }
}

fn describe(result: &PatchResult) -> String {
    match result {
        PatchResult::Applied { .. } => "restored".to_owned(),
        PatchResult::Conflict => "the record changed again (412)".to_owned(),
        PatchResult::Failed(e) => e.to_string(),
        PatchResult::NotSent => "not sent".to_owned(),
        PatchResult::GaveUp(why) => why.clone(),
    }
}

/// The code of a failed write: a 404 is the store confirming the record is gone, which SPEC §2
/// calls `record_not_found`; every other error keeps the store error's code.
fn write_code(error: &StoreError) -> &'static str {
    match error {
        StoreError::NotFound { .. } => "record_not_found",
        other => other.code(),
    }
}

fn apply_failure(error: &StoreError) -> Failure {
    Failure::new(
        write_code(error),
        error.to_string(),
        Stage::Apply,
        error.class(),
    )
}

fn load_failure(error: &LoadError) -> Failure {
    Failure::new(
        error.code(),
        format!("loading the data store: {error}"),
        Stage::Validate,
        error.class(),
    )
}

/// Records `intent` in the session's log before the job's first PATCH; a job with nothing to
/// record, or run without a log, goes ahead.
async fn record_intent(
    journal: &Journal,
    intent: Option<Intent>,
) -> Result<Option<IntentId>, Failure> {
    let (Some(log), Some(intent)) = (&journal.0, intent) else {
        return Ok(None);
    };
    log.record(&intent).await.map(Some).map_err(|error| {
        Failure::new(
            "intent_not_recorded",
            format!("could not record the job's write intent on the broker before writing ({error}); nothing was written"),
            Stage::Apply,
            ErrorClass::Transient,
        )
    })
}

async fn release_intent(journal: &Journal, intent: Option<IntentId>) -> Result<(), Failure> {
    let (Some(log), Some(intent)) = (&journal.0, intent) else {
        return Ok(());
    };
    log.release(intent).await.map_err(|error| {
        Failure::new(
            "intent_not_released",
            format!("the job's writes are decided but its intent could not be released ({error}); the session was closed so that the next owner undoes the writes and runs the job again"),
            Stage::Apply,
            ErrorClass::Transient,
        )
    })
}

fn lease_lost() -> Failure {
    Failure::new(
        "queue_ownership_lost",
        "this worker lost its connection to the jobs queue mid-job; the active worker gets the job again",
        Stage::Apply,
        ErrorClass::Transient,
    )
}

/// How many times one delivery may wait for pending jobs, reload its graph, or meet 412 answers
/// before it is handed back for a later retry.
#[derive(Default)]
struct Rounds {
    waiting_since: Option<std::time::Instant>,
    reloads: usize,
    conflicts: usize,
}

impl Rounds {
    fn wait(&mut self) -> Option<Failure> {
        let since = *self
            .waiting_since
            .get_or_insert_with(std::time::Instant::now);
        (since.elapsed() > MAX_WAITING).then(|| {
            Failure::new(
                "reservation_timeout",
                format!(
                    "the job's verdict kept depending on jobs being written (waited {MAX_WAITING:?})"
                ),
                Stage::Validate,
                ErrorClass::Transient,
            )
        })
    }

    fn reload(&mut self) -> Option<Failure> {
        self.reloads += 1;
        (self.reloads > MAX_RELOADS).then(|| {
            Failure::new(
                "graph_outdated",
                "the data store's graph kept being replaced while the job was checked",
                Stage::Validate,
                ErrorClass::Transient,
            )
        })
    }

    fn conflict(&mut self) -> Option<Failure> {
        self.conflicts += 1;
        (self.conflicts >= CONFLICT_ROUNDS).then(|| {
            Failure::new(
                "version_conflict",
                format!(
                    "records kept changing under the job ({CONFLICT_ROUNDS} rounds of 412 answers)"
                ),
                Stage::Apply,
                ErrorClass::Transient,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_job_s_message_counts_the_violations_after_the_first() {
        let violation = |code| Violation {
            code,
            message: "m".into(),
            records: Vec::new(),
            operations: vec![0],
        };
        assert_eq!(with_other_violations("first", &[]), "first");
        let others = [
            violation(crate::graph::ViolationCode::RecordNotFound),
            violation(crate::graph::ViolationCode::CycleDetected),
            violation(crate::graph::ViolationCode::RecordNotFound),
        ];
        let message = with_other_violations("first", &others);
        assert!(
            message.starts_with(
                "first (and 3 more in this job: record_not_found ×2, cycle_detected ×1;"
            ),
            "{message}"
        );
    }

    #[test]
    fn an_unparsed_body_keeps_the_job_id_it_declares() {
        assert_eq!(job_id_of_unparsed(br#"{"job_id":"own","x":1}"#, "d"), "own");
        assert_eq!(job_id_of_unparsed(b"not json", "d"), "d");
        // An id the parser refuses (control characters) is no identity either.
        assert_eq!(job_id_of_unparsed(br#"{"job_id":"a\u001bb"}"#, "d"), "d");
        let long = format!(r#"{{"job_id":"{}"}}"#, "x".repeat(200));
        assert_eq!(job_id_of_unparsed(long.as_bytes(), "d"), "d");
    }

    #[test]
    fn an_earlier_round_s_kept_write_is_remembered_until_a_later_round_misses_it() {
        let applied = OpStatus::Applied { version: 2 };
        let rolled_back = OpStatus::RolledBack {
            code: "c".into(),
            message: "m".into(),
        };
        let mut decided = vec![None; 3];
        remember_decided(
            &mut decided,
            &[applied.clone(), rolled_back.clone(), OpStatus::Unprocessed],
        );
        assert_eq!(
            decided,
            [Some(applied.clone()), Some(rolled_back.clone()), None]
        );
        // A later round: the kept write is tried again and conflicts, the undone one is left.
        remember_decided(&mut decided, &vec![OpStatus::Unprocessed; 3]);
        assert_eq!(decided, [None, Some(rolled_back.clone()), None]);
        // Written again and kept: applied, whatever came before.
        remember_decided(
            &mut decided,
            &[OpStatus::Unprocessed, applied.clone(), applied.clone()],
        );
        assert_eq!(decided, [None, Some(applied.clone()), Some(applied)]);
    }
}
