//! Data-store definitions as JSON (`{"id","schema","records"}`), shared by the seed file
//! (`{"datastores":[…]}`) and the control API's create call.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::error::ApiError;
use super::model::{DataStore, RecordInput, StoreSchema};

/// One data store to create: id, schema and optional initial records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreSpec {
    pub id: String,
    pub schema: StoreSchema,
    #[serde(default)]
    pub records: Vec<RecordInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    pub datastores: Vec<DatastoreSpec>,
}

impl DatastoreSpec {
    /// Checks the id and schema, loads the records; 400 with the reason otherwise.
    pub fn build(self) -> Result<(String, DataStore), ApiError> {
        if self.id.is_empty() || self.id.contains('/') {
            return Err(ApiError::bad_request(
                "invalid_request",
                "a data store id must be non-empty and contain no '/'",
            ));
        }
        self.schema
            .check()
            .map_err(|why| ApiError::bad_request("invalid_schema", why))?;
        let store = DataStore::new(self.schema);
        store.load(self.records)?;
        Ok((self.id, store))
    }
}

/// Reads and parses a seed file, naming the file in errors.
pub fn read_seed_file(path: &Path) -> anyhow::Result<SeedFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read seed file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid seed file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_with_an_unknown_field_fails_the_whole_data_store() {
        let spec: DatastoreSpec = serde_json::from_value(json!({
            "id": "ds",
            "schema": {"fields": [{"name": "name", "type": "string"}]},
            "records": [{"id": "a", "fields": {"name": "x"}}, {"id": "b", "fields": {"bad": 1}}]
        }))
        .unwrap();
        let err = spec.build().unwrap_err();
        assert_eq!(err.code, "unknown_field");
        assert!(err.description.contains("\"b\""), "{}", err.description);
    }

    /// Child → parents over every relationship field of the shipped seed's `accounts`.
    fn seed_parents() -> (Vec<String>, std::collections::HashMap<String, Vec<String>>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/emulator-seed.json");
        let spec = read_seed_file(&path).unwrap().datastores.remove(0);
        let mut parents: std::collections::HashMap<String, Vec<String>> = Default::default();
        let ids = spec.records.iter().map(|r| r.id.clone()).collect();
        for record in &spec.records {
            for field in ["parent_child_link", "owner_link"] {
                let children = record.fields.get(field).and_then(|v| v["ids"].as_array());
                for child in children.into_iter().flatten() {
                    let child = child.as_str().unwrap().to_owned();
                    parents.entry(child).or_default().push(record.id.clone());
                }
            }
        }
        (ids, parents)
    }

    #[test]
    fn the_shipped_seed_is_a_forest_with_one_parent_per_child_and_depth_within_five() {
        let (ids, parents) = seed_parents();
        assert!(
            parents.values().all(|p| p.len() == 1),
            "a child has two parents"
        );
        for id in &ids {
            // Walking up from any record ends at a root within 5 edges (so no cycles either).
            let mut current = id.clone();
            let mut edges = 0;
            while let Some(up) = parents.get(&current) {
                current = up[0].clone();
                edges += 1;
                assert!(edges <= 5, "{id} is deeper than 5 or on a cycle");
            }
        }
        let roots = ids.iter().filter(|id| !parents.contains_key(*id)).count();
        assert!(roots >= 100, "only {roots} records without a parent");
    }

    #[test]
    fn the_shipped_seed_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/emulator-seed.json");
        let seed = read_seed_file(&path).unwrap();
        let mut total = 0;
        for spec in seed.datastores {
            let (_, store) = spec.build().unwrap();
            total += store.records().map.len();
        }
        assert!(total >= 200, "{total} records");
    }
}
