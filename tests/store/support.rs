//! Helpers of the data-store client suites: settings pointed at an emulator process, record
//! fixtures, and readers of the emulator's statistics.

use cxrel::settings::{Settings, Sources};
use cxrel::store::StoreClient;
use serde_json::{Value, json};

use crate::helpers::emulator::EmulatorProcess;

/// The compiled-in defaults, untouched by the process environment.
pub fn default_settings() -> Settings {
    Settings::load_with_env(&Sources::default(), Some(Default::default())).expect("defaults load")
}

/// Defaults pointed at `emu` (API base and issuer), then `tweak`.
pub fn settings_for(emu: &EmulatorProcess, tweak: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = default_settings();
    s.cxone.api_base = emu.base.clone();
    s.cxone.auth.issuer = emu.base.clone();
    tweak(&mut s);
    s
}

/// A client for `emu` with the defaults changed by `tweak`.
pub fn client_for(emu: &EmulatorProcess, tweak: impl FnOnce(&mut Settings)) -> StoreClient {
    StoreClient::from_settings(&settings_for(emu, tweak)).expect("client")
}

/// `n` record ids (UUIDs), distinct per call.
pub fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// Creates data store `datastore` with the common test schema and one named record per id.
pub async fn create_store(emu: &EmulatorProcess, datastore: &str, ids: &[String]) {
    let records: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| crate::helpers::emulator::named_record(id, &format!("r{i}")))
        .collect();
    emu.create_test_datastore(datastore, json!(records)).await;
}

/// Requests counted under `"{method} {template}"` routes whose template contains `route_part`,
/// by status (all statuses when `status` is None).
pub fn route_count(stats: &Value, method: &str, route_part: &str, status: Option<u16>) -> u64 {
    let Some(routes) = stats["requests"].as_object() else {
        return 0;
    };
    routes
        .iter()
        .filter(|(route, _)| route.starts_with(&format!("{method} ")) && route.contains(route_part))
        .flat_map(|(_, statuses)| statuses.as_object().into_iter().flatten())
        .filter(|(s, _)| status.is_none_or(|want| s.as_str() == want.to_string()))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum()
}

/// Task `task`'s share of a PATCH run: `count` name changes round-robin over `mine` (its four
/// records), each with If-Match chained through the version the previous PATCH returned; panics on
/// any error.
pub async fn patch_chained(
    client: &StoreClient,
    datastore: &str,
    mine: &[String],
    task: usize,
    count: usize,
) {
    let mut versions = [1u64; 4];
    for i in 0..count {
        let slot = i % 4;
        let fields = name_fields(&format!("t{task}-{i}"));
        let record = client
            .patch_record(datastore, &mine[slot], &fields, Some(versions[slot]))
            .await
            .unwrap_or_else(|e| panic!("PATCH failed: {e} ({})", e.code()));
        versions[slot] = record.version;
    }
}

/// A `"name"` field change, as a PATCH body's `fields`.
pub fn name_fields(name: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(name));
    m
}
