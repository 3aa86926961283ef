//! The request-body size limit: over-limit bodies get 413 JSON only after the rest of the body is
//! read and dropped (bounded), so the client reads the answer instead of a reset connection.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;

/// At most this much of an over-limit body is drained before giving up on the connection.
const MAX_DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// And for at most this long, so a slow sender cannot hold a task forever.
const MAX_DRAIN_TIME: Duration = Duration::from_secs(5);

/// Middleware: buffers the body up to `limit` bytes and passes it on; answers 413 beyond.
pub async fn limit_body(State(limit): State<usize>, req: Request, next: Next) -> Response {
    // A declared length within the limit is enforced by hyper itself: pass through, no copy.
    match content_length(&req) {
        Some(n) if n <= limit => return next.run(req).await,
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return ApiError::bad_request("invalid_request", "the request body could not be read")
                .into_response();
        };
        if buffer.len() + chunk.len() > limit {
            let _ = tokio::time::timeout(MAX_DRAIN_TIME, drain(stream, buffer.len() + chunk.len()))
                .await;
            return too_large(limit);
        }
        buffer.extend_from_slice(&chunk);
    }
    next.run(Request::from_parts(parts, Body::from(buffer)))
        .await
}

fn content_length(req: &Request) -> Option<usize> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn drain(mut stream: axum::body::BodyDataStream, mut seen: usize) {
    while seen < MAX_DRAIN_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => seen += chunk.len(),
            _ => return,
        }
    }
}

fn too_large(limit: usize) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("request body exceeds {limit} bytes"),
    )
    .into_response()
}
