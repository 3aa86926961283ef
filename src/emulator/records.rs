//! The record API of SPEC §3: schema, paginated list, get with ETag, version-checked PATCH of
//! fields, and DELETE with cascade along `cascade_action: delete` links.

use std::collections::HashSet;
use std::ops::Bound;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::{ReadAccess, WriteAccess};
use super::error::{ApiError, ApiJson, parse_query};
use super::model::{
    Href, Links, RecordView, Records, StoreSchema, StoredRecord, cascade_delete_ids,
};
use super::state::Shared;

pub const RECORDS_PATH: &str = "/api/v2/datastores";
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// `GET …/{ds}/schema`.
pub async fn schema(
    _: ReadAccess,
    State(state): State<Shared>,
    Path(datastore): Path<String>,
) -> Result<Json<StoreSchema>, ApiError> {
    Ok(Json(state.datastore(&datastore)?.schema.clone()))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    page_size: Option<usize>,
    page_token: Option<String>,
}

/// `GET …/{ds}/records?page_size=N&page_token=T`: records in id order; the token is the
/// encoded last id of the previous page, so pages stay consistent while records change.
pub async fn list(
    _: ReadAccess,
    State(state): State<Shared>,
    Path(datastore): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query: ListQuery = parse_query(&uri)?;
    let page_size = match query.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "page_size must be ≥ 1",
            ));
        }
        Some(n) => n.min(MAX_PAGE_SIZE),
    };
    let after = query
        .page_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_page_token)
        .transpose()?;
    let store = state.datastore(&datastore)?;
    let records = store.records();
    let start = after
        .as_ref()
        .map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_str()));
    let mut page: Vec<RecordView> = Vec::with_capacity(page_size.min(records.map.len()));
    let mut range = records.map.range::<str, _>((start, Bound::Unbounded));
    for (id, record) in range.by_ref().take(page_size) {
        page.push(view(id, record, None));
    }
    let next = match (range.next(), page.last()) {
        (Some(_), Some(last)) => Some(URL_SAFE_NO_PAD.encode(last.id)),
        _ => None,
    };
    let body = serde_json::to_vec(&Page {
        records: page,
        next_page_token: next,
    })
    .unwrap_or_default();
    Ok(json_response(StatusCode::OK, body, None))
}

#[derive(serde::Serialize)]
struct Page<'a> {
    records: Vec<RecordView<'a>>,
    next_page_token: Option<String>,
}

fn decode_page_token(token: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_page_token",
                "page_token is not one this API issued",
            )
        })
}

/// `GET …/{ds}/records/{id}` with `ETag: "{_version}"`.
pub async fn get(
    _: ReadAccess,
    State(state): State<Shared>,
    Path((datastore, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = state.datastore(&datastore)?;
    let records = store.records();
    let record = records.map.get(&id).ok_or_else(|| record_not_found(&id))?;
    let body = to_json(&view(&id, record, None));
    Ok(json_response(StatusCode::OK, body, Some(record.version)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    fields: Map<String, Value>,
}

/// `PATCH …/{ds}/records/{id}` with `{"fields":{…}}`: merges the fields (checked against the
/// schema first), honours `If-Match`, bumps `_version`, answers the record with `_links`.
pub async fn patch(
    _: WriteAccess,
    State(state): State<Shared>,
    Path((datastore, id)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Response, ApiError> {
    let store = state.datastore(&datastore)?;
    let expected = if_match(&headers)?;
    let fields = store.schema.normalize_fields(body.fields)?;
    let links = Links {
        self_link: Href {
            href: format!("{RECORDS_PATH}/{datastore}/records/{id}"),
        },
    };
    // The `drop_patches` fault: 200 with the record as it was, nothing stored.
    let drop = state.faults.drops_patches();
    let conflict = state.faults.conflicts_on(&id);
    let (bytes, version) = {
        let mut records = store.records();
        if let Some(record) = records.map.get_mut(&id).filter(|_| conflict) {
            record.version += 1;
        }
        writable(&records, &id, expected)?;
        let record = records
            .map
            .get_mut(&id)
            .ok_or_else(|| record_not_found(&id))?;
        if !drop {
            record.fields.extend(fields);
            record.version += 1;
        }
        (to_json(&view(&id, record, Some(links))), record.version)
    };
    state.stats.patch_applied();
    Ok(json_response(StatusCode::OK, bytes, Some(version)))
}

/// `DELETE …/{ds}/records/{id}`: deletes the record and, recursively, every child it holds under
/// `cascade_action: delete` (cycle-safe; missing children are skipped). 409 if any is locked.
pub async fn delete(
    _: WriteAccess,
    State(state): State<Shared>,
    Path((datastore, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.datastore(&datastore)?;
    let expected = if_match(&headers)?;
    let mut records = store.records();
    writable(&records, &id, expected)?;
    let doomed = cascade_set(&records, &store.schema, &id);
    if let Some(locked) = doomed.iter().find(|d| records.locked.contains(*d)) {
        return Err(locked_error(locked));
    }
    for victim in &doomed {
        records.map.remove(victim);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("x-emulator-deleted", HeaderValue::from(doomed.len()));
    Ok(response)
}

/// The record `id` plus everything reachable from it through cascade-delete links.
fn cascade_set(records: &Records, schema: &StoreSchema, id: &str) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::from([id.to_owned()]);
    let mut order = vec![id.to_owned()];
    let mut next = 0;
    while let Some(current) = order.get(next).cloned() {
        next += 1;
        let Some(record) = records.map.get(&current) else {
            continue;
        };
        for field in schema.relationship_fields() {
            let children = record
                .fields
                .get(field)
                .and_then(cascade_delete_ids)
                .into_iter()
                .flatten();
            for child in children.filter_map(Value::as_str) {
                if records.map.contains_key(child) && seen.insert(child.to_owned()) {
                    order.push(child.to_owned());
                }
            }
        }
    }
    order
}

/// Common PATCH/DELETE preconditions: the record exists, is not locked, and matches If-Match.
fn writable(records: &Records, id: &str, expected: Option<Precondition>) -> Result<(), ApiError> {
    let record = records.map.get(id).ok_or_else(|| record_not_found(id))?;
    if records.locked.contains(id) {
        return Err(locked_error(id));
    }
    match expected {
        Some(Precondition::Version(v)) if v != record.version => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            format!(
                "If-Match {v} but the record is at version {}",
                record.version
            ),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precondition {
    Any,
    Version(u64),
}

/// `If-Match`: absent = unconditional; `*`; `"N"`, `W/"N"` or bare `N`; anything else is 400.
fn if_match(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(Some(Precondition::Any));
    }
    let bare = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    bare.parse()
        .map(|v| Some(Precondition::Version(v)))
        .map_err(|_| {
            ApiError::bad_request("invalid_request", "If-Match must be a version: \"N\" or N")
        })
}

fn view<'a>(id: &'a str, record: &'a StoredRecord, links: Option<Links>) -> RecordView<'a> {
    RecordView {
        id,
        fields: &record.fields,
        version: record.version,
        links,
    }
}

fn to_json(view: &RecordView<'_>) -> Vec<u8> {
    // Serialising maps of JSON values with string keys cannot fail.
    serde_json::to_vec(view).unwrap_or_default()
}

fn json_response(status: StatusCode, body: Vec<u8>, version: Option<u64>) -> Response {
    let mut response = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    if let Some(v) = version
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\""))
    {
        response.headers_mut().insert(ETAG, etag);
    }
    response
}

pub fn record_not_found(id: &str) -> ApiError {
    ApiError::not_found("record_not_found", format!("no record {id:?}"))
}

fn locked_error(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "record_locked",
        format!("record {id:?} is locked"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(if_match: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(IF_MATCH, HeaderValue::from_str(if_match).unwrap());
        h
    }

    #[test]
    fn if_match_accepts_quoted_bare_weak_and_star() {
        assert_eq!(
            if_match(&headers("\"3\"")).unwrap(),
            Some(Precondition::Version(3))
        );
        assert_eq!(
            if_match(&headers("3")).unwrap(),
            Some(Precondition::Version(3))
        );
        assert_eq!(
            if_match(&headers("W/\"3\"")).unwrap(),
            Some(Precondition::Version(3))
        );
        assert_eq!(if_match(&headers("*")).unwrap(), Some(Precondition::Any));
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert!(if_match(&headers("abc")).is_err());
    }

    #[test]
    fn a_cascade_follows_delete_links_only_and_survives_cycles() {
        let schema: StoreSchema = serde_json::from_value(json!({"fields": [
            {"name": "link", "type": "relationship"}
        ]}))
        .unwrap();
        let mut records = Records::default();
        let rec = |link: Value| StoredRecord {
            fields: json!({"link": link}).as_object().unwrap().clone(),
            version: 1,
        };
        records.map.insert(
            "a".into(),
            rec(json!({"ids": ["b", "ghost"], "cascade_action": "delete"})),
        );
        records.map.insert(
            "b".into(),
            rec(json!({"ids": ["a", "c"], "cascade_action": "delete"})),
        );
        records.map.insert(
            "c".into(),
            rec(json!({"ids": ["d"], "cascade_action": "update"})),
        );
        records.map.insert(
            "d".into(),
            rec(json!({"ids": [], "cascade_action": "none"})),
        );
        let mut set = cascade_set(&records, &schema, "a");
        set.sort();
        assert_eq!(set, vec!["a", "b", "c"]);
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let token = URL_SAFE_NO_PAD.encode("abc");
        assert_eq!(decode_page_token(&token).unwrap(), "abc");
        assert_eq!(
            decode_page_token("!!").unwrap_err().code,
            "invalid_page_token"
        );
    }
}
