//! The pair workload shared by worker suites: `n` one-operation jobs, each linking parent r(2i) to
//! child r(2i+1) in `parent_child_link`, the emulator holding those records, and the checks that
//! every job settled and was applied exactly once.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{job, op, rid, stored_ids};
use crate::helpers::emulator::{self, EmulatorProcess, named_record};

pub const FIELD: &str = "parent_child_link";

/// Job ids of the `cxrel.job.completed` events among `events`.
pub fn completed(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e["type"] == "cxrel.job.completed")
        .filter_map(|e| e["data"]["job_id"].as_str().map(str::to_owned))
        .collect()
}

/// `n` one-operation jobs: parent r(2i) gets child r(2i+1).
pub fn pair_jobs(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            job(
                &format!("{prefix}-{i}"),
                "accounts",
                true,
                vec![op(&rid("r", 2 * i), FIELD, &[&rid("r", 2 * i + 1)])],
            )
        })
        .collect()
}

/// An emulator with data store `accounts` holding records r(0)..r(records).
pub async fn emulator_with(records: usize) -> EmulatorProcess {
    let emu = EmulatorProcess::spawn();
    let list: Vec<Value> = (0..records)
        .map(|n| named_record(&rid("r", n), "x"))
        .collect();
    emu.create_test_datastore("accounts", Value::Array(list))
        .await;
    emu
}

/// Every record of `datastore`, read page by page with one token (a GET per record with a fresh
/// token each is far slower).
pub async fn list_records(emu: &EmulatorProcess, datastore: &str) -> Vec<Value> {
    let client = emulator::client();
    let token = emu.token().await;
    let mut records = Vec::new();
    let mut page_token: Option<String> = None;
    loop {
        let mut request = client
            .get(emu.records_url(datastore))
            .bearer_auth(&token)
            .query(&[("page_size", "1000")]);
        if let Some(t) = &page_token {
            request = request.query(&[("page_token", t)]);
        }
        let page = emulator::fetch_json(request).await;
        records.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["next_page_token"].as_str() {
            Some(t) => page_token = Some(t.to_owned()),
            None => break,
        }
    }
    records
}

/// Every parent holds exactly its one child: each job applied, none twice or lost.
pub async fn assert_pairs_stored(emu: &EmulatorProcess, n: usize) {
    let stored: HashMap<String, Vec<String>> = list_records(emu, "accounts")
        .await
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap_or_default().to_owned();
            (id, stored_ids(r, FIELD))
        })
        .collect();
    for i in 0..n {
        assert_eq!(
            stored.get(&rid("r", 2 * i)),
            Some(&vec![rid("r", 2 * i + 1)]),
            "job {i}"
        );
    }
}
