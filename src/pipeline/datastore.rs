//! The live state of one data store: its id, schema, relationship graph and the reservations of
//! jobs being written, behind one lock, so that checking a job and reserving its edge changes is
//! one step. Jobs checked meanwhile see committed + reserved state (see [`crate::graph::Bound`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::graph::{
    Bound, Graph, GraphError, Plan, ReservationId, Reservations, Verdict, plan, validate_reserved,
};
use crate::job::Job;
use crate::schema::Schema;
use crate::store::Record;

/// One data store's schema, graph and pending reservations.
pub struct LiveDataStore {
    id: String,
    state: Mutex<State>,
    loaded_at: Instant,
    /// Counts released reservations; jobs whose verdict depends on pending work wait on it.
    settled: watch::Sender<u64>,
}

struct State {
    schema: Arc<Schema>,
    graph: Graph,
    pending: Reservations,
    /// Replaced by a fresh load: take no new reservations, let the pending ones finish.
    retired: bool,
}

/// What checking a job against the live state decided.
pub enum Check {
    /// The verdict holds whatever pending jobs do; the accepted operations' edge changes are
    /// reserved until the returned guard is dropped.
    Ready {
        verdict: Verdict,
        plan: Plan,
        reservation: Reservation,
    },
    /// The verdict depends on jobs being written now (or one of them holds a parent of this job):
    /// wait for a reservation to be released (`Settled` newer than this), then check again.
    Wait(u64),
    /// The graph was built for another schema, or is being replaced: load it again.
    Outdated,
}

impl LiveDataStore {
    pub fn new(id: &str, schema: Arc<Schema>, graph: Graph) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            state: Mutex::new(State {
                schema,
                graph,
                pending: Reservations::default(),
                retired: false,
            }),
            loaded_at: Instant::now(),
            settled: watch::Sender::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn age(&self) -> Duration {
        self.loaded_at.elapsed()
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.lock().schema.clone()
    }

    /// Validates `job` against committed + reserved state and, when the verdict cannot change
    /// with the pending jobs' fate, reserves what it will write, in one critical section.
    pub fn check(self: &Arc<Self>, job: &Job) -> Check {
        let mut state = self.lock();
        let generation = *self.settled.borrow();
        if state.retired || !state.graph.is_built_for(&state.schema) {
            return Check::Outdated;
        }
        let busy = job
            .operations
            .iter()
            .any(|op| state.pending.holds_parent(&state.graph, op.parent.as_str()));
        if busy {
            return Check::Wait(generation);
        }
        let State {
            schema,
            graph,
            pending,
            ..
        } = &mut *state;
        let upper = validate_reserved(graph, schema, job, pending, Bound::Upper);
        if !upper.violations.is_empty() && !pending.is_empty() {
            let lower = validate_reserved(graph, schema, job, pending, Bound::Lower);
            if lower.accepted().count() != upper.accepted().count() {
                return Check::Wait(generation);
            }
        }
        let plan = plan(graph, job, &upper);
        let id = pending.reserve(graph, &plan);
        metrics::gauge!("cxrel_reserved_entries", "datastore" => self.id.clone())
            .set(pending.len() as f64);
        Check::Ready {
            verdict: upper,
            plan,
            reservation: Reservation {
                live: self.clone(),
                id,
            },
        }
    }

    /// Waits until a reservation newer than `generation` was released, or `limit` passed.
    pub async fn settled_after(&self, generation: u64, limit: Duration) {
        let mut settled = self.settled.subscribe();
        let _ = tokio::time::timeout(limit, settled.wait_for(|&g| g > generation)).await;
    }

    /// Stops taking reservations and waits (at most `limit`) for the pending ones to finish, so
    /// a load that follows reads what they wrote.
    pub async fn retire(&self, limit: Duration) {
        self.lock().retired = true;
        let deadline = Instant::now() + limit;
        while !self.lock().pending.is_empty() {
            let generation = *self.settled.borrow();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(datastore = %self.id, "jobs still writing after {limit:?}; reloading the graph anyway");
                return;
            }
            self.settled_after(generation, left).await;
        }
    }

    /// Replaces the schema when it changed without changing the relationship fields (e.g. a new
    /// constraint); returns false when the graph must be rebuilt instead.
    pub fn adopt_schema(&self, schema: Arc<Schema>) -> bool {
        let mut state = self.lock();
        if !state.graph.is_built_for(&schema) {
            return false;
        }
        state.schema = schema;
        true
    }

    /// The landed PATCHes of a non-atomic job written in part that relied on one that did not
    /// land (see [`crate::graph::unsupported_writes`]).
    pub fn unsupported_writes(
        &self,
        job: &Job,
        plan: &Plan,
        written: &[bool],
    ) -> crate::graph::Unsupported {
        let state = self.lock();
        crate::graph::unsupported_writes(&state.graph, &state.schema, job, plan, written)
    }

    /// Runs `f` on the graph (apply and compensation record what the store answered).
    pub fn with_graph<R>(&self, f: impl FnOnce(&mut Graph) -> R) -> R {
        f(&mut self.lock().graph)
    }

    /// `id` as the store spells it, for a request's URL or body (as given when unknown).
    pub fn store_spelling(&self, id: &str) -> String {
        self.with_graph(|g| g.store_spelling(id).to_owned())
    }

    /// Brings one record up to date from its stored form (a fresh GET or a PATCH answer); a record
    /// the graph did not know joins it.
    pub fn update_record(&self, record: &Record) -> Result<(), GraphError> {
        let mut state = self.lock();
        let State { schema, graph, .. } = &mut *state;
        graph.upsert_record(&record.id, record.version)?;
        for field in schema.relationships() {
            let value = record.relationship(&field.name);
            let ids: Vec<&str> = value.ids.iter().map(String::as_str).collect();
            graph.apply_patch(&record.id, &field.name, &ids, value.cascade, record.version)?;
        }
        Ok(())
    }

    /// Forgets a record the store no longer has.
    pub fn remove_record(&self, id: &str) {
        self.lock().graph.remove_record(id);
    }

    fn release(&self, id: ReservationId) {
        {
            let mut state = self.lock();
            state.pending.release(id);
            metrics::gauge!("cxrel_reserved_entries", "datastore" => self.id.clone())
                .set(state.pending.len() as f64);
        }
        self.settled.send_modify(|g| *g += 1);
    }

    /// The state, recovering from a poisoned lock (graph updates never panic halfway).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job's reserved edge changes; dropping it releases them (the PATCHes landed and the graph
/// holds them, or they failed or were undone).
pub struct Reservation {
    live: Arc<LiveDataStore>,
    id: ReservationId,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.live.release(self.id);
    }
}
