//! The JSON API under `/api/dead-letters` (SPEC §9): list, summary, one message, export (reads,
//! open to anyone who can reach the console) and replay, purge (writes: token or login, same
//! origin, one at a time, each audited). Writes take `"dry_run": true` to count without acting,
//! which the page uses for its confirmations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Access};
use super::params;
use super::{ConsoleError, SharedConsole};
use crate::dlq::{
    self, DeadLetter, Filter, Pace, PurgeGuard, ReplayRequest, Summary, audit, ledger,
};

type ApiResult = Result<Json<Value>, ConsoleError>;

/// Paging of the list.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Paging {
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            page: 1,
            per_page: 50,
        }
    }
}

/// Matching dead letters, newest failure first.
pub fn matching<'a>(letters: &'a [DeadLetter], filter: &Filter) -> Vec<&'a DeadLetter> {
    let now = SystemTime::now();
    let mut out: Vec<_> = letters.iter().filter(|l| filter.matches(l, now)).collect();
    out.sort_by_key(|l| std::cmp::Reverse(l.last_failed_at()));
    out
}

/// GET /api/dead-letters?code=&stage=&job_id=&datastore=&older_than=&newer_than=&page=&per_page=
pub async fn list(
    State(console): State<SharedConsole>,
    keys: Result<Query<HashMap<String, String>>, QueryRejection>,
    filter: Result<Query<Filter>, QueryRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> ApiResult {
    params::known_query(keys, &["page", "per_page"])?;
    let filter = params::query(filter)?.normalized();
    let paging = params::query(paging)?;
    let snapshot = console.snapshot().await?;
    let all = matching(&snapshot.letters, &filter);
    let per_page = paging.per_page.clamp(1, 500);
    let page = paging.page.max(1);
    let now = SystemTime::now();
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|l| l.to_row(now))
        .collect();
    Ok(Json(json!({
        "filter": filter.describe(),
        "matching": all.len(),
        "page": page,
        "per_page": per_page,
        "depth": snapshot.depth,
        "missed": snapshot.missed,
        "other_readers": snapshot.other_readers,
        "items": items,
    })))
}

/// GET /api/dead-letters/summary
pub async fn summary(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult {
    let snapshot = console.snapshot().await?;
    let summary = Summary::of(&snapshot, SystemTime::now());
    let mut value = serde_json::to_value(summary).unwrap_or_default();
    value["queue"] = json!(console.topology.dead());
    value["can_write"] = json!(auth::access(&console, &headers, peer).can_write());
    value["exported"] = json!(ledger::load(console.topology.prefix()).count());
    Ok(Json(value))
}

/// GET /api/dead-letters/{message_id} (a job id works too)
pub async fn one(State(console): State<SharedConsole>, Path(id): Path<String>) -> ApiResult {
    let snapshot = console.snapshot().await?;
    let letter = snapshot
        .letters
        .iter()
        .find(|l| l.has_id(&id))
        .ok_or_else(|| {
            ConsoleError::new(
                StatusCode::NOT_FOUND,
                format!("no dead letter with message id or job id {id:?} (replayed or purged?)"),
            )
        })?;
    let mut value = letter.to_json();
    value["summary"] = letter.to_row(SystemTime::now());
    value["replay_history"] = json!(letter.replay_history());
    Ok(Json(value))
}

/// GET /api/dead-letters/export?filter… : JSON Lines of every match, or 409 if any message could
/// not be read.
pub async fn export(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    keys: Result<Query<HashMap<String, String>>, QueryRejection>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Response, ConsoleError> {
    params::known_query(keys, &[])?;
    let filter = params::query(filter)?.normalized();
    // Only an operator's export counts for purge's guard: an anonymous or read-only reader's
    // (an export sent to /dev/null, say) must not let a purge through that no copy covers.
    let (actor, ledger) = match auth::access(&console, &headers, peer) {
        Access::Operator(name) => (name, dlq::LedgerUpdate::Record),
        _ => (format!("anonymous@{}", peer.ip()), dlq::LedgerUpdate::Leave),
    };
    let _one_at_a_time = console.action.lock().await;
    let entry = audit::Entry::new(&actor, "export", &filter, "");
    let connection = console.connection().await?;
    let mut out = Vec::new();
    let result = dlq::export(&connection, &console.topology, &filter, &mut out, ledger).await;
    let count = *result.as_ref().unwrap_or(&0);
    console.remember(entry.finish(
        count,
        result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    ));
    result?;
    let name = format!("{}-dead-letters.jsonl", console.topology.prefix());
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        out,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct ReplayBody {
    #[serde(flatten)]
    pub filter: Filter,
    #[serde(default)]
    pub reason: String,
    /// Messages per second; at most `[console].replay_rate`, which is also the default.
    pub rate: Option<f64>,
    pub limit: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
}

/// POST /api/dead-letters/replay
pub async fn replay(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let actor = auth::writer(&console, &headers, peer)?;
    let body: ReplayBody = params::body(body, &["reason", "rate", "limit", "dry_run"])?;
    let filter = body.filter.clone().normalized();
    let rate = body
        .rate
        .unwrap_or(console.replay_rate)
        .min(console.replay_rate);
    if !rate.is_finite() || rate <= 0.0 {
        return Err(bad_request(
            "rate must be a number of messages per second above 0",
        ));
    }
    let limit = body.limit.unwrap_or(u64::MAX);
    if limit == 0 {
        return Err(bad_request(
            "limit must be at least 1 (leave it out to replay every match)",
        ));
    }
    if body.dry_run {
        return count_matches(&console, &filter, limit, json!({"rate": rate})).await;
    }
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(bad_request(
            "a reason is required: say why these are replayed (it is stamped on each message)",
        ));
    }
    let request = ReplayRequest {
        filter: filter.clone(),
        reason: reason.to_owned(),
        pace: Pace {
            limit,
            rate: Some(rate),
            ..Pace::default()
        },
    };
    let _one_at_a_time = console.action.lock().await;
    let entry = audit::Entry::new(&actor, "replay", &filter, reason);
    let connection = console.connection().await?;
    let result = dlq::replay(&connection, &console.topology, &request).await;
    console.invalidate();
    let report = finish(&console, entry, result)?;
    Ok(Json(json!({
        "replayed": report.acted,
        "scanned": report.scanned,
        "unreached": report.unreached,
        "other_readers": report.other_readers,
        "ids": report.ids,
        "filter": filter.describe(),
        "to": console.topology.jobs(),
    })))
}

#[derive(Debug, Deserialize)]
pub struct PurgeBody {
    #[serde(flatten)]
    pub filter: Filter,
    /// Purge even when more would go than the last complete export counted.
    #[serde(default)]
    pub without_export: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// POST /api/dead-letters/purge
pub async fn purge(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let actor = auth::writer(&console, &headers, peer)?;
    let body: PurgeBody = params::body(body, &["without_export", "dry_run"])?;
    let filter = body.filter.clone().normalized();
    if body.dry_run {
        return purge_preview(&console, &filter).await;
    }
    let guard = if body.without_export {
        PurgeGuard::WithoutExport
    } else {
        PurgeGuard::RequireExport
    };
    let _one_at_a_time = console.action.lock().await;
    let entry = audit::Entry::new(&actor, "purge", &filter, "");
    let connection = console.connection().await?;
    let result = dlq::purge(&connection, &console.topology, &filter, guard).await;
    console.invalidate();
    let report = finish(&console, entry, result)?;
    Ok(Json(json!({
        "purged": report.acted,
        "scanned": report.scanned,
        "unreached": report.unreached,
        "other_readers": report.other_readers,
        "ids": report.ids,
        "filter": filter.describe(),
    })))
}

/// Logs and keeps the audit entry of a finished action; passes its result on.
fn finish(
    console: &SharedConsole,
    entry: audit::Entry,
    result: Result<dlq::ScanReport, dlq::DlqError>,
) -> Result<dlq::ScanReport, ConsoleError> {
    let count = result.as_ref().map_or_else(|e| e.done(), |r| r.acted);
    let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    console.remember(entry.finish(count, outcome));
    Ok(result?)
}

/// A dry run: how many match now (at most `limit`), plus `extra` fields.
/// What a purge would remove, and how many of those the last complete export holds (the page
/// warns when that is fewer: the rest would go without a copy).
async fn purge_preview(console: &SharedConsole, filter: &Filter) -> ApiResult {
    let snapshot = console.snapshot().await?;
    let matching = matching(&snapshot.letters, filter);
    let mut left = ledger::load(console.topology.prefix()).letters;
    let exported = matching
        .iter()
        .filter(|letter| ledger::take(&mut left, &ledger::fingerprint(letter)))
        .count();
    Ok(Json(json!({
        "matched": matching.len(),
        "exported": exported,
        "filter": filter.describe(),
        "missed": snapshot.missed,
    })))
}

async fn count_matches(
    console: &SharedConsole,
    filter: &Filter,
    limit: u64,
    mut extra: Value,
) -> ApiResult {
    let snapshot = console.snapshot().await?;
    let matched = (matching(&snapshot.letters, filter).len() as u64).min(limit);
    extra["matched"] = json!(matched);
    extra["filter"] = json!(filter.describe());
    extra["missed"] = json!(snapshot.missed);
    Ok(Json(extra))
}

fn bad_request(message: &str) -> ConsoleError {
    ConsoleError::new(StatusCode::BAD_REQUEST, message)
}
