//! `StoreError`: every way a data-store call can fail, with its class, HTTP status and stable code.
//!
//! The client retries only what [`StoreError::is_retryable_in_client`] says (408, 425, 429, 5xx,
//! timeouts, connection errors). 409 `record_locked` is Transient for the worker (SPEC §5: it goes through the
//! hold queues) but is never retried inside the client; 412 `version_mismatch` likewise, because the
//! caller has to revalidate against the new version first.

use std::time::Duration;

use crate::error::ErrorClass;

/// What the data store (or its auth server) answered, as far as the error body tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// The store's own error code (`error` of `{"error","error_description"}`), if it sent one.
    pub error: Option<String>,
    /// `error_description`, if any.
    pub description: Option<String>,
}

impl ErrorBody {
    /// Parses `{"error","error_description"}`; anything else keeps a short excerpt as description.
    pub fn parse(bytes: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Wire {
            error: Option<String>,
            error_description: Option<String>,
            message: Option<String>,
        }
        match serde_json::from_slice::<Wire>(bytes) {
            Ok(w) => Self {
                error: w.error,
                description: w.error_description.or(w.message),
            },
            Err(_) if bytes.is_empty() => Self::default(),
            Err(_) => Self {
                error: None,
                description: Some(excerpt(bytes)),
            },
        }
    }

    fn text(&self) -> String {
        match (&self.error, &self.description) {
            (Some(e), Some(d)) => format!("{e}: {d}"),
            (Some(e), None) => e.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "no details".to_owned(),
        }
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// A failed data-store or auth call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// 401 on a data-store call even after one token refresh, or credentials refused by the token
    /// endpoint. Permanent: configuration must change.
    #[error("unauthorized (HTTP {status}): {}", body.text())]
    Unauthorized { status: u16, body: ErrorBody },
    /// 403: the token lacks a scope such as `datastore:write`.
    #[error("forbidden (HTTP 403): {}", body.text())]
    Forbidden { body: ErrorBody },
    /// 404: no such data store or record.
    #[error("not found (HTTP 404): {}", body.text())]
    NotFound { body: ErrorBody },
    /// 409: the record is locked by another writer. Not retried in the client; Transient for the worker.
    #[error("record locked (HTTP 409): {}", body.text())]
    RecordLocked { body: ErrorBody },
    /// 412: `If-Match` named an old version. Not retried in the client; the caller revalidates.
    #[error("version mismatch (HTTP 412): {}", body.text())]
    VersionMismatch { body: ErrorBody },
    /// 400 naming an unknown field (the cached schema of the data store is dropped).
    #[error("unknown field (HTTP 400): {}", body.text())]
    UnknownField { body: ErrorBody },
    /// Any other 4xx the store sends (bad shape, body too large…).
    #[error("bad request (HTTP {status}): {}", body.text())]
    BadRequest { status: u16, body: ErrorBody },
    /// 429 still coming after the retry budget.
    #[error("rate limited (HTTP 429) after {attempts} attempt(s)")]
    RateLimited {
        attempts: u32,
        retry_after: Option<Duration>,
    },
    /// 408 Request Timeout or 425 Too Early: the store did not process the request; sending it
    /// again later is safe.
    #[error("{} (HTTP {status}) after {attempts} attempt(s): {}", retry_later_text(*status), body.text())]
    RetryLater {
        status: u16,
        attempts: u32,
        body: ErrorBody,
    },
    /// 5xx (after the retry budget when retried).
    #[error("server error (HTTP {status}) after {attempts} attempt(s): {}", body.text())]
    Server {
        status: u16,
        attempts: u32,
        body: ErrorBody,
    },
    /// No answer within `[cxone].request_timeout`.
    #[error("request timed out after {attempts} attempt(s)")]
    Timeout { attempts: u32 },
    /// Could not connect, or the connection broke mid-request.
    #[error("connection error after {attempts} attempt(s): {message}")]
    Connection { attempts: u32, message: String },
    /// A 2xx answer whose body is not what SPEC §3/§4 promise.
    #[error("invalid response from {route}: {message}")]
    InvalidResponse {
        route: &'static str,
        message: String,
    },
    /// A PATCH answered 2xx, but neither its answer nor a read of the record holds the values
    /// sent, and the record's version did not move: the store accepted the request and wrote
    /// nothing. Transient: retried through the hold queues, then dead-lettered; never "applied".
    #[error(
        "the store answered the PATCH of {record} with HTTP {status} but did not store it (version still {version})"
    )]
    NotStored {
        record: String,
        status: u16,
        version: u64,
    },
    /// A 2xx answer that is not JSON at all, typically a proxy's or load balancer's HTML page in
    /// front of the store. Transient: the store itself may answer on the next try. Not retried in
    /// the client, since for a PATCH the write may have happened (the caller reads it back).
    #[error("unreadable answer from {route} (HTTP {status}, not JSON): {excerpt}")]
    UnreadableResponse {
        route: &'static str,
        status: u16,
        excerpt: String,
    },
    /// A body above `[cxone].max_response_bytes`: raise that setting, or lower `[cxone].page_size`
    /// when record pages are what grew.
    #[error("answer from {route} is larger than [cxone].max_response_bytes = {limit}{}: raise the setting or lower [cxone].page_size", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    ResponseTooLarge {
        route: &'static str,
        size: Option<u64>,
        limit: usize,
    },
    /// The data store's schema cannot be used (see `schema::SchemaError`).
    #[error("invalid schema: {0}")]
    InvalidSchema(#[from] crate::schema::SchemaError),
    /// Settings that cannot work (bad URL, missing credentials).
    #[error("invalid data-store client configuration: {0}")]
    Config(String),
    /// The request was never sent: getting an access token (or discovering the API) failed first.
    /// Classed, coded and retried as the token call's own error; a write it stopped did not land.
    #[error("getting an access token: {0}")]
    AccessToken(Box<StoreError>),
    /// Never sent: the worker lost the jobs queue while the request waited for its rate slot.
    #[error(
        "not sent: this worker lost the jobs queue while the request waited for its turn (the job is redelivered)"
    )]
    NotStarted,
}

impl StoreError {
    /// Permanent errors dead-letter at once; Transient ones retry through the hold queues.
    pub fn class(&self) -> ErrorClass {
        match self {
            // The token endpoint refusing the credentials says nothing about the job: the
            // worker cannot log in (a rotated key, an identity-provider glitch). Retried through
            // the hold queues, the backlog waits the whole retry schedule for the fix instead of
            // being dead-lettered within a second (a black-box run: 50 jobs in 0.3 s).
            Self::AccessToken(inner) if inner.is_refused_login() => ErrorClass::Transient,
            Self::AccessToken(inner) => inner.class(),
            Self::RecordLocked { .. }
            | Self::VersionMismatch { .. }
            | Self::RateLimited { .. }
            | Self::RetryLater { .. }
            | Self::Server { .. }
            | Self::Timeout { .. }
            | Self::Connection { .. }
            | Self::NotStored { .. }
            | Self::NotStarted
            | Self::UnreadableResponse { .. } => ErrorClass::Transient,
            Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::NotFound { .. }
            | Self::UnknownField { .. }
            | Self::BadRequest { .. }
            | Self::InvalidResponse { .. }
            | Self::ResponseTooLarge { .. }
            | Self::InvalidSchema(_)
            | Self::Config(_) => ErrorClass::Permanent,
        }
    }

    /// The credentials or scopes were refused (by the token endpoint, when wrapped in
    /// [`AccessToken`](Self::AccessToken)).
    fn is_refused_login(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Forbidden { .. })
    }

    /// Stable snake_case code, used in events and dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AccessToken(inner) => inner.code(),
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::NotFound { .. } => "not_found",
            Self::RecordLocked { .. } => "record_locked",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::UnknownField { .. } => "unknown_field",
            Self::BadRequest { .. } => "bad_request",
            Self::RateLimited { .. } => "rate_limited",
            Self::RetryLater { status, .. } if *status == 425 => "too_early",
            Self::RetryLater { .. } => "request_timeout",
            Self::Server { .. } => "server_error",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::UnreadableResponse { .. } => "unreadable_response",
            Self::NotStored { .. } => "not_stored",
            Self::ResponseTooLarge { .. } => "response_too_large",
            Self::InvalidSchema(_) => "invalid_schema",
            Self::Config(_) => "config",
            Self::NotStarted => "lease_lost",
        }
    }

    /// The HTTP status the store answered, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::AccessToken(inner) => inner.status(),
            Self::Unauthorized { status, .. }
            | Self::BadRequest { status, .. }
            | Self::RetryLater { status, .. }
            | Self::UnreadableResponse { status, .. }
            | Self::NotStored { status, .. }
            | Self::Server { status, .. } => Some(*status),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::RecordLocked { .. } => Some(409),
            Self::VersionMismatch { .. } => Some(412),
            Self::UnknownField { .. } => Some(400),
            Self::RateLimited { .. } => Some(429),
            Self::Timeout { .. }
            | Self::Connection { .. }
            | Self::InvalidResponse { .. }
            | Self::ResponseTooLarge { .. }
            | Self::InvalidSchema(_)
            | Self::NotStarted
            | Self::Config(_) => None,
        }
    }

    /// The store's own error code from the response body (`error`), when it sent one.
    pub fn store_code(&self) -> Option<&str> {
        self.body().and_then(|b| b.error.as_deref())
    }

    /// The store's `error_description`, when it sent one.
    pub fn store_description(&self) -> Option<&str> {
        self.body().and_then(|b| b.description.as_deref())
    }

    fn body(&self) -> Option<&ErrorBody> {
        match self {
            Self::Unauthorized { body, .. }
            | Self::Forbidden { body }
            | Self::NotFound { body }
            | Self::RecordLocked { body }
            | Self::VersionMismatch { body }
            | Self::UnknownField { body }
            | Self::BadRequest { body, .. }
            | Self::RetryLater { body, .. }
            | Self::Server { body, .. } => Some(body),
            Self::AccessToken(inner) => inner.body(),
            _ => None,
        }
    }

    /// Whether the client itself retries this (408, 425, 429, 5xx, timeout, connection); 409/412
    /// are not.
    pub fn is_retryable_in_client(&self) -> bool {
        if let Self::AccessToken(inner) = self {
            return inner.is_retryable_in_client();
        }
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::RetryLater { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Connection { .. }
        )
    }

    /// Whether the client itself retries this for a write: only answers that say the request was
    /// not processed (429, 408, 425). A 5xx, a timeout or a broken connection leave the write's
    /// outcome unknown; sent again with the same `If-Match`, a write that did land draws a 412 of
    /// its own making, so the apply stage reads the parent back instead.
    pub fn is_retryable_before_write(&self) -> bool {
        if let Self::AccessToken(inner) = self {
            // The write was not sent: as safe to try again as any call.
            return inner.is_retryable_in_client();
        }
        matches!(self, Self::RateLimited { .. } | Self::RetryLater { .. })
    }

    /// `self` as the failure of the token (or discovery) step before a request.
    pub fn before_sending(self) -> Self {
        match self {
            Self::AccessToken(_) | Self::NotStarted | Self::Config(_) => self,
            other => Self::AccessToken(Box::new(other)),
        }
    }

    /// Maps a non-success answer of a data-store call to its variant (`attempts` = 1; the retry
    /// loop fills in the real count).
    pub fn from_status(status: u16, body: ErrorBody, retry_after: Option<Duration>) -> Self {
        match status {
            401 => Self::Unauthorized { status, body },
            403 => Self::Forbidden { body },
            404 => Self::NotFound { body },
            409 => Self::RecordLocked { body },
            412 => Self::VersionMismatch { body },
            429 => Self::RateLimited {
                attempts: 1,
                retry_after,
            },
            408 | 425 => Self::RetryLater {
                status,
                attempts: 1,
                body,
            },
            400 if names_unknown_field(&body) => Self::UnknownField { body },
            500..=599 => Self::Server {
                status,
                attempts: 1,
                body,
            },
            _ => Self::BadRequest { status, body },
        }
    }

    /// Maps a transport error (no HTTP answer).
    pub fn from_transport(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout { attempts: 1 }
        } else {
            // Display of a reqwest error holds the URL (no credentials: those travel in headers).
            Self::Connection {
                attempts: 1,
                message: crate::error::one_line(error),
            }
        }
    }

    /// The same error, stamped with the number of attempts made.
    pub(crate) fn with_attempts(mut self, n: u32) -> Self {
        match &mut self {
            Self::RateLimited { attempts, .. }
            | Self::RetryLater { attempts, .. }
            | Self::Server { attempts, .. }
            | Self::Timeout { attempts }
            | Self::Connection { attempts, .. } => *attempts = n,
            _ => {}
        }
        self
    }

    /// Retry-After of a 429, when the server sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The 2xx body `bytes` decoded as JSON `T`. Not JSON at all is `unreadable_response`
/// (transient: a proxy's page); JSON of the wrong shape is `invalid_response` (permanent).
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    route: &'static str,
    status: u16,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
            StoreError::InvalidResponse {
                route,
                message: e.to_string(),
            }
        } else {
            StoreError::UnreadableResponse {
                route,
                status,
                excerpt: excerpt(bytes),
            }
        }
    })
}

fn retry_later_text(status: u16) -> &'static str {
    if status == 425 {
        "too early"
    } else {
        "request timeout"
    }
}

/// Whether a 400 body says a field is unknown: error code `unknown_field`, or a description that
/// says so (stores word this differently).
fn names_unknown_field(body: &ErrorBody) -> bool {
    let code = body.error.as_deref().unwrap_or_default();
    if code.eq_ignore_ascii_case("unknown_field") {
        return true;
    }
    let text = body.description.as_deref().unwrap_or_default();
    let text = text.to_ascii_lowercase();
    text.contains("unknown field") || text.contains("unknown_field")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_failure_keeps_its_code_and_class_and_says_the_request_was_never_sent() {
        let server = StoreError::Server {
            status: 503,
            attempts: 3,
            body: ErrorBody::default(),
        };
        let wrapped = server.clone().before_sending();
        assert_eq!(wrapped.code(), "server_error");
        assert_eq!(wrapped.class(), ErrorClass::Transient);
        assert_eq!(wrapped.status(), Some(503));
        assert!(wrapped.to_string().starts_with("getting an access token: "));
        // A PATCH never sent may be sent again, unlike one whose 5xx leaves its outcome unknown.
        assert!(!server.is_retryable_before_write());
        assert!(wrapped.is_retryable_before_write());
        let refused = StoreError::Unauthorized {
            status: 401,
            body: ErrorBody::default(),
        }
        .before_sending();
        assert_eq!(refused.code(), "unauthorized");
        // The worker could not log in: retried, where the store's own second 401 is not.
        assert_eq!(refused.class(), ErrorClass::Transient);
        let second_401 = StoreError::Unauthorized {
            status: 401,
            body: ErrorBody::default(),
        };
        assert_eq!(second_401.class(), ErrorClass::Permanent);
        assert!(matches!(
            StoreError::NotStarted.before_sending(),
            StoreError::NotStarted
        ));
    }

    fn body(error: &str, description: &str) -> ErrorBody {
        ErrorBody {
            error: Some(error.to_owned()),
            description: Some(description.to_owned()),
        }
    }

    #[test]
    fn statuses_map_to_codes_and_classes() {
        let cases = [
            (401, "unauthorized", ErrorClass::Permanent),
            (403, "forbidden", ErrorClass::Permanent),
            (404, "not_found", ErrorClass::Permanent),
            (409, "record_locked", ErrorClass::Transient),
            (412, "version_mismatch", ErrorClass::Transient),
            (429, "rate_limited", ErrorClass::Transient),
            (400, "bad_request", ErrorClass::Permanent),
            (408, "request_timeout", ErrorClass::Transient),
            (425, "too_early", ErrorClass::Transient),
            (413, "bad_request", ErrorClass::Permanent),
            (500, "server_error", ErrorClass::Transient),
            (503, "server_error", ErrorClass::Transient),
        ];
        for (status, code, class) in cases {
            let e = StoreError::from_status(status, ErrorBody::default(), None);
            assert_eq!((e.code(), e.class()), (code, class), "HTTP {status}");
            assert_eq!(e.status(), Some(status));
        }
    }

    #[test]
    fn only_throttling_server_errors_and_transport_failures_are_retried_in_client() {
        let retried =
            |s| StoreError::from_status(s, ErrorBody::default(), None).is_retryable_in_client();
        assert!(retried(429) && retried(500) && retried(502));
        assert!(retried(408) && retried(425));
        assert!(!retried(409) && !retried(412) && !retried(401) && !retried(400));
        assert!(StoreError::Timeout { attempts: 1 }.is_retryable_in_client());
    }

    #[test]
    fn a_400_naming_an_unknown_field_is_its_own_variant() {
        let e = StoreError::from_status(400, body("unknown_field", "no field x"), None);
        assert_eq!(e.code(), "unknown_field");
        let e = StoreError::from_status(400, body("invalid_request", "Unknown field \"x\""), None);
        assert_eq!(e.code(), "unknown_field");
        let e = StoreError::from_status(400, body("invalid_request", "ids must be an array"), None);
        assert_eq!(e.code(), "bad_request");
        assert_eq!(e.store_code(), Some("invalid_request"));
    }

    #[test]
    fn error_bodies_parse_leniently() {
        let b = ErrorBody::parse(br#"{"error":"locked","error_description":"busy"}"#);
        assert_eq!(b, body("locked", "busy"));
        let b = ErrorBody::parse(b"<html>oops</html>");
        assert_eq!(b.description.as_deref(), Some("<html>oops</html>"));
        assert_eq!(ErrorBody::parse(b""), ErrorBody::default());
    }

    #[test]
    fn a_2xx_that_is_not_json_is_transient_and_wrong_json_is_permanent() {
        let html = decode_json::<serde_json::Value>("get_record", 200, b"<html>502</html>");
        let e = html.unwrap_err();
        assert_eq!(
            (e.code(), e.class()),
            ("unreadable_response", ErrorClass::Transient)
        );
        assert!(e.to_string().contains("<html>502</html>"), "{e}");
        let empty = decode_json::<serde_json::Value>("get_record", 200, b"").unwrap_err();
        assert_eq!(empty.code(), "unreadable_response");
        #[derive(Debug, serde::Deserialize)]
        struct Shape {
            #[allow(dead_code)]
            id: String,
        }
        let wrong = decode_json::<Shape>("get_record", 200, br#"{"id":5}"#).unwrap_err();
        assert_eq!(
            (wrong.code(), wrong.class()),
            ("invalid_response", ErrorClass::Permanent)
        );
    }

    #[test]
    fn an_oversized_answer_says_which_setting_to_change() {
        let e = StoreError::ResponseTooLarge {
            route: "list_records",
            size: Some(9_000_000),
            limit: 8_388_608,
        };
        assert_eq!(
            (e.code(), e.class()),
            ("response_too_large", ErrorClass::Permanent)
        );
        let text = e.to_string();
        assert!(
            text.contains("max_response_bytes") && text.contains("9000000"),
            "{text}"
        );
    }

    #[test]
    fn attempts_are_stamped_on_retryable_errors() {
        let e = StoreError::from_status(503, ErrorBody::default(), None).with_attempts(5);
        assert!(e.to_string().contains("after 5 attempt(s)"), "{e}");
    }
}
