//! The demo's sample batch, derived from the shipped seed data store: jobs that apply, and jobs that
//! break each kind of rule (cycle, depth, missing record, unknown field, parent conflict, bad JSON).

use std::collections::HashSet;

use serde_json::{Value, json};

/// The seed the demo loads (the same file `cxrel emulator --seed` uses).
pub const SEED_JSON: &str = include_str!("../../config/emulator-seed.json");

/// One message of the batch: its id, its body, and what the demo expects to happen.
#[derive(Debug, Clone)]
pub struct SampleJob {
    pub id: String,
    pub body: Vec<u8>,
    pub expect: Expect,
}

/// What the demo expects the worker to do with a sample job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Every operation applied.
    Applied,
    /// Dead-lettered with this SPEC §2 code.
    Rejected(&'static str),
    /// Non-atomic: this many operations applied, the rest rejected.
    Partial { applied: usize },
    /// Dead-lettered at once: the body does not parse.
    Unparseable,
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Applied => f.write_str("applied"),
            Self::Rejected(code) => write!(f, "rejected: {code}"),
            Self::Partial { applied } => write!(f, "{applied} applied, the rest rejected"),
            Self::Unparseable => f.write_str("dead-lettered: not valid JSON"),
        }
    }
}

/// The batch for `datastore` (a seed entry `{"id","schema","records"}`); None when the seed lacks
/// what the batch needs (two relationship fields, linked and unlinked records).
pub fn batch(datastore: &Value) -> Option<Vec<SampleJob>> {
    let id = datastore["id"].as_str()?;
    let records = datastore["records"].as_array()?;
    let fields = relationship_fields(datastore);
    let tree = fields.first()?.as_str();
    let owner = fields.get(1)?.as_str();
    let free = unlinked(records, &fields);
    let f = |i: usize| free.get(i).map(String::as_str);
    let (x, y) = first_edge(records, tree)?;
    let (_, owned) = first_edge(records, owner)?;
    let chain: Option<Vec<&str>> = (10..17).map(f).collect();
    let chain = chain?;
    let missing = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"cxrel-demo-missing").to_string();
    let op = |p: &str, field: &str, kids: &[&str]| json!({"parent_id": p, "relationship_field": field, "child_ids": kids});
    let job = |job_id: &str, atomic: bool, ops: Vec<Value>| json!({"job_id": job_id, "datastore_id": id, "atomic": atomic, "operations": ops});
    let add = |p: &str, kids: &[&str]| json!({"parent_id": p, "relationship_field": tree, "child_ids": kids, "mode": "add"});
    let jobs = vec![
        (
            "demo-01-link",
            Expect::Applied,
            job("demo-01-link", true, vec![op(f(0)?, tree, &[f(1)?, f(2)?])]),
        ),
        (
            "demo-02-two-parents",
            Expect::Applied,
            job(
                "demo-02-two-parents",
                true,
                vec![op(f(3)?, tree, &[f(4)?]), op(f(5)?, tree, &[f(6)?, f(7)?])],
            ),
        ),
        (
            "demo-03-add",
            Expect::Applied,
            job("demo-03-add", false, vec![add(f(8)?, &[f(9)?])]),
        ),
        (
            "demo-04-tutorial-shape",
            Expect::Applied,
            json!({"datastoreId": id, "parentId": f(22)?, "childIds": [f(23)?], "relationshipField": tree, "cascadeAction": "none"}),
        ),
        (
            "demo-05-cycle",
            Expect::Rejected("cycle_detected"),
            job("demo-05-cycle", true, vec![add(&y, &[&x])]),
        ),
        (
            "demo-06-too-deep",
            Expect::Rejected("max_depth_exceeded"),
            job(
                "demo-06-too-deep",
                true,
                chain.windows(2).map(|w| op(w[0], tree, &[w[1]])).collect(),
            ),
        ),
        (
            "demo-07-missing-record",
            Expect::Rejected("record_not_found"),
            job(
                "demo-07-missing-record",
                true,
                vec![op(f(17)?, tree, &[&missing])],
            ),
        ),
        (
            "demo-08-unknown-field",
            Expect::Rejected("unknown_field"),
            job(
                "demo-08-unknown-field",
                true,
                vec![op(f(18)?, "manager_link", &[f(19)?])],
            ),
        ),
        (
            "demo-09-second-owner",
            Expect::Rejected("parent_conflict"),
            job(
                "demo-09-second-owner",
                true,
                vec![op(f(24)?, owner, &[&owned])],
            ),
        ),
        (
            "demo-10-partly-valid",
            Expect::Partial { applied: 1 },
            job(
                "demo-10-partly-valid",
                false,
                vec![op(f(20)?, tree, &[f(21)?]), op(f(25)?, tree, &[f(25)?])],
            ),
        ),
    ];
    let mut out: Vec<SampleJob> = jobs
        .into_iter()
        .map(|(id, expect, body)| SampleJob {
            id: id.to_owned(),
            body: body.to_string().into_bytes(),
            expect,
        })
        .collect();
    out.push(SampleJob {
        id: "demo-11-not-json".to_owned(),
        body: b"{\"job_id\": \"demo-11-not-json\", \"operations\": [".to_vec(),
        expect: Expect::Unparseable,
    });
    Some(out)
}

/// Names of the schema's relationship fields, in schema order.
fn relationship_fields(datastore: &Value) -> Vec<String> {
    datastore["schema"]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["type"] == "relationship")
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect()
}

fn related_ids(record: &Value, field: &str) -> Vec<String> {
    record["fields"][field]["ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Records that are neither parent nor child in any relationship field, in seed order.
fn unlinked(records: &[Value], fields: &[String]) -> Vec<String> {
    let mut linked = HashSet::new();
    for record in records {
        for field in fields {
            let kids = related_ids(record, field);
            if !kids.is_empty()
                && let Some(id) = record["id"].as_str()
            {
                linked.insert(id.to_owned());
            }
            linked.extend(kids);
        }
    }
    records
        .iter()
        .filter_map(|r| r["id"].as_str())
        .filter(|id| !linked.contains(*id))
        .map(str::to_owned)
        .collect()
}

/// The first (parent, child) pair stored in `field`.
fn first_edge(records: &[Value], field: &str) -> Option<(String, String)> {
    records.iter().find_map(|r| {
        let kid = related_ids(r, field).into_iter().next()?;
        Some((r["id"].as_str()?.to_owned(), kid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_datastore() -> Value {
        let seed: Value = serde_json::from_str(SEED_JSON).unwrap();
        seed["datastores"][0].clone()
    }

    #[test]
    fn the_shipped_seed_yields_a_full_batch_of_distinct_jobs() {
        let jobs = batch(&seed_datastore()).expect("batch from the seed");
        assert_eq!(jobs.len(), 11);
        let ids: HashSet<_> = jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(ids.len(), jobs.len());
    }

    #[test]
    fn every_valid_job_uses_records_no_other_job_touches() {
        let jobs = batch(&seed_datastore()).unwrap();
        let mut seen = HashSet::new();
        for job in jobs.iter().filter(|j| j.expect == Expect::Applied) {
            let body: Value = serde_json::from_slice(&job.body).unwrap();
            let text = body.to_string();
            for word in text.split('"').filter(|w| w.len() == 36) {
                assert!(seen.insert(word.to_owned()), "{word} reused by {}", job.id);
            }
        }
    }

    #[test]
    fn a_seed_without_relationships_yields_no_batch() {
        let datastore = json!({"id": "x", "schema": {"fields": []}, "records": []});
        assert!(batch(&datastore).is_none());
    }
}
