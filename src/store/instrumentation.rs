//! Metrics of the data-store client through the `metrics` facade: requests by route and status,
//! request durations, limiter wait. Labels are fixed route names, never ids or URLs.
//!
//! - `cxrel_store_requests_total{route,status}`: counter; status is the HTTP status, or `timeout` /
//!   `connection` when there was no answer.
//! - `cxrel_store_request_duration_seconds{route}`: histogram of one HTTP exchange.
//! - `cxrel_store_limiter_wait_seconds`: histogram of the time a request waited for the rate budget.
//! - `cxrel_store_rate_limit_rps` (gauge), `cxrel_store_throttled_total` and
//!   `cxrel_store_closed_probes_total` (counters), set by the limiter.

use std::time::Duration;

use super::error::StoreError;

/// The calls of the client, as metric and log labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Schema,
    GetRecord,
    ListRecords,
    PatchRecord,
    DeleteRecord,
    Token,
    Discovery,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schema => "schema",
            Self::GetRecord => "get_record",
            Self::ListRecords => "list_records",
            Self::PatchRecord => "patch_record",
            Self::DeleteRecord => "delete_record",
            Self::Token => "token",
            Self::Discovery => "discovery",
        }
    }
}

/// One HTTP exchange of `route` that ended with `status` after `elapsed`.
pub fn record(route: Route, status: &'static str, elapsed: Duration) {
    metrics::counter!("cxrel_store_requests_total", "route" => route.as_str(), "status" => status)
        .increment(1);
    metrics::histogram!("cxrel_store_request_duration_seconds", "route" => route.as_str())
        .record(elapsed.as_secs_f64());
}

/// Time spent waiting for the rate budget before one request.
pub fn limiter_wait(waited: Duration) {
    metrics::histogram!("cxrel_store_limiter_wait_seconds").record(waited.as_secs_f64());
}

/// The status label of an answer (static strings for the common ones, so no allocation).
pub fn status_label(status: u16) -> &'static str {
    const EXACT: [(u16, &str); 15] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (409, "409"),
        (412, "412"),
        (413, "413"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    if let Some((_, label)) = EXACT.iter().find(|(s, _)| *s == status) {
        return label;
    }
    match status / 100 {
        2 => "2xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// The status label of a request that got no answer.
pub fn transport_status(error: &StoreError) -> &'static str {
    match error {
        StoreError::Timeout { .. } => "timeout",
        StoreError::ResponseTooLarge { .. } => "too_large",
        _ => "connection",
    }
}
