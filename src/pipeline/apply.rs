//! The apply stage: sends a plan's PATCHes (parents of one job in parallel up to a bound) through
//! the rate-limited client with `If-Match`, updates the graph after each success, skips PATCHes
//! whose value is already stored (a redelivered job), reads a parent back when a PATCH's outcome is
//! unknown, and restores parents when an atomic job must be compensated.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::datastore::LiveDataStore;
use crate::graph::{FieldValue, PatchPlan, Plan};
use crate::job::CascadeAction;
use crate::store::{Record, RelationshipValue, StoreClient, StoreError};

/// What became of one PATCH of the plan.
#[derive(Debug, Clone)]
pub enum PatchResult {
    /// Stored with this version; `wrote` is false when the value was already there.
    Applied {
        version: u64,
        wrote: bool,
    },
    /// 412: the parent changed since the graph was read.
    Conflict,
    Failed(StoreError),
    /// Not sent because an earlier PATCH of the atomic job failed.
    NotSent,
}

/// Sends every PATCH of `plan`. For an atomic job, the first failure stops PATCHes not yet started;
/// once `lease` is cancelled (this worker lost the jobs queue) no PATCH starts.
pub async fn apply(
    store: &StoreClient,
    live: &LiveDataStore,
    plan: &Plan,
    parallel: usize,
    atomic: bool,
    lease: &CancellationToken,
) -> Vec<PatchResult> {
    let stop = AtomicBool::new(false);
    let gate = Gate {
        atomic,
        stop: &stop,
        lease,
    };
    // Futures built up front (not in a stream closure) so the job future stays `Send`.
    let sends: Vec<_> = plan
        .patches
        .iter()
        .enumerate()
        .map(|(i, patch)| send_unless_stopped(store, live, patch, &gate, i))
        .collect();
    let mut results: Vec<(usize, PatchResult)> = futures::stream::iter(sends)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// When a PATCH may still start.
struct Gate<'a> {
    atomic: bool,
    stop: &'a AtomicBool,
    lease: &'a CancellationToken,
}

impl Gate<'_> {
    fn closed(&self) -> bool {
        (self.atomic && self.stop.load(Ordering::Relaxed)) || self.lease.is_cancelled()
    }
}

async fn send_unless_stopped(
    store: &StoreClient,
    live: &LiveDataStore,
    patch: &PatchPlan,
    gate: &Gate<'_>,
    index: usize,
) -> (usize, PatchResult) {
    if gate.closed() {
        return (index, PatchResult::NotSent);
    }
    let result = send(
        store,
        live,
        patch,
        &patch.fields,
        Some(patch.expected_version),
    )
    .await;
    if !matches!(result, PatchResult::Applied { .. }) {
        gate.stop.store(true, Ordering::Relaxed);
    }
    (index, result)
}

/// Restores the previous values of the parents this job wrote, with `If-Match` on the version the
/// job's PATCH produced. Returns, per patch, `None` when nothing had to be restored.
pub async fn compensate(
    store: &StoreClient,
    live: &LiveDataStore,
    plan: &Plan,
    results: &[PatchResult],
    parallel: usize,
) -> Vec<Option<PatchResult>> {
    let restores: Vec<_> = plan
        .patches
        .iter()
        .zip(results)
        .map(|(patch, result)| restore(store, live, patch, result))
        .collect();
    futures::stream::iter(restores)
        .buffered(parallel.max(1))
        .collect()
        .await
}

async fn restore(
    store: &StoreClient,
    live: &LiveDataStore,
    patch: &PatchPlan,
    result: &PatchResult,
) -> Option<PatchResult> {
    match result {
        PatchResult::Applied {
            version,
            wrote: true,
        } => Some(send(store, live, patch, &patch.previous, Some(*version)).await),
        _ => None,
    }
}

/// One PATCH of `values` onto `patch.parent`, or none when the graph shows them already stored.
async fn send(
    store: &StoreClient,
    live: &LiveDataStore,
    patch: &PatchPlan,
    values: &[FieldValue],
    if_match: Option<u64>,
) -> PatchResult {
    let parent = patch.parent.as_str();
    if let Some(version) = already_stored(live, parent, values) {
        return PatchResult::Applied {
            version,
            wrote: false,
        };
    }
    match store
        .patch_record(live.id(), parent, &body(values), if_match)
        .await
    {
        Ok(record) => {
            record_written(live, parent, values, record.version);
            PatchResult::Applied {
                version: record.version,
                wrote: true,
            }
        }
        // 412: changed since the graph was read; the parent is read again and the job revalidated.
        // (A 404 is the store itself saying the parent is gone: a permanent failure, compensated.)
        Err(StoreError::VersionMismatch { .. }) => PatchResult::Conflict,
        Err(error) if outcome_unknown(&error) => {
            read_back(store, live, parent, values, if_match, error).await
        }
        Err(error) => PatchResult::Failed(error),
    }
}

/// The PATCH may or may not have been stored (no answer, a broken connection, a 5xx from a proxy,
/// a 2xx whose body could not be read).
fn outcome_unknown(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Timeout { .. }
            | StoreError::Connection { .. }
            | StoreError::Server { .. }
            | StoreError::InvalidResponse { .. }
            | StoreError::UnreadableResponse { .. }
    )
}

/// Settles a PATCH of unknown outcome by reading the parent back: our values → applied; the
/// version we sent `If-Match` with → not written (the original error stands); anything else → a
/// conflict to revalidate. When the read fails too, the original error stands (a later retry sees
/// the stored state).
async fn read_back(
    store: &StoreClient,
    live: &LiveDataStore,
    parent: &str,
    values: &[FieldValue],
    if_match: Option<u64>,
    error: StoreError,
) -> PatchResult {
    metrics::counter!("cxrel_patch_read_backs_total").increment(1);
    let record = match store.get_record(live.id(), parent).await {
        Ok(record) => record,
        Err(_) => return PatchResult::Failed(error),
    };
    let _ = live.update_record(&record);
    if holds(&record, values) {
        tracing::info!(
            parent,
            version = record.version,
            "PATCH outcome read back: stored"
        );
        return PatchResult::Applied {
            version: record.version,
            wrote: true,
        };
    }
    if Some(record.version) == if_match {
        return PatchResult::Failed(error);
    }
    PatchResult::Conflict
}

/// True when `record` stores exactly `values`.
fn holds(record: &Record, values: &[FieldValue]) -> bool {
    values.iter().all(|value| {
        let stored = record.relationship(value.field.as_str());
        is_value(&stored.ids, stored.cascade, value)
    })
}

/// True when `ids` (in order) and `cascade` are exactly `value`: the read-back and the
/// already-stored check compare the same way.
fn is_value<S: AsRef<str>>(ids: &[S], cascade: CascadeAction, value: &FieldValue) -> bool {
    cascade == value.cascade
        && ids.len() == value.ids.len()
        && ids
            .iter()
            .zip(&value.ids)
            .all(|(a, b)| a.as_ref() == b.as_str())
}

/// Records a landed PATCH in the graph.
fn record_written(live: &LiveDataStore, parent: &str, values: &[FieldValue], version: u64) {
    live.with_graph(|graph| {
        for value in values {
            let ids: Vec<&str> = value.ids.iter().map(|id| id.as_str()).collect();
            let _ = graph.apply_patch(parent, value.field.as_str(), &ids, value.cascade, version);
        }
    });
}

/// The parent's version when every value is exactly what the graph already holds.
fn already_stored(live: &LiveDataStore, parent: &str, values: &[FieldValue]) -> Option<u64> {
    live.with_graph(|graph| {
        let same = values.iter().all(|value| {
            graph
                .children(parent, value.field.as_str())
                .is_some_and(|(ids, cascade)| is_value(&ids, cascade, value))
        });
        if same { graph.version(parent) } else { None }
    })
}

/// `{"<field>": {"ids": […], "cascade_action": "…"}, …}`.
fn body(values: &[FieldValue]) -> Map<String, Value> {
    values
        .iter()
        .map(|v| {
            let ids = v.ids.iter().map(|id| id.as_str().to_owned()).collect();
            let value = RelationshipValue::new(ids, v.cascade);
            (v.field.as_str().to_owned(), value.to_json())
        })
        .collect()
}
