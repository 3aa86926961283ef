//! The apply stage: sends a plan's PATCHes (parents of one job in parallel up to a bound) through
//! the rate-limited client with `If-Match`, updates the graph after each success, skips PATCHes
//! whose value is already stored (a redelivered job), and restores parents when an atomic job must
//! be compensated.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::graphs::DsGraph;
use crate::graph::{FieldValue, PatchPlan, Plan};
use crate::store::{StoreClient, StoreError};

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

/// Sends every PATCH of `plan`. For an atomic job, the first failure stops PATCHes not yet started.
pub async fn apply(
    store: &StoreClient,
    entry: &DsGraph,
    ds: &str,
    plan: &Plan,
    parallel: usize,
    atomic: bool,
) -> Vec<PatchResult> {
    let stop = AtomicBool::new(false);
    // Futures built up front (not in a stream closure) so the job future stays `Send`.
    let sends: Vec<_> = plan
        .patches
        .iter()
        .enumerate()
        .map(|(i, patch)| send_unless_stopped(store, entry, ds, patch, atomic, &stop, i))
        .collect();
    let mut results: Vec<(usize, PatchResult)> = futures::stream::iter(sends)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

async fn send_unless_stopped(
    store: &StoreClient,
    entry: &DsGraph,
    ds: &str,
    patch: &PatchPlan,
    atomic: bool,
    stop: &AtomicBool,
    index: usize,
) -> (usize, PatchResult) {
    if atomic && stop.load(Ordering::Relaxed) {
        return (index, PatchResult::NotSent);
    }
    let result = send(
        store,
        entry,
        ds,
        patch,
        &patch.fields,
        Some(patch.expected_version),
    )
    .await;
    if !matches!(result, PatchResult::Applied { .. }) {
        stop.store(true, Ordering::Relaxed);
    }
    (index, result)
}

/// Restores the previous values of the parents this job wrote, with `If-Match` on the version the
/// job's PATCH produced. Returns, per patch, `None` when nothing had to be restored.
pub async fn compensate(
    store: &StoreClient,
    entry: &DsGraph,
    ds: &str,
    plan: &Plan,
    results: &[PatchResult],
    parallel: usize,
) -> Vec<Option<PatchResult>> {
    let restores: Vec<_> = plan
        .patches
        .iter()
        .zip(results)
        .map(|(patch, result)| restore(store, entry, ds, patch, result))
        .collect();
    futures::stream::iter(restores)
        .buffered(parallel.max(1))
        .collect()
        .await
}

async fn restore(
    store: &StoreClient,
    entry: &DsGraph,
    ds: &str,
    patch: &PatchPlan,
    result: &PatchResult,
) -> Option<PatchResult> {
    match result {
        PatchResult::Applied {
            version,
            wrote: true,
        } => Some(send(store, entry, ds, patch, &patch.previous, Some(*version)).await),
        _ => None,
    }
}

/// One PATCH of `values` onto `patch.parent`, or none when the graph shows them already stored.
async fn send(
    store: &StoreClient,
    entry: &DsGraph,
    ds: &str,
    patch: &PatchPlan,
    values: &[FieldValue],
    if_match: Option<u64>,
) -> PatchResult {
    let parent = patch.parent.as_str();
    if let Some(version) = already_stored(entry, parent, values) {
        return PatchResult::Applied {
            version,
            wrote: false,
        };
    }
    match store
        .patch_record(ds, parent, &body(values), if_match)
        .await
    {
        Ok(record) => {
            let mut graph = entry.write();
            for value in values {
                let ids: Vec<&str> = value.ids.iter().map(|id| id.as_str()).collect();
                let _ = graph.apply_patch(
                    parent,
                    value.field.as_str(),
                    &ids,
                    value.cascade,
                    record.version,
                );
            }
            PatchResult::Applied {
                version: record.version,
                wrote: true,
            }
        }
        Err(StoreError::VersionMismatch { .. }) => PatchResult::Conflict,
        Err(error) => PatchResult::Failed(error),
    }
}

/// The parent's version when every value is exactly what the graph already holds.
fn already_stored(entry: &DsGraph, parent: &str, values: &[FieldValue]) -> Option<u64> {
    let graph = entry.read();
    let same = values.iter().all(|value| {
        graph
            .children(parent, value.field.as_str())
            .is_some_and(|(ids, cascade)| {
                cascade == value.cascade
                    && ids.len() == value.ids.len()
                    && ids.iter().zip(&value.ids).all(|(a, b)| *a == b.as_str())
            })
    });
    if same { graph.version(parent) } else { None }
}

/// `{"<field>": {"ids": […], "cascade_action": "…"}, …}`.
fn body(values: &[FieldValue]) -> Map<String, Value> {
    values
        .iter()
        .map(|v| {
            let ids: Vec<&str> = v.ids.iter().map(|id| id.as_str()).collect();
            (
                v.field.as_str().to_owned(),
                json!({"ids": ids, "cascade_action": v.cascade.as_str()}),
            )
        })
        .collect()
}
