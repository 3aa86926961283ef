//! The apply stage: sends a plan's PATCHes (parents of one job in parallel up to a bound) through
//! the rate-limited client with `If-Match`, updates the graph after each success, reads a parent
//! instead of writing it when the graph shows the value already stored (a redelivered job), reads
//! a parent back when a PATCH's outcome is unknown, and restores parents when an atomic job must be
//! compensated.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::datastore::LiveDataStore;
use crate::graph::canonical_id as canonical;
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
    /// A restore that kept meeting 409s or 412s until its time ran out (what happened, for people).
    GaveUp(String),
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
    let store = &store.with_lease(lease.clone());
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
        &|| gate.closed(),
    )
    .await;
    if !matches!(result, PatchResult::Applied { .. }) {
        gate.stop.store(true, Ordering::Relaxed);
    }
    (index, result)
}

/// Restores the previous values of the parents this job wrote, with `If-Match` on the version the
/// job's PATCH produced. Returns, per patch, `None` when nothing had to be restored. Once `lease`
/// is cancelled no restore starts: another replica may own the job and its intent now, and a
/// restore of this one would undo what that replica writes.
pub async fn compensate(
    store: &StoreClient,
    live: &LiveDataStore,
    plan: &Plan,
    results: &[PatchResult],
    parallel: usize,
    lease: &CancellationToken,
) -> Vec<Option<PatchResult>> {
    let store = &store.with_lease(lease.clone());
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

/// Longest wait between restore tries after a 409.
const MAX_RESTORE_DELAY: Duration = Duration::from_secs(2);

/// Puts `patch.previous` back onto a parent the job wrote (or may have: a PATCH whose outcome
/// stayed unknown is restored when the parent is seen holding its values), for up to
/// `[retry].max_elapsed`. A 409 waits (0.1 s doubling to 2 s) and tries again (other transient
/// errors have had the client's and the read-back's retries already); a 412 reads the parent: if
/// its relationship fields still hold what the job wrote (another writer changed only other
/// fields), the restore goes again at once on the new version; if they hold something else, that
/// writer's value stays and the restore is a conflict. A write whose outcome stays
/// unknown because even the restore's read fails is left to the job's retry, which completes the
/// job forward once the store answers (or dead-letters it with the store's error).
async fn restore(
    store: &StoreClient,
    live: &LiveDataStore,
    patch: &PatchPlan,
    result: &PatchResult,
) -> Option<PatchResult> {
    let mut if_match = match result {
        PatchResult::Applied {
            version,
            wrote: true,
        } => *version,
        // No answer even after reading back: restore only what is seen to have landed.
        PatchResult::Failed(e) if outcome_unknown(e) => {
            let record = read_parent(store, live, patch.parent.as_str()).await.ok()?;
            if !holds(&record, &patch.fields) {
                return None;
            }
            record.version
        }
        _ => return None,
    };
    let started = Instant::now();
    let budget = store.retry_policy().max_elapsed;
    let mut delay = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let outcome = send(store, live, patch, &patch.previous, Some(if_match), &|| {
            false
        })
        .await;
        let last = match outcome {
            PatchResult::Conflict => {
                match read_parent(store, live, patch.parent.as_str()).await {
                    Ok(record) => {
                        if holds(&record, &patch.previous) {
                            return Some(PatchResult::Applied {
                                version: record.version,
                                wrote: true,
                            });
                        }
                        if !holds(&record, &patch.fields) {
                            return Some(PatchResult::Conflict);
                        }
                        // Only other fields changed: again at once, on the version just read.
                        if_match = record.version;
                        "412, the parent still holding the job's value"
                    }
                    Err(e) => return Some(PatchResult::Failed(e)),
                }
            }
            PatchResult::Failed(StoreError::RecordLocked { .. }) => {
                if store.lease_lost() {
                    return Some(PatchResult::NotSent);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RESTORE_DELAY);
                "409 (locked)"
            }
            other => return Some(other),
        };
        if started.elapsed() >= budget {
            return Some(PatchResult::GaveUp(format!(
                "gave up after {tries} tries in {:.1} s ([retry].max_elapsed), the last answer {last}",
                started.elapsed().as_secs_f64()
            )));
        }
    }
}

/// One PATCH of `values` onto `patch.parent`. When the graph shows them already stored (a
/// redelivered job), the parent is read instead: the graph may be stale, and a value reported
/// applied must be the stored one. A PATCH of unknown outcome is read back; when it did not land,
/// it is sent again within the `[retry]` budget (attempts and `max_elapsed`) unless `stopped`
/// says no write may start any more (an atomic job's other PATCH failed, or the lease is lost).
async fn send(
    store: &StoreClient,
    live: &LiveDataStore,
    patch: &PatchPlan,
    values: &[FieldValue],
    if_match: Option<u64>,
    stopped: &(dyn Fn() -> bool + Sync),
) -> PatchResult {
    let parent = patch.parent.as_str();
    if already_stored(live, parent, values).is_some() {
        return confirm_stored(store, live, parent, values).await;
    }
    let policy = store.retry_policy();
    let started = Instant::now();
    let mut delays = policy.backoff();
    loop {
        let error = match store
            .patch_record(
                live.id(),
                &live.store_spelling(parent),
                &body(live, values),
                if_match,
            )
            .await
        {
            Ok(record) if holds(&record, values) => {
                record_written(live, parent, values, record.version);
                return PatchResult::Applied {
                    version: record.version,
                    wrote: true,
                };
            }
            // A 2xx whose record lacks the values sent (a store answering with what it had, or a
            // partial representation): only a read shows whether they were stored.
            Ok(record) => StoreError::NotStored {
                record: parent.to_owned(),
                status: 200,
                version: record.version,
            },
            // 412: changed since the graph was read; the parent is read again and the job
            // revalidated. (A 404 is the store saying the parent is gone: permanent, compensated.)
            Err(StoreError::VersionMismatch { .. }) => return PatchResult::Conflict,
            Err(StoreError::NotStarted) => return PatchResult::NotSent,
            Err(error) if outcome_unknown(&error) => error,
            Err(error) => return PatchResult::Failed(error),
        };
        match read_back(store, live, parent, values, if_match).await {
            ReadBack::Settled(result) => return result,
            ReadBack::NotWritten => match delays.next() {
                Some(delay) if started.elapsed() + delay <= policy.max_elapsed && !stopped() => {
                    tokio::time::sleep(delay).await;
                    if stopped() {
                        return PatchResult::Failed(error);
                    }
                }
                _ => return PatchResult::Failed(error),
            },
            ReadBack::Unreadable => return PatchResult::Failed(error),
        }
    }
}

/// The graph says `values` are stored: the parent's own answer says whether they are.
async fn confirm_stored(
    store: &StoreClient,
    live: &LiveDataStore,
    parent: &str,
    values: &[FieldValue],
) -> PatchResult {
    match read_parent(store, live, parent).await {
        Ok(record) => {
            if holds(&record, values) {
                PatchResult::Applied {
                    version: record.version,
                    wrote: false,
                }
            } else {
                PatchResult::Conflict
            }
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
            | StoreError::NotStored { .. }
    )
}

/// What reading a parent back after a PATCH of unknown outcome showed.
enum ReadBack {
    /// Our values (applied) or another writer's version (a conflict to revalidate).
    Settled(PatchResult),
    /// Still the version the PATCH was sent `If-Match` with: it did not land.
    NotWritten,
    /// The read failed too; the PATCH's own error stands (a later retry sees the stored state).
    Unreadable,
}

async fn read_back(
    store: &StoreClient,
    live: &LiveDataStore,
    parent: &str,
    values: &[FieldValue],
    if_match: Option<u64>,
) -> ReadBack {
    metrics::counter!("cxrel_patch_read_backs_total").increment(1);
    let Ok(record) = read_parent(store, live, parent).await else {
        return ReadBack::Unreadable;
    };
    if holds(&record, values) {
        tracing::info!(
            parent,
            version = record.version,
            "PATCH outcome read back: stored"
        );
        return ReadBack::Settled(PatchResult::Applied {
            version: record.version,
            wrote: true,
        });
    }
    if Some(record.version) == if_match {
        return ReadBack::NotWritten;
    }
    ReadBack::Settled(PatchResult::Conflict)
}

/// Reads `parent` from the store and into the graph, so what is decided next rests on both.
async fn read_parent(
    store: &StoreClient,
    live: &LiveDataStore,
    parent: &str,
) -> Result<Record, StoreError> {
    let record = store
        .get_record(live.id(), &live.store_spelling(parent))
        .await?;
    let _ = live.update_record(&record);
    Ok(record)
}

/// True when `record` stores exactly `values`.
fn holds(record: &Record, values: &[FieldValue]) -> bool {
    values.iter().all(|value| {
        let stored = record.relationship(value.field.as_str());
        is_value(&stored.ids, stored.cascade, value)
    })
}

/// True when `ids` and `cascade` are `value`: the same children in any order and the same cascade.
/// This is how a read-back tells that a write landed (a store may keep ids sorted, and may print
/// a UUID in another case than it was sent in).
fn is_value<S: AsRef<str>>(ids: &[S], cascade: CascadeAction, value: &FieldValue) -> bool {
    same_value(ids, cascade, &value.ids, value.cascade)
}

/// True when a stored value (`ids`, `cascade`) is the wanted one: the same children in any order
/// and the same cascade, except that an empty value has nothing for a cascade to act on and a
/// store may print it without one (absent, `null`, `{"ids":[]}`). Else the worker would take its
/// own emptying write for another writer's change and write it again.
pub(super) fn same_value<A: AsRef<str>, B: AsRef<str>>(
    ids: &[A],
    cascade: CascadeAction,
    wanted: &[B],
    wanted_cascade: CascadeAction,
) -> bool {
    (cascade == wanted_cascade || (ids.is_empty() && wanted.is_empty()))
        && same_children(ids, wanted)
}

/// True when `a` and `b` name the same children in any order (ids compared canonically).
pub(super) fn same_children<A: AsRef<str>, B: AsRef<str>>(a: &[A], b: &[B]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a: Vec<Cow<'_, str>> = a.iter().map(|id| canonical(id.as_ref())).collect();
    let mut b: Vec<Cow<'_, str>> = b.iter().map(|id| canonical(id.as_ref())).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// True when `ids` (in order) and `cascade` are exactly `value`: a job that reorders children is
/// written, not skipped as already stored, and so is one that only sets an empty field's cascade
/// (a later `add` without a cascade keeps it, and ownership depends on it). Against a store that
/// prints empty fields without a cascade this costs one write that [`same_value`] then accepts.
fn is_exactly<S: AsRef<str>>(ids: &[S], cascade: CascadeAction, value: &FieldValue) -> bool {
    cascade == value.cascade
        && ids.len() == value.ids.len()
        && ids
            .iter()
            .zip(&value.ids)
            .all(|(a, b)| canonical(a.as_ref()) == canonical(b.as_str()))
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
                .is_some_and(|(ids, cascade)| is_exactly(&ids, cascade, value))
        });
        if same { graph.version(parent) } else { None }
    })
}

/// `{"<field>": {"ids": […], "cascade_action": "…"}, …}`, ids spelled as the store spells them.
pub(super) fn body(live: &LiveDataStore, values: &[FieldValue]) -> Map<String, Value> {
    live.with_graph(|graph| {
        values
            .iter()
            .map(|v| {
                let ids = v
                    .ids
                    .iter()
                    .map(|id| graph.store_spelling(id.as_str()).to_owned())
                    .collect();
                let value = RelationshipValue::new(ids, v.cascade);
                (v.field.as_str().to_owned(), value.to_json())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FieldName, RecordId};

    fn value(ids: &[&str], cascade: CascadeAction) -> FieldValue {
        FieldValue {
            field: FieldName::new("link"),
            ids: ids.iter().map(|id| RecordId::new(id)).collect(),
            cascade,
        }
    }

    #[test]
    fn a_read_back_matches_in_any_order_while_the_already_stored_check_wants_the_order() {
        let wanted = value(&["a", "b"], CascadeAction::Update);
        assert!(is_value(&["b", "a"], CascadeAction::Update, &wanted));
        assert!(!is_value(&["a", "c"], CascadeAction::Update, &wanted));
        assert!(!is_value(&["a"], CascadeAction::Update, &wanted));
        assert!(!is_value(&["a", "b"], CascadeAction::None, &wanted));
        assert!(is_exactly(&["a", "b"], CascadeAction::Update, &wanted));
        assert!(!is_exactly(&["b", "a"], CascadeAction::Update, &wanted));
    }

    #[test]
    fn a_store_printing_a_uuid_in_upper_case_still_holds_the_value_sent_in_lower_case() {
        let id = "550e8400-e29b-41d4-a716-446655440000";
        let wanted = value(&[id], CascadeAction::Update);
        let upper = id.to_ascii_uppercase();
        assert!(is_value(&[upper.as_str()], CascadeAction::Update, &wanted));
        assert!(is_exactly(
            &[upper.as_str()],
            CascadeAction::Update,
            &wanted
        ));
        // Other ids are compared exactly.
        assert!(!is_value(
            &["A"],
            CascadeAction::Update,
            &value(&["a"], CascadeAction::Update)
        ));
    }

    #[test]
    fn an_emptied_field_the_store_prints_absent_or_null_or_without_a_cascade_holds_the_write() {
        let emptied = [value(&[], CascadeAction::Update)];
        for fields in [
            serde_json::json!({}),
            serde_json::json!({"link": null}),
            serde_json::json!({"link": {"ids": []}}),
            serde_json::json!({"link": {"ids": [], "cascade_action": "delete"}}),
        ] {
            let record: Record = serde_json::from_value(
                serde_json::json!({"id": "p", "_version": 2, "fields": fields}),
            )
            .unwrap();
            assert!(holds(&record, &emptied), "{record:?}");
        }
        // …but a job that only sets an empty field's cascade is not already stored.
        assert!(!is_exactly::<&str>(&[], CascadeAction::None, &emptied[0]));
        assert!(is_exactly::<&str>(&[], CascadeAction::Update, &emptied[0]));
        // Children still need their cascade.
        let linked = value(&["a"], CascadeAction::Update);
        assert!(!is_value(&["a"], CascadeAction::None, &linked));
    }
}
