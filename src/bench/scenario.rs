//! The benchmark's data: a data store of unlinked records and jobs that each link fresh pairs, so
//! every operation is valid, independent and needs exactly one PATCH.

use serde_json::{Value, json};

/// The benchmark data store's id and relationship field.
pub const DATASTORE: &str = "bench";
pub const FIELD: &str = "parent_child_link";

/// Shape of a run's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub jobs: usize,
    pub ops_per_job: usize,
}

impl Shape {
    pub fn operations(&self) -> usize {
        self.jobs.saturating_mul(self.ops_per_job)
    }
}

/// Deterministic id of record `n` (parents and children of operation `k` are `2k` and `2k + 1`).
fn record_id(n: usize) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("cxrel-bench-{n}").as_bytes(),
    )
    .to_string()
}

/// The control-API body that creates the data store with two records per operation.
pub fn datastore(shape: Shape) -> Value {
    let records: Vec<Value> = (0..shape.operations() * 2)
        .map(|n| json!({"id": record_id(n), "fields": {"name": format!("record {n}")}}))
        .collect();
    json!({
        "id": DATASTORE,
        "schema": {"fields": [
            {"name": "name", "type": "string"},
            {"name": FIELD, "type": "relationship", "constraints": {"max_depth": 5, "acyclic": true}},
        ]},
        "records": records,
    })
}

/// Job `j`'s id.
pub fn job_id(j: usize) -> String {
    format!("bench-{j:07}")
}

/// Job `j`'s body: `ops_per_job` operations, each giving one fresh parent one fresh child.
pub fn job_body(shape: Shape, j: usize) -> Vec<u8> {
    let operations: Vec<Value> = (0..shape.ops_per_job)
        .map(|i| {
            let k = j * shape.ops_per_job + i;
            json!({
                "parent_id": record_id(2 * k),
                "relationship_field": FIELD,
                "child_ids": [record_id(2 * k + 1)],
            })
        })
        .collect();
    let job = json!({
        "job_id": job_id(j),
        "datastore_id": DATASTORE,
        "atomic": true,
        "operations": operations,
    });
    job.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_parent_and_child() {
        let shape = Shape {
            jobs: 3,
            ops_per_job: 2,
        };
        let mut ids = std::collections::HashSet::new();
        for j in 0..shape.jobs {
            let job: Value = serde_json::from_slice(&job_body(shape, j)).unwrap();
            for op in job["operations"].as_array().unwrap() {
                assert!(ids.insert(op["parent_id"].as_str().unwrap().to_owned()));
                assert!(ids.insert(op["child_ids"][0].as_str().unwrap().to_owned()));
            }
        }
        assert_eq!(ids.len(), 12);
        assert_eq!(datastore(shape)["records"].as_array().unwrap().len(), 12);
    }
}
