//! Every data store's [`LiveDataStore`], loaded on first use by streaming the record list, reloaded
//! after `[graph].refresh_interval`, when its relationship fields change, or when this worker may
//! have missed writes (a new consume session); and confirmation against the store of verdicts that
//! depend on cached state. Loads are single-flight per data store: one data store loading never
//! blocks jobs of another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;

use super::datastore::LiveDataStore;
use crate::graph::{GraphBuilder, GraphError, Verdict, ViolationCode};
use crate::schema::Schema;
use crate::store::shared_failure::{self, Failure};
use crate::store::{StoreClient, StoreError};

/// Records read back to confirm one verdict, at most (a cycle or depth path is short; a job naming
/// thousands of missing ids is rejected on the first ones).
const MAX_CONFIRM_READS: usize = 32;

/// The upper-case spelling of a UUID spelled with lower-case letters, the other spelling a store
/// may keep it under; `None` for anything else.
fn upper_case_uuid(id: &str) -> Option<String> {
    let lower = id.bytes().any(|b| b.is_ascii_lowercase());
    (lower && id.len() == 36 && uuid::Uuid::try_parse(id).is_ok()).then(|| id.to_ascii_uppercase())
}

/// How long a reload waits for jobs still writing to the old graph.
const RETIRE_LIMIT: Duration = Duration::from_secs(30);

/// Why a data store's graph could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the graph: {0}")]
    Graph(#[from] GraphError),
}

impl LoadError {
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::Store(e) => e.code(),
            LoadError::Graph(e) => e.code(),
        }
    }

    pub fn class(&self) -> crate::error::ErrorClass {
        match self {
            LoadError::Store(e) => e.class(),
            LoadError::Graph(e) => e.class(),
        }
    }
}

/// One data store's slot: its live state (with the epoch it was loaded in), the lock that makes
/// loading it single-flight, and the last failed load.
#[derive(Default)]
struct Slot {
    live: Mutex<Option<(u64, Arc<LiveDataStore>)>>,
    loading: tokio::sync::Mutex<()>,
    failed: Mutex<Option<Failure<LoadError>>>,
}

impl Slot {
    /// The error of a load that failed after `asked`: a task that waited for that load gets its
    /// answer instead of loading again (see [`shared_failure`]).
    fn failed_since(&self, asked: Instant) -> Option<LoadError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        shared_failure::waited_on(failed.as_ref(), asked, shared_failure::no_hold)
    }

    /// Keeps a failed load for its waiters (not one given up because its job's worker lost the
    /// queue: that says nothing to others); a successful one clears it.
    fn record<T>(&self, result: &Result<T, LoadError>) {
        let kept = shared_failure::kept(result, |e| {
            !matches!(e, LoadError::Store(StoreError::NotStarted))
        });
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = kept;
    }

    /// The live state, if it was loaded in `epoch`.
    fn current(&self, epoch: u64) -> Option<Arc<LiveDataStore>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|(loaded_in, _)| *loaded_in == epoch)
            .map(|(_, live)| live.clone())
    }

    /// The live state, whatever epoch it was loaded in (to retire it).
    fn any(&self) -> Option<Arc<LiveDataStore>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().map(|(_, live)| live.clone())
    }

    fn set(&self, live: Option<(u64, Arc<LiveDataStore>)>) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = live;
    }
}

/// Drops the graph of a data store the store no longer has (its schema answered 404); the caller
/// holds the slot's loading lock. A deleted data store's graph was kept, and reported in
/// `cxrel_graph_records`, for good. It leaves the slot at once (jobs asking for it now wait on
/// the lock instead of being handed a retired graph), and like a reload it lets jobs still
/// writing to it finish before the lock is released: should the 404 have been passing, the graph
/// loaded next reads what they wrote, and no two graphs of one data store take reservations.
async fn drop_graph(slot: &Slot, datastore: &str) {
    let Some(old) = slot.any() else { return };
    slot.set(None);
    old.retire(RETIRE_LIMIT).await;
    tracing::info!(
        datastore,
        "the data store is gone (404): its graph is dropped"
    );
    metrics::gauge!("cxrel_graph_records", "datastore" => datastore.to_owned()).set(0.0);
}

/// The graph cache: one [`LiveDataStore`] per data store id, shared by every job of the worker
/// (and by `cxrel validate`, with no refresh). [`get`](Self::get) hands out the current one,
/// loading it single-flight when it is absent, older than the refresh interval or built for other
/// relationship fields; [`reload`](Self::reload) and [`forget_all`](Self::forget_all) replace it,
/// letting jobs still writing to the old one finish first; [`refresh_record`](Self::refresh_record)
/// and [`confirm`](Self::confirm) correct single records from the store. Nothing here writes.
pub struct DataStores {
    store: StoreClient,
    refresh_interval: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Bumped by [`forget_all`](Self::forget_all): a graph loaded in an earlier epoch (even one
    /// whose load finished after the bump, for a job of a consume session that has ended) is
    /// never handed out again.
    epoch: AtomicU64,
}

impl DataStores {
    pub fn new(store: StoreClient, refresh_interval: Duration) -> Self {
        Self {
            store,
            refresh_interval,
            slots: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// The live state of `datastore`, loading it when absent, stale or built for other fields.
    pub async fn get(&self, datastore: &str) -> Result<Arc<LiveDataStore>, LoadError> {
        // Taken before anything waits: a forget_all meanwhile makes what this call loads stale.
        let epoch = self.epoch();
        let schema = self.schema(datastore).await?;
        let slot = self.slot(datastore);
        if let Some(live) = self.usable(&slot, &schema, epoch) {
            return Ok(live);
        }
        let asked = Instant::now();
        let _single_flight = slot.loading.lock().await;
        if let Some(live) = self.usable(&slot, &schema, epoch) {
            return Ok(live);
        }
        if let Some(error) = slot.failed_since(asked) {
            return Err(error);
        }
        let loaded = self.replace(&slot, datastore, schema, epoch).await;
        slot.record(&loaded);
        loaded
    }

    /// Loads `datastore` again (its schema re-read), after jobs writing to the old graph finish.
    pub async fn reload(&self, datastore: &str) -> Result<Arc<LiveDataStore>, LoadError> {
        let epoch = self.epoch();
        let slot = self.slot(datastore);
        let stale = slot.current(epoch);
        let _single_flight = slot.loading.lock().await;
        let current = slot.current(epoch);
        if let (Some(now), Some(old)) = (&current, &stale)
            && !Arc::ptr_eq(now, old)
        {
            return Ok(now.clone()); // someone reloaded while we waited
        }
        self.store.invalidate_schema(datastore);
        let schema = self.store.schema(datastore).await;
        if let Err(StoreError::NotFound { .. }) = schema {
            drop_graph(&slot, datastore).await; // this task holds the loading lock
        }
        self.replace(&slot, datastore, schema?, epoch).await
    }

    /// Forgets every graph: the next job of each data store loads it again. Called when this
    /// worker (re)gains the jobs queue, since another replica may have written meanwhile. Loads
    /// still running for jobs of the ended session finish into the old epoch, never served again.
    pub async fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        for slot in slots {
            let _single_flight = slot.loading.lock().await;
            if let Some(old) = slot.any() {
                old.retire(RETIRE_LIMIT).await;
            }
            slot.set(None);
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The schema of `datastore`; when the store no longer has it, its graph is dropped too.
    async fn schema(&self, datastore: &str) -> Result<Arc<Schema>, StoreError> {
        let slot = self.slots().get(datastore).cloned();
        let seen = slot.as_ref().and_then(|s| s.any());
        let schema = self.store.schema(datastore).await;
        if let (Err(StoreError::NotFound { .. }), Some(slot), Some(seen)) = (&schema, slot, seen) {
            let _single_flight = slot.loading.lock().await;
            // Not a graph loaded after the 404 was answered: that load read the data store back.
            if slot.any().is_some_and(|now| Arc::ptr_eq(&now, &seen)) {
                drop_graph(&slot, datastore).await;
            }
        }
        schema
    }

    /// Re-reads one record (after a 412, a 404, or to confirm a verdict) into the graph.
    pub async fn refresh_record(&self, live: &LiveDataStore, id: &str) -> Result<(), LoadError> {
        metrics::counter!("cxrel_confirm_reads_total").increment(1);
        let known = live.with_graph(|g| g.contains(id));
        let spelled = live.store_spelling(id);
        let mut read = self.store.get_record(live.id(), &spelled).await;
        if let (Err(StoreError::NotFound { .. }), false) = (&read, known)
            && let Some(upper) = upper_case_uuid(&spelled)
        {
            // A record created since the graph was read, on a store that prints upper-case UUIDs
            // and matches ids exactly: the job's id was kept in lower case (UUIDs are
            // case-insensitive), so ask for the other spelling before calling it missing.
            read = self.store.get_record(live.id(), &upper).await;
        }
        match read {
            Ok(record) => Ok(live.update_record(&record)?),
            Err(StoreError::NotFound { .. }) => {
                live.remove_record(id);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Confirms a verdict that rejects something against the store before it becomes permanent:
    /// missing records and the records on a violation's path are read again (found ones join
    /// the graph), and an unknown or non-relationship field re-reads the schema. Returns the live
    /// state to check the job against again (a new one when the relationship fields changed).
    pub async fn confirm(
        &self,
        live: &Arc<LiveDataStore>,
        verdict: &Verdict,
    ) -> Result<Arc<LiveDataStore>, LoadError> {
        let mut ids: Vec<&str> = Vec::new();
        let mut schema_doubt = false;
        for violation in &verdict.violations {
            match violation.code {
                ViolationCode::UnknownField
                | ViolationCode::NotRelationshipField
                | ViolationCode::GraphOutdated => schema_doubt = true,
                ViolationCode::DuplicateChild => {}
                _ => ids.extend(violation.records.iter().map(|r| r.as_str())),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(MAX_CONFIRM_READS);
        metrics::counter!("cxrel_confirmations_total").increment(1);
        for id in ids {
            self.refresh_record(live, id).await?;
        }
        if !schema_doubt {
            return Ok(live.clone());
        }
        self.store.invalidate_schema(live.id());
        let schema = self.schema(live.id()).await?;
        if live.adopt_schema(schema) {
            return Ok(live.clone());
        }
        self.reload(live.id()).await
    }

    fn slot(&self, datastore: &str) -> Arc<Slot> {
        self.slots()
            .entry(datastore.to_owned())
            .or_default()
            .clone()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current live state if it is young enough and fits `schema` (whose constraints it
    /// adopts when only those changed).
    fn usable(&self, slot: &Slot, schema: &Arc<Schema>, epoch: u64) -> Option<Arc<LiveDataStore>> {
        let live = slot.current(epoch)?;
        let fits = Arc::ptr_eq(&live.schema(), schema) || live.adopt_schema(schema.clone());
        (fits && live.age() < self.refresh_interval).then_some(live)
    }

    /// Retires the slot's live state (its writers finish first), then loads a new one.
    async fn replace(
        &self,
        slot: &Slot,
        datastore: &str,
        schema: Arc<Schema>,
        epoch: u64,
    ) -> Result<Arc<LiveDataStore>, LoadError> {
        if let Some(old) = slot.any() {
            old.retire(RETIRE_LIMIT).await;
        }
        slot.set(None);
        let started = Instant::now();
        let live = self.load(datastore, schema).await?;
        let records = live.with_graph(|g| g.record_count());
        tracing::info!(datastore, records, elapsed = ?started.elapsed(), "relationship graph loaded");
        metrics::gauge!("cxrel_graph_records", "datastore" => datastore.to_owned())
            .set(records as f64);
        slot.set(Some((epoch, live.clone())));
        Ok(live)
    }

    async fn load(
        &self,
        datastore: &str,
        schema: Arc<Schema>,
    ) -> Result<Arc<LiveDataStore>, LoadError> {
        let mut builder = GraphBuilder::new(&schema);
        let mut records = std::pin::pin!(self.store.list_records(datastore));
        while let Some(record) = records.try_next().await? {
            builder.add_record(&record.id, record.version)?;
            for field in schema.relationships() {
                if record.fields.contains_key(&field.name) {
                    let value = record.relationship(&field.name);
                    builder.set_children(&record.id, &field.name, &value.ids, value.cascade)?;
                }
            }
        }
        Ok(LiveDataStore::new(datastore, schema, builder.build()?))
    }
}
