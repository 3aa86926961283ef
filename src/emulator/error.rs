//! The one error shape of every emulator answer, `{"error","error_description"}` JSON, and the
//! extractors and middleware that keep axum's own rejections in that shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Query, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Largest error body of axum's own rejections we read back to rewrap (they are one line).
const MAX_REWRAP_BYTES: usize = 16 * 1024;

/// An error answer: status, stable snake_case code, human description, optional extra headers.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, description)
    }

    pub fn not_found(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, description)
    }

    /// Adds a response header (`Retry-After`, `WWW-Authenticate`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code,
            "error_description": self.description,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

/// A JSON request body. Unlike `axum::Json`, every failure (wrong content type, too large,
/// malformed, wrong types) is an `ApiError`, and wrong types are 400 rather than 422.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !has_content_type(req.headers(), is_json_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiError::bad_request("invalid_request", format!("invalid JSON body: {e}"))
        })
    }
}

/// Maps a body-reading failure: over the size limit is 413, anything else 400.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "request body exceeds the size limit",
        )
    } else {
        ApiError::bad_request("invalid_request", rejection.body_text())
    }
}

/// Parses the query string into `T`, failures as 400 `invalid_request`.
pub fn parse_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
}

/// Whether the request's Content-Type's media type satisfies `accept`.
pub fn has_content_type(headers: &HeaderMap, accept: fn(&str) -> bool) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|media| accept(media.trim()))
        .unwrap_or(false)
}

/// `application/json` or any `…+json` type.
pub fn is_json_type(media: &str) -> bool {
    let media = media.to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Answer of unknown paths.
pub async fn route_not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

/// Answer of known paths with a method they do not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not serve that method",
    )
}

/// Safety net: rewraps any error response that is not JSON (axum's own path and other
/// rejections are plain text) into the `{"error","error_description"}` shape, same status.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let failed = status.is_client_error() || status.is_server_error();
    if !failed || has_content_type(response.headers(), is_json_type) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REWRAP_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let description = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let rewrapped = ApiError::new(status, code_for(status), description).into_response();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.extend(rewrapped.headers().clone());
    Response::from_parts(parts, rewrapped.into_body())
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "server_error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_include_the_plus_json_suffix() {
        assert!(is_json_type("application/json"));
        assert!(is_json_type("Application/JSON"));
        assert!(is_json_type("application/cloudevents+json"));
        assert!(!is_json_type("text/plain"));
    }

    #[tokio::test]
    async fn a_plain_text_error_from_axum_is_rewrapped_as_json_with_its_status() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/", get(|| async { (StatusCode::BAD_REQUEST, "bad path") }))
            .layer(axum::middleware::from_fn(json_errors));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let response = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], "bad path");
        server.abort();
    }

    #[tokio::test]
    async fn an_api_error_renders_error_and_description() {
        let response = ApiError::bad_request("unknown_field", "no field x").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"], "unknown_field");
        assert_eq!(body["error_description"], "no field x");
    }
}
