//! Write intents: what an atomic job with several PATCHes is about to write and what it replaces,
//! recorded durably before its first PATCH and released once the job's writes are decided (all
//! landed, or undone). A replica that dies between the two leaves its intent behind; the replica
//! that takes over the jobs queue puts those parents back before it checks any job
//! ([`restore_leftover`]), so the redelivered job starts again from the store as it was before it.
//! Without this, the new owner would find the dead one's half-written move already stored, take it
//! for a value that predates the job, and never undo it (a child under two parents of a
//! `unique_parent` field, say).
//!
//! The log itself (a broker queue) lives in the worker; the pipeline sees it through [`IntentLog`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::datastore::LiveDataStore;
use crate::graph::Plan;
use crate::job::Job;
use crate::store::{Record, RelationshipValue, StoreClient, StoreError};

/// One job's pending writes, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Intent {
    pub datastore_id: String,
    pub job_id: String,
    /// One entry per parent the job writes.
    pub patches: Vec<IntentPatch>,
}

/// One parent: the relationship fields the job writes, and their values before it. Ids are
/// spelled as the store spells them; `fields` and `previous` are PATCH bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IntentPatch {
    /// The parent record's id.
    pub parent: String,
    /// What the job writes: `{"<field>": {"ids": […], "cascade_action": "…"}}`.
    pub fields: Map<String, Value>,
    /// The same fields before the job, written back if the job is left half-done.
    pub previous: Map<String, Value>,
}

impl Intent {
    /// The intent of `plan`, or `None` when nothing can be left half-written: a job that is not
    /// atomic (its operations stand alone) or writes one parent (one PATCH lands whole or not).
    pub fn of(job: &Job, live: &LiveDataStore, plan: &Plan) -> Option<Self> {
        if !job.atomic || plan.patches.len() < 2 {
            return None;
        }
        let patches = plan
            .patches
            .iter()
            .map(|patch| IntentPatch {
                parent: live.store_spelling(patch.parent.as_str()),
                fields: super::apply::body(live, &patch.fields),
                previous: super::apply::body(live, &patch.previous),
            })
            .collect();
        Some(Self {
            datastore_id: job.datastore_id.clone(),
            job_id: job.job_id.clone(),
            patches,
        })
    }
}

/// An intent's handle in the log, to release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentId(pub String);

/// Where intents are recorded (the worker's broker queue). `record` returns once the intent is
/// durable; `release` once it is gone for good, before the job is acked.
pub trait IntentLog: Send + Sync {
    fn record<'a>(&'a self, intent: &'a Intent) -> BoxFuture<'a, Result<IntentId, String>>;
    fn release(&self, id: IntentId) -> BoxFuture<'_, Result<(), String>>;
}

/// The log of the consume session a job came from (none in tests that run the pipeline alone).
#[derive(Clone, Default)]
pub struct Journal(pub Option<Arc<dyn IntentLog>>);

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Journal(on)"
        } else {
            "Journal(off)"
        })
    }
}

/// What became of a leftover intent as a whole, which decides what happens to it in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// Every parent holds its values from before the job, or was changed by another writer (or
    /// is gone): ack the intent.
    Settled,
    /// A parent could not be put back yet (locked, the store unreachable, this session's lease
    /// lost): keep the intent; no job may be checked before it is settled.
    Blocked(String),
    /// The store refused for good (forbidden, unknown field): the intent can never be acted on;
    /// it is dropped, and the values it held are in the error log.
    Refused(String),
}

/// Puts back the parents a dead replica's job left written: each parent that still holds exactly
/// what the job wrote gets its previous values (with `If-Match` on the version read); one that
/// holds anything else was changed since and is left as it is. Tries each parent for
/// `[retry].max_elapsed`; `store` carries the session's lease, so nothing is written once another
/// replica may own the queue.
pub async fn restore_leftover(store: &StoreClient, intent: &Intent) -> Leftover {
    for patch in &intent.patches {
        let outcome = restore_parent(store, &intent.datastore_id, patch).await;
        let (label, what) = match &outcome {
            Restored::Undone(what) => ("undone", what),
            Restored::Untouched(what) => ("untouched", what),
            Restored::Blocked(what) => ("blocked", what),
            Restored::Refused(what) => ("failed", what),
        };
        metrics::counter!("cxrel_intent_restores_total", "outcome" => label).increment(1);
        let (datastore, job_id, parent) = (&intent.datastore_id, &intent.job_id, &patch.parent);
        match outcome {
            Restored::Undone(_) | Restored::Untouched(_) => {
                tracing::info!(
                    datastore,
                    job_id,
                    parent,
                    "a job a replica left half-written: {what}"
                );
            }
            Restored::Blocked(why) => {
                tracing::warn!(
                    datastore,
                    job_id,
                    parent,
                    "a job a replica left half-written cannot be undone yet: {why}; no job is checked until it is"
                );
                return Leftover::Blocked(format!("{job_id}: {parent}: {why}"));
            }
            Restored::Refused(why) => {
                let previous = serde_json::Value::Object(patch.previous.clone());
                tracing::error!(datastore, job_id, parent, %previous, "a job a replica left half-written could not be undone, and never will be: {why}; put these values back by hand");
                return Leftover::Refused(format!("{job_id}: {parent}: {why}"));
            }
        }
    }
    Leftover::Settled
}

/// What became of one parent of a leftover intent (with what happened, for the log).
#[derive(Debug)]
enum Restored {
    Undone(String),
    Untouched(String),
    Blocked(String),
    Refused(String),
}

/// Longest wait between tries of one parent.
const MAX_DELAY: Duration = Duration::from_secs(2);

async fn restore_parent(store: &StoreClient, datastore: &str, patch: &IntentPatch) -> Restored {
    let started = Instant::now();
    let budget = store.retry_policy().max_elapsed;
    let mut delay = Duration::from_millis(100);
    loop {
        let last = match restore_once(store, datastore, patch).await {
            Ok(done) => return done,
            Err(StoreError::NotStarted) => {
                return Restored::Blocked("this replica lost the jobs queue".to_owned());
            }
            Err(error) if error.class() == crate::error::ErrorClass::Transient => error.to_string(),
            Err(error) => return Restored::Refused(error.to_string()),
        };
        if started.elapsed() >= budget {
            return Restored::Blocked(format!(
                "still failing after {:.1} s ([retry].max_elapsed), the last answer: {last}",
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// One read and, when the parent still holds the job's values, one PATCH back. A 412 (changed
/// between the two) and a 409 (locked) are transient: read again.
async fn restore_once(
    store: &StoreClient,
    datastore: &str,
    patch: &IntentPatch,
) -> Result<Restored, StoreError> {
    let record = match store.get_record(datastore, &patch.parent).await {
        Ok(record) => record,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Restored::Untouched("the parent is gone".to_owned()));
        }
        Err(error) => return Err(error),
    };
    if holds(&record, &patch.previous) {
        return Ok(Restored::Untouched(
            "holds its values from before the job (the write did not land)".to_owned(),
        ));
    }
    if !holds(&record, &patch.fields) {
        return Ok(Restored::Untouched(
            "holds neither the job's values nor those from before it (another writer changed it); left as it is".to_owned(),
        ));
    }
    let stored = store
        .patch_record(
            datastore,
            &patch.parent,
            &patch.previous,
            Some(record.version),
        )
        .await?;
    Ok(Restored::Undone(format!(
        "put back its values from before the job (version {})",
        stored.version
    )))
}

/// True when `record` holds every value of `body` (a PATCH body): the same children in any order
/// and the same cascade action (see [`same_value`](super::apply::same_value)).
fn holds(record: &Record, body: &Map<String, Value>) -> bool {
    body.iter().all(|(field, value)| {
        let wanted = RelationshipValue::read(Some(value));
        let stored = record.relationship(field);
        super::apply::same_value(&stored.ids, stored.cascade, &wanted.ids, wanted.cascade)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(fields: Value) -> Record {
        serde_json::from_value(json!({"id": "p", "fields": fields, "_version": 3})).unwrap()
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_parent_holds_a_body_whatever_the_order_of_its_children() {
        let stored = record(json!({"o": {"ids": ["b", "a"], "cascade_action": "none"}}));
        assert!(holds(
            &stored,
            &body(json!({"o": {"ids": ["a", "b"], "cascade_action": "none"}}))
        ));
        assert!(!holds(
            &stored,
            &body(json!({"o": {"ids": ["a"], "cascade_action": "none"}}))
        ));
        assert!(!holds(
            &stored,
            &body(json!({"o": {"ids": ["a", "b"], "cascade_action": "delete"}}))
        ));
    }

    #[test]
    fn an_absent_field_holds_the_empty_value() {
        let stored = record(json!({}));
        assert!(holds(
            &stored,
            &body(json!({"o": {"ids": [], "cascade_action": "none"}}))
        ));
    }

    #[test]
    fn an_intent_survives_its_trip_through_json() {
        let intent = Intent {
            datastore_id: "ds".into(),
            job_id: "j".into(),
            patches: vec![IntentPatch {
                parent: "p".into(),
                fields: body(json!({"o": {"ids": ["c"], "cascade_action": "none"}})),
                previous: body(json!({"o": {"ids": [], "cascade_action": "none"}})),
            }],
        };
        let text = serde_json::to_vec(&intent).unwrap();
        assert_eq!(serde_json::from_slice::<Intent>(&text).unwrap(), intent);
    }
}
