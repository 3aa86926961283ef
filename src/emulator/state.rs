//! The emulator's shared state (data stores, tokens, faults, statistics, webhook receivers) and
//! the poison-tolerant lock helpers every part uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use super::auth::TokenStore;
use super::error::ApiError;
use super::faults::FaultState;
use super::model::DataStore;
use super::seed::DatastoreSpec;
use super::stats::Stats;
use super::webhooks::WebhookStore;
use crate::settings::EmulatorSettings;

/// Everything the handlers share, behind one `Arc`.
pub struct EmulatorState {
    pub config: EmulatorSettings,
    /// The bound address, known once serving; the fallback base URL when a request has no Host.
    pub bound: OnceLock<SocketAddr>,
    datastores: RwLock<HashMap<String, Arc<DataStore>>>,
    pub tokens: TokenStore,
    pub faults: FaultState,
    pub stats: Stats,
    pub webhooks: WebhookStore,
    /// Data stores loaded from the seed file, restored by a full reset.
    seed: Mutex<Vec<DatastoreSpec>>,
}

pub type Shared = Arc<EmulatorState>;

impl EmulatorState {
    pub fn new(config: &EmulatorSettings) -> Self {
        Self {
            config: config.clone(),
            bound: OnceLock::new(),
            datastores: RwLock::new(HashMap::new()),
            tokens: TokenStore::default(),
            faults: FaultState::new(config.token_ttl),
            stats: Stats::default(),
            webhooks: WebhookStore::default(),
            seed: Mutex::new(Vec::new()),
        }
    }

    /// The data store `id`, or 404 `datastore_not_found`.
    pub fn datastore(&self, id: &str) -> Result<Arc<DataStore>, ApiError> {
        read(&self.datastores).get(id).cloned().ok_or_else(|| {
            ApiError::not_found("datastore_not_found", format!("no data store {id:?}"))
        })
    }

    /// Adds a data store; false if the id is taken (unless `replace`).
    pub fn insert_datastore(&self, id: String, store: DataStore, replace: bool) -> bool {
        let mut map = write(&self.datastores);
        if !replace && map.contains_key(&id) {
            return false;
        }
        map.insert(id, Arc::new(store));
        true
    }

    pub fn remove_datastore(&self, id: &str) -> bool {
        write(&self.datastores).remove(id).is_some()
    }

    /// (id, record count) of every data store, sorted by id.
    pub fn datastore_summaries(&self) -> Vec<(String, usize)> {
        let mut list: Vec<_> = read(&self.datastores)
            .iter()
            .map(|(id, datastore)| (id.clone(), datastore.records().map.len()))
            .collect();
        list.sort();
        list
    }

    /// Remembers seed data stores so a full reset can restore them.
    pub fn remember_seed(&self, specs: Vec<DatastoreSpec>) {
        lock(&self.seed).extend(specs);
    }

    /// Back to the start state: seed data only, default faults, no tokens, stats or webhooks.
    pub fn reset(&self) -> Result<(), ApiError> {
        write(&self.datastores).clear();
        let seed = lock(&self.seed).clone();
        for spec in seed {
            let (id, store) = spec.build()?;
            self.insert_datastore(id, store, true);
        }
        self.faults.reset(self.config.token_ttl);
        self.tokens.clear();
        self.stats.reset();
        self.webhooks.clear();
        Ok(())
    }
}

/// Locks a mutex, ignoring poisoning: state stays usable even if a handler panicked mid-update.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
