//! Reading an answer's body within bounds: at most `[cxone].max_response_bytes`, and within
//! `[cxone].request_timeout` however slowly the bytes trickle in. A store (or a proxy in front of
//! it) that sends an endless or enormous body costs one bounded buffer, not the worker's memory.
//! Error answers are read only for an excerpt and never fail on their body: a 502 with a huge
//! HTML page stays a (transient) 502.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::error::StoreError;
use super::instrumentation::Route;

/// Limits of one body read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Reads the whole body of `response`, or fails with `response_too_large` (over the cap, checked
/// against `Content-Length` first and then as bytes arrive), `timeout` or `connection`.
pub(crate) async fn read(
    response: reqwest::Response,
    route: Route,
    limits: BodyLimits,
) -> Result<Bytes, StoreError> {
    let too_large = |size: Option<u64>| StoreError::ResponseTooLarge {
        route: route.as_str(),
        size,
        limit: limits.max_bytes,
    };
    if let Some(length) = response.content_length()
        && length > limits.max_bytes as u64
    {
        return Err(too_large(Some(length)));
    }
    match tokio::time::timeout(limits.timeout, collect(response, limits.max_bytes)).await {
        Err(_elapsed) => Err(StoreError::Timeout { attempts: 1 }),
        Ok(Err(Collect::TooLarge)) => Err(too_large(None)),
        Ok(Err(Collect::Transport(e))) => Err(StoreError::from_transport(&e)),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// How much of an error answer is kept: enough for `{"error","error_description"}` or an excerpt.
const EXCERPT_BYTES: usize = 64 * 1024;

/// The beginning of a non-2xx answer's body: at most [`EXCERPT_BYTES`] (or the cap, if smaller),
/// what arrived before the timeout or a broken connection, possibly nothing.
pub(crate) async fn read_excerpt(response: reqwest::Response, limits: BodyLimits) -> Bytes {
    let cap = limits.max_bytes.min(EXCERPT_BYTES);
    let mut body = BytesMut::new();
    let read = async {
        let mut response = response;
        while body.len() < cap {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(limits.timeout, read).await;
    body.truncate(cap);
    body.freeze()
}

enum Collect {
    TooLarge,
    Transport(reqwest::Error),
}

async fn collect(mut response: reqwest::Response, max_bytes: usize) -> Result<Bytes, Collect> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(Collect::Transport)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(Collect::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
