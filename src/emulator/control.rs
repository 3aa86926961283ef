//! The control API under `/_emulator/`: create, list, load and drop data stores, lock records,
//! set faults, read and reset statistics, reset everything. No auth: it is a test fixture's API.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiJson};
use super::faults::{Faults, FaultsUpdate};
use super::model::RecordInput;
use super::records::record_not_found;
use super::seed::DatastoreSpec;
use super::state::Shared;

/// `POST /_emulator/datastores` `{"id","schema","records"?}` → 201 `{"id","records":N}`;
/// 409 `datastore_exists` if the id is taken.
pub async fn create_datastore(
    State(state): State<Shared>,
    ApiJson(spec): ApiJson<DatastoreSpec>,
) -> Result<Response, ApiError> {
    let (id, store) = spec.build()?;
    let count = store.records().map.len();
    if !state.insert_datastore(id.clone(), store, false) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "datastore_exists",
            format!("data store {id:?} exists"),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "records": count})),
    )
        .into_response())
}

/// `GET /_emulator/datastores` → `{"datastores":[{"id","records":N}]}`.
pub async fn list_datastores(State(state): State<Shared>) -> Json<Value> {
    let list: Vec<Value> = state
        .datastore_summaries()
        .into_iter()
        .map(|(id, count)| json!({"id": id, "records": count}))
        .collect();
    Json(json!({"datastores": list}))
}

/// `DELETE /_emulator/datastores/{ds}` → 204, or 404.
pub async fn delete_datastore(
    State(state): State<Shared>,
    Path(datastore): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.remove_datastore(&datastore) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "datastore_not_found",
            format!("no data store {datastore:?}"),
        ))
    }
}

/// `PUT /_emulator/datastores/{ds}/schema` `{"fields":[…]}`: replaces the schema, keeping the
/// records and their versions → `{"id","fields":N}`; 400 when the schema is invalid.
pub async fn set_schema(
    State(state): State<Shared>,
    Path(datastore): Path<String>,
    ApiJson(schema): ApiJson<super::model::StoreSchema>,
) -> Result<Json<Value>, ApiError> {
    schema
        .check()
        .map_err(|why| ApiError::bad_request("invalid_schema", why))?;
    let fields = schema.fields.len();
    let replaced = state.datastore(&datastore)?.with_schema(schema);
    state.insert_datastore(datastore.clone(), replaced, true);
    Ok(Json(json!({"id": datastore, "fields": fields})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRecords {
    records: Vec<RecordInput>,
}

/// `POST /_emulator/datastores/{ds}/records` `{"records":[RECORD…]}`: inserts or replaces, all
/// or nothing → `{"loaded":N,"total":M}`.
pub async fn load_records(
    State(state): State<Shared>,
    Path(datastore): Path<String>,
    ApiJson(body): ApiJson<BulkRecords>,
) -> Result<Json<Value>, ApiError> {
    let store = state.datastore(&datastore)?;
    let loaded = store.load(body.records)?;
    let total = store.records().map.len();
    Ok(Json(json!({"loaded": loaded, "total": total})))
}

/// `POST /_emulator/records/{ds}/{id}/lock`: PATCH and DELETE of the record answer 409 until unlocked.
pub async fn lock_record(
    State(state): State<Shared>,
    Path((datastore, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    set_lock(&state, &datastore, &id, true)
}

/// `POST /_emulator/records/{ds}/{id}/unlock`.
pub async fn unlock_record(
    State(state): State<Shared>,
    Path((datastore, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    set_lock(&state, &datastore, &id, false)
}

fn set_lock(
    state: &Shared,
    datastore: &str,
    id: &str,
    locked: bool,
) -> Result<Json<Value>, ApiError> {
    let store = state.datastore(datastore)?;
    let mut records = store.records();
    if !records.map.contains_key(id) {
        return Err(record_not_found(id));
    }
    if locked {
        records.locked.insert(id.to_owned());
    } else {
        records.locked.remove(id);
    }
    Ok(Json(
        json!({"datastore": datastore, "id": id, "locked": locked}),
    ))
}

/// `GET /_emulator/faults`.
pub async fn get_faults(State(state): State<Shared>) -> Json<Faults> {
    Json(state.faults.current())
}

/// `PUT` (or `PATCH`) `/_emulator/faults`: changes the keys given, answers the faults in force.
pub async fn set_faults(
    State(state): State<Shared>,
    ApiJson(update): ApiJson<FaultsUpdate>,
) -> Result<Json<Faults>, ApiError> {
    state.faults.update(update).map(Json)
}

/// `GET /_emulator/stats`.
pub async fn stats(State(state): State<Shared>) -> Json<Value> {
    Json(state.stats.snapshot())
}

/// `POST /_emulator/stats/reset`: zeroes the statistics only.
pub async fn reset_stats(State(state): State<Shared>) -> StatusCode {
    state.stats.reset();
    StatusCode::NO_CONTENT
}

/// `POST /_emulator/reset`: back to the start state (seed data, default faults, no tokens,
/// statistics or webhook receivers).
pub async fn reset(State(state): State<Shared>) -> Result<StatusCode, ApiError> {
    state.reset()?;
    Ok(StatusCode::NO_CONTENT)
}
