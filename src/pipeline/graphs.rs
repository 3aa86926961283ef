//! The relationship graph of each data store, loaded on first use by streaming the record list,
//! kept current by in-place updates after each PATCH, re-read after `[graph].refresh_interval`, and
//! patched record by record after a 412. One load at a time per data store (single flight).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::Value;

use crate::graph::{Graph, GraphBuilder, GraphError};
use crate::job::CascadeAction;
use crate::schema::Schema;
use crate::store::{Record, StoreClient, StoreError};

/// One data store's schema and graph.
pub struct DsGraph {
    pub schema: Arc<Schema>,
    pub graph: RwLock<Graph>,
    loaded_at: Instant,
}

impl DsGraph {
    /// Reads the graph, recovering from a poisoned lock (graph updates never panic halfway).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        self.graph.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings one record up to date from its stored form (after a 412 or a fresh GET).
    pub fn update_record(&self, record: &Record) -> Result<(), GraphError> {
        let mut graph = self.write();
        for field in self.schema.relationships() {
            let (ids, cascade) = relationship_value(record.fields.get(&field.name));
            graph.apply_patch(&record.id, &field.name, &ids, cascade, record.version)?;
        }
        graph.set_version(&record.id, record.version)
    }
}

/// Why a data store's graph could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the graph: {0}")]
    Graph(#[from] GraphError),
}

pub struct GraphCache {
    store: StoreClient,
    refresh_interval: Duration,
    entries: Mutex<HashMap<String, Arc<DsGraph>>>,
    loading: tokio::sync::Mutex<()>,
}

impl GraphCache {
    pub fn new(store: StoreClient, refresh_interval: Duration) -> Self {
        Self {
            store,
            refresh_interval,
            entries: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// The graph of `ds`, loading it when absent, stale, or built for another schema.
    pub async fn get(&self, ds: &str) -> Result<Arc<DsGraph>, LoadError> {
        let schema = self.store.schema(ds).await?;
        if let Some(entry) = self.fresh(ds, &schema) {
            return Ok(entry);
        }
        let _single_flight = self.loading.lock().await;
        if let Some(entry) = self.fresh(ds, &schema) {
            return Ok(entry);
        }
        let started = Instant::now();
        let entry = Arc::new(self.load(ds, schema).await?);
        let records = entry.read().record_count();
        tracing::info!(datastore = ds, records, elapsed = ?started.elapsed(), "relationship graph loaded");
        metrics::gauge!("cxrel_graph_records", "datastore" => ds.to_owned()).set(records as f64);
        self.entries().insert(ds.to_owned(), entry.clone());
        Ok(entry)
    }

    /// Forgets `ds`'s graph: the next job reloads it.
    pub fn invalidate(&self, ds: &str) {
        self.entries().remove(ds);
    }

    /// Re-reads one record after a 412 (or to check a compensation) and updates the graph.
    pub async fn refresh_record(
        &self,
        entry: &DsGraph,
        ds: &str,
        id: &str,
    ) -> Result<(), LoadError> {
        match self.store.get_record(ds, id).await {
            Ok(record) => Ok(entry.update_record(&record)?),
            Err(StoreError::NotFound { .. }) => {
                entry.write().remove_record(id);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<DsGraph>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, ds: &str, schema: &Arc<Schema>) -> Option<Arc<DsGraph>> {
        let entries = self.entries();
        let entry = entries.get(ds)?;
        let same_schema = Arc::ptr_eq(&entry.schema, schema) || entry.read().is_built_for(schema);
        (same_schema && entry.loaded_at.elapsed() < self.refresh_interval).then(|| entry.clone())
    }

    async fn load(&self, ds: &str, schema: Arc<Schema>) -> Result<DsGraph, LoadError> {
        let loaded_at = Instant::now();
        let mut builder = GraphBuilder::new(&schema);
        let mut records = std::pin::pin!(self.store.list_records(ds));
        while let Some(record) = records.try_next().await? {
            builder.add_record(&record.id, record.version)?;
            for field in schema.relationships() {
                if let Some(value) = record.fields.get(&field.name) {
                    let (ids, cascade) = relationship_value(Some(value));
                    builder.set_children(&record.id, &field.name, &ids, cascade)?;
                }
            }
        }
        Ok(DsGraph {
            graph: RwLock::new(builder.build()?),
            schema,
            loaded_at,
        })
    }
}

/// Reads `{"ids":[…],"cascade_action":…}`; anything else counts as no children (the store is loose).
pub fn relationship_value(value: Option<&Value>) -> (Vec<String>, CascadeAction) {
    let Some(value) = value else {
        return (Vec::new(), CascadeAction::None);
    };
    let ids = value
        .get("ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let cascade = value
        .get("cascade_action")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    (ids, cascade)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_relationship_value_reads_ids_and_cascade() {
        let v = json!({"ids": ["a", "b"], "cascade_action": "delete"});
        assert_eq!(
            relationship_value(Some(&v)),
            (vec!["a".to_owned(), "b".to_owned()], CascadeAction::Delete)
        );
    }

    #[test]
    fn a_malformed_relationship_value_counts_as_empty() {
        let v = json!("not a relationship");
        assert_eq!(relationship_value(Some(&v)), (vec![], CascadeAction::None));
        assert_eq!(relationship_value(None), (vec![], CascadeAction::None));
    }
}
