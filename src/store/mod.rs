//! The data-store client (SPEC §3, §4): the worker's only path to the record API.
//!
//! [`StoreClient`] is cheap to clone and shared by every task. Each call:
//! 1. gets a bearer token from the single-flight cache ([`auth`]);
//! 2. waits for the tenant-wide rate budget ([`limiter`]: GCRA pacing at a CUBIC-adapted rate);
//! 3. sends with `Accept: application/json` and a fresh `X-Correlation-Id` (UUIDv7, one per call,
//!    kept across its retries), records metrics ([`instrumentation`]);
//! 4. on 401 refreshes the token once and retries once (a second 401 is `unauthorized`);
//! 5. retries transient failures within `[retry]` ([`retry`]); maps everything else to
//!    [`StoreError`] with its class, status and codes ([`error`]).
//!
//! Tokens and secrets are never logged: they live in [`Secret`](crate::secret::Secret) and go out
//! only in headers reqwest marks sensitive.

pub mod auth;
mod body;
pub mod cubic;
pub mod error;
pub mod instrumentation;
pub mod limiter;
pub mod pacer;
#[cfg(all(test, feature = "tools"))]
mod rate_sim;
pub mod redis_budget;
pub mod retry;
pub(crate) mod shared_failure;
pub mod trailing;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use reqwest::header::{ACCEPT, HeaderMap, IF_MATCH, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};

pub use cubic::CubicParams;
pub use error::{ErrorBody, StoreError};
pub use limiter::{LocalBudget, RateBudget};
pub use redis_budget::{RedisBudget, RedisBudgetConfig};
pub use retry::RetryPolicy;
pub use wire::{Record, RecordPage, RelationshipValue};

use self::auth::TokenSource;
use self::body::BodyLimits;
use self::instrumentation::Route;
use crate::schema::{Schema, SchemaWire};
use crate::settings::{CxoneSettings, RateLimitBackend, RetrySettings, Settings};

/// Header carrying the per-call correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The client. Clone freely: clones share the token cache, rate budget and schema cache.
#[derive(Clone)]
pub struct StoreClient {
    inner: Arc<Inner>,
    /// Set by [`with_lease`](Self::with_lease): once cancelled, a request still waiting for its
    /// turn in the rate budget is not sent ([`StoreError::NotStarted`]).
    lease: Option<tokio_util::sync::CancellationToken>,
}

struct Inner {
    http: reqwest::Client,
    tokens: TokenSource,
    budget: Arc<dyn RateBudget>,
    retry: RetryPolicy,
    body_limits: BodyLimits,
    records_path: String,
    page_size: u32,
    schema_ttl: Duration,
    default_max_depth: u32,
    schemas: Mutex<HashMap<String, CachedSchema>>,
    schema_fetch: tokio::sync::Mutex<()>,
    /// The last failed schema fetch per data store, for the tasks that waited on it.
    schema_failed: Mutex<shared_failure::FailureMap<StoreError>>,
    /// Set when the store answered a freshly fetched token with 401 again, cleared by any 2xx:
    /// the token endpoint issues tokens the store does not accept (readiness says so).
    store_refuses_token: Mutex<Option<String>>,
    /// `{base}{records_path}` parsed for the last base seen: parsing it (IDNA included) on every
    /// request was a visible share of the worker's CPU per PATCH.
    records_root: Mutex<Option<(String, url::Url)>>,
}

#[derive(Clone)]
struct CachedSchema {
    fetched: Instant,
    schema: Arc<Schema>,
}

/// One answer of the store, body read.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl StoreClient {
    /// The client the worker uses: `[cxone]`, `[cxone.auth]`, `[rate_limit]`, `[retry]`,
    /// `[validation].default_max_depth`.
    pub fn from_settings(settings: &Settings) -> Result<Self, StoreError> {
        let budget = budget_from_settings(settings)?;
        Self::new(
            &settings.cxone,
            &settings.retry,
            budget,
            settings.validation.default_max_depth,
        )
    }

    /// A client with an explicit rate budget (shared by several clients, or the Redis one).
    pub fn new(
        cxone: &CxoneSettings,
        retry: &RetrySettings,
        budget: Arc<dyn RateBudget>,
        default_max_depth: u32,
    ) -> Result<Self, StoreError> {
        if !cxone.api_base.is_empty() {
            url::Url::parse(&cxone.api_base)
                .map_err(|e| StoreError::Config(format!("cxone.api_base: {e}")))?;
        }
        if cxone.api_base.is_empty() && cxone.auth.issuer.is_empty() {
            return Err(StoreError::Config(
                "cxone.api_base is empty and there is no cxone.auth.issuer to discover it".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(cxone.request_timeout)
            .connect_timeout(cxone.request_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("cxrel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Config(format!("HTTP client: {e}")))?;
        let body_limits = BodyLimits {
            max_bytes: cxone.max_response_bytes,
            timeout: cxone.request_timeout,
        };
        let tokens = TokenSource::new(
            http.clone(),
            cxone.auth.clone(),
            &cxone.api_base,
            body_limits,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                tokens,
                budget,
                retry: RetryPolicy::from(retry),
                body_limits,
                records_path: format!("/{}", cxone.records_path.trim_matches('/')),
                page_size: cxone.page_size.max(1),
                schema_ttl: cxone.schema_ttl,
                default_max_depth,
                schemas: Mutex::new(HashMap::new()),
                schema_fetch: tokio::sync::Mutex::new(()),
                schema_failed: Mutex::new(shared_failure::FailureMap::default()),
                store_refuses_token: Mutex::new(None),
                records_root: Mutex::new(None),
            }),
            lease: None,
        })
    }

    /// This client for the writes of one job: when `lease` is cancelled (the worker lost the
    /// jobs queue), requests still waiting for a rate slot give up instead of spending it on a
    /// job another replica now owns, and the consume session ends without waiting for them.
    /// A request already sent is not interrupted.
    pub fn with_lease(&self, lease: tokio_util::sync::CancellationToken) -> Self {
        Self {
            inner: self.inner.clone(),
            lease: Some(lease),
        }
    }

    /// True once this client's lease (see [`with_lease`](Self::with_lease)) is cancelled.
    pub fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.is_cancelled())
    }

    /// Why the store refuses the tokens this client gets (it answered a fresh one with 401 and
    /// has answered nothing with success since), for the worker's readiness.
    pub fn store_refuses_token(&self) -> Option<String> {
        self.inner
            .store_refuses_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_store_refusal(&self, refusal: Option<String>) {
        let mut current = self
            .inner
            .store_refuses_token
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if current.is_some() || refusal.is_some() {
            *current = refusal;
        }
    }

    /// Gets a valid token (cached or fresh): the readiness check of the worker.
    pub async fn check_auth(&self) -> Result<(), StoreError> {
        self.inner.tokens.token().await.map(|_| ())
    }

    /// The rate budget every request of this client goes through.
    pub fn budget(&self) -> &Arc<dyn RateBudget> {
        &self.inner.budget
    }

    /// The API base in use (configured, or discovered through the tenant id).
    pub async fn api_base(&self) -> Result<String, StoreError> {
        self.inner.tokens.api_base().await
    }

    /// The tenant id of the id_token (mode "cxone"; fetches a token when none is cached).
    pub async fn tenant_id(&self) -> Result<String, StoreError> {
        self.inner.tokens.tenant_id().await
    }

    /// The schema of `datastore`, cached for `[cxone].schema_ttl`.
    pub async fn schema(&self, datastore: &str) -> Result<Arc<Schema>, StoreError> {
        if let Some(s) = self.cached_schema(datastore) {
            return Ok(s);
        }
        let asked = Instant::now();
        let _single_flight = self.inner.schema_fetch.lock().await;
        if let Some(s) = self.cached_schema(datastore) {
            return Ok(s);
        }
        // The fetch this task waited for failed: its answer, not another fetch. Else, during an
        // outage, waiting jobs would each retry in turn, one after another.
        let waited = shared_failure::waited_on(
            self.schema_failures().get(datastore),
            asked,
            shared_failure::no_hold,
        );
        if let Some(error) = waited {
            return Err(error);
        }
        let fetched = self.fetch_schema(datastore).await;
        if matches!(fetched, Err(StoreError::NotFound { .. })) {
            self.invalidate_schema(datastore); // the data store is gone
        }
        // A fetch given up because its job's worker lost the queue says nothing to others.
        self.schema_failures().record(datastore, &fetched, |e| {
            !matches!(e, StoreError::NotStarted)
        });
        fetched
    }

    fn schema_failures(&self) -> std::sync::MutexGuard<'_, shared_failure::FailureMap<StoreError>> {
        self.inner
            .schema_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch_schema(&self, datastore: &str) -> Result<Arc<Schema>, StoreError> {
        let answer = self
            .call(
                Route::Schema,
                Method::GET,
                &[datastore, "schema"],
                None,
                |r| r,
            )
            .await?;
        let wire: SchemaWire = decode(Route::Schema, &answer)?;
        let schema = Arc::new(Schema::from_wire(wire, self.inner.default_max_depth)?);
        let entry = CachedSchema {
            fetched: Instant::now(),
            schema: schema.clone(),
        };
        self.schemas().insert(datastore.to_owned(), entry);
        Ok(schema)
    }

    /// Forgets the cached schema of `datastore` (done automatically on a 400 unknown-field answer).
    pub fn invalidate_schema(&self, datastore: &str) {
        self.schemas().remove(datastore);
    }

    fn schemas(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedSchema>> {
        self.inner.schemas.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached_schema(&self, datastore: &str) -> Option<Arc<Schema>> {
        let cache = self.schemas();
        let entry = cache.get(datastore)?;
        (entry.fetched.elapsed() < self.inner.schema_ttl).then(|| entry.schema.clone())
    }

    /// `GET …/{ds}/records/{id}`.
    pub async fn get_record(&self, datastore: &str, id: &str) -> Result<Record, StoreError> {
        let answer = self
            .call(
                Route::GetRecord,
                Method::GET,
                &[datastore, "records", id],
                None,
                |r| r,
            )
            .await?;
        decode(Route::GetRecord, &answer)
    }

    /// One page of `GET …/{ds}/records` (`page_size` from `[cxone].page_size`).
    pub async fn list_page(
        &self,
        datastore: &str,
        page_token: Option<&str>,
    ) -> Result<RecordPage, StoreError> {
        let size = self.inner.page_size.to_string();
        let answer = self
            .call(
                Route::ListRecords,
                Method::GET,
                &[datastore, "records"],
                None,
                |r| {
                    let r = r.query(&[("page_size", size.as_str())]);
                    match page_token {
                        Some(t) => r.query(&[("page_token", t)]),
                        None => r,
                    }
                },
            )
            .await?;
        decode(Route::ListRecords, &answer)
    }

    /// Every page of the record list, read lazily one page after the other. After an error the
    /// stream ends (each page already had the full retry budget).
    pub fn list_pages(
        &self,
        datastore: &str,
    ) -> impl Stream<Item = Result<RecordPage, StoreError>> + Send + 'static {
        let client = self.clone();
        let datastore = datastore.to_owned();
        // State: the page tokens seen so far, and Some(next page token, None = first page) or
        // None = no more pages. A token seen before means the store's paging loops: an error
        // instead of an endless load.
        let start = (
            std::collections::HashSet::<String>::new(),
            Some(None::<String>),
        );
        futures::stream::try_unfold(start, move |(mut seen, state)| {
            let client = client.clone();
            let datastore = datastore.clone();
            async move {
                let Some(token) = state else {
                    return Ok(None);
                };
                let page = client.list_page(&datastore, token.as_deref()).await?;
                let next = page.next_page_token.clone().filter(|t| !t.is_empty());
                if let Some(t) = &next
                    && !seen.insert(t.clone())
                {
                    return Err(repeated_page_token(t));
                }
                Ok(Some((page, (seen, next.map(Some)))))
            }
        })
    }

    /// Every record of `datastore`, streamed page by page.
    pub fn list_records(
        &self,
        datastore: &str,
    ) -> impl Stream<Item = Result<Record, StoreError>> + Send + 'static {
        self.list_pages(datastore)
            .map_ok(|page| futures::stream::iter(page.records.into_iter().map(Ok)))
            .try_flatten()
    }

    /// `PATCH …/{ds}/records/{id}` with body `{"fields": fields}` and, when given,
    /// `If-Match: "{version}"`. Returns the record as stored, with its new version. A 412 is
    /// [`StoreError::VersionMismatch`]; a 400 unknown-field also drops the cached schema of
    /// `datastore`.
    pub async fn patch_record(
        &self,
        datastore: &str,
        id: &str,
        fields: &Map<String, Value>,
        if_match: Option<u64>,
    ) -> Result<Record, StoreError> {
        let body = serde_json::to_vec(&wire::PatchBody { fields })
            .map_err(|e| StoreError::Config(format!("PATCH body: {e}")))?;
        let body = bytes::Bytes::from(body);
        let if_match = if_match.map(|v| format!("\"{v}\""));
        let result = self
            .call(
                Route::PatchRecord,
                Method::PATCH,
                &[datastore, "records", id],
                Some(body),
                |r| match &if_match {
                    Some(v) => r.header(IF_MATCH, v.as_str()),
                    None => r,
                },
            )
            .await;
        match result {
            Ok(answer) => decode(Route::PatchRecord, &answer),
            Err(e @ StoreError::UnknownField { .. }) => {
                self.invalidate_schema(datastore);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// `DELETE …/{ds}/records/{id}` (children linked with `cascade_action: delete` go with it).
    pub async fn delete_record(&self, datastore: &str, id: &str) -> Result<(), StoreError> {
        self.call(
            Route::DeleteRecord,
            Method::DELETE,
            &[datastore, "records", id],
            None,
            |r| r,
        )
        .await
        .map(|_| ())
    }

    /// One logical call: retries, 401 refresh, budget, metrics. `segments` follow the records path;
    /// `extra` adds query or headers to each attempt's request.
    async fn call(
        &self,
        route: Route,
        method: Method,
        segments: &[&str],
        body: Option<bytes::Bytes>,
        extra: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Answer, StoreError> {
        let correlation_id = uuid::Uuid::now_v7().to_string();
        let make = |base: &str| -> Result<reqwest::RequestBuilder, StoreError> {
            let url = self.url(base, segments)?;
            let mut request = self.inner.http.request(method.clone(), url);
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            Ok(extra(request))
        };
        let retryable = if method == Method::PATCH {
            StoreError::is_retryable_before_write
        } else {
            StoreError::is_retryable_in_client
        };
        self.inner
            .retry
            .run_if(route, retryable, |attempt| {
                self.attempt(route, &correlation_id, attempt, &make)
            })
            .await
    }

    /// The `[retry]` limits, for callers that settle a write of unknown outcome themselves.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// One attempt, including the single 401 refresh-and-retry.
    async fn attempt(
        &self,
        route: Route,
        correlation_id: &str,
        attempt: u32,
        make: &impl Fn(&str) -> Result<reqwest::RequestBuilder, StoreError>,
    ) -> Result<Answer, StoreError> {
        let base = self
            .inner
            .tokens
            .api_base()
            .await
            .map_err(StoreError::before_sending)?;
        let (mut answer, generation) = self
            .send(route, correlation_id, attempt, make(&base)?)
            .await?;
        if answer.status == 401 {
            self.inner.tokens.invalidate(generation);
            tracing::debug!(
                route = route.as_str(),
                correlation_id,
                "401: token refreshed, retrying once"
            );
            (answer, _) = self
                .send(route, correlation_id, attempt, make(&base)?)
                .await?;
        }
        if (200..300).contains(&answer.status) {
            self.note_store_refusal(None);
            return Ok(answer);
        }
        if answer.status == 401 {
            let body = ErrorBody::parse(&answer.body);
            self.note_store_refusal(Some(format!(
                "{} answered 401 to a fresh token",
                route.as_str()
            )));
            return Err(StoreError::from_status(401, body, None));
        }
        let retry_after = parse_retry_after(&answer.headers);
        Err(StoreError::from_status(
            answer.status,
            ErrorBody::parse(&answer.body),
            retry_after,
        ))
    }

    /// One HTTP exchange through the rate budget, with the token current when the budget lets it
    /// go (a request may wait seconds for its turn, longer than a short-lived token lasts).
    /// Returns the answer and the generation of the token it carried.
    async fn send(
        &self,
        route: Route,
        correlation_id: &str,
        attempt: u32,
        request: reqwest::RequestBuilder,
    ) -> Result<(Answer, u64), StoreError> {
        let waiting = Instant::now();
        match &self.lease {
            Some(lease) => tokio::select! {
                biased;
                () = lease.cancelled() => return Err(StoreError::NotStarted),
                () = self.inner.budget.acquire() => {}
            },
            None => self.inner.budget.acquire().await,
        }
        instrumentation::limiter_wait(waiting.elapsed());
        let token = self
            .inner
            .tokens
            .token()
            .await
            .map_err(StoreError::before_sending)?;
        let request = request
            .bearer_auth(token.value.expose())
            .header(ACCEPT, "application/json")
            .header(CORRELATION_HEADER, correlation_id);
        let started = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(self.transport_failed(route, correlation_id, attempt, &e, started));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = if status.is_success() {
            match body::read(response, route, self.inner.body_limits).await {
                Ok(b) => b,
                Err(error) => {
                    return Err(self.body_failed(route, correlation_id, attempt, error, started));
                }
            }
        } else {
            body::read_excerpt(response, self.inner.body_limits).await
        };
        let elapsed = started.elapsed();
        instrumentation::record(
            route,
            instrumentation::status_label(status.as_u16()),
            elapsed,
        );
        let retry_after = parse_retry_after(&headers);
        // A 503 with Retry-After is a gateway's way of saying "too many" (RFC 9110 §15.6.4):
        // the same signal as a 429, or the worker would keep its rate against a server that asks
        // it to back off.
        let unavailable = status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some();
        if status == StatusCode::TOO_MANY_REQUESTS || unavailable {
            self.inner.budget.on_throttled(started, retry_after);
        } else if !status.is_server_error() {
            self.inner.budget.on_success(started);
        }
        tracing::debug!(
            route = route.as_str(),
            status = status.as_u16(),
            correlation_id,
            attempt,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "data-store request"
        );
        let answer = Answer {
            status: status.as_u16(),
            headers,
            body,
        };
        Ok((answer, token.generation))
    }

    fn transport_failed(
        &self,
        route: Route,
        correlation_id: &str,
        attempt: u32,
        error: &reqwest::Error,
        started: Instant,
    ) -> StoreError {
        let error = StoreError::from_transport(error);
        self.body_failed(route, correlation_id, attempt, error, started)
    }

    /// No usable answer: no response, or a body that broke off, took too long or was too large.
    fn body_failed(
        &self,
        route: Route,
        correlation_id: &str,
        attempt: u32,
        error: StoreError,
        started: Instant,
    ) -> StoreError {
        instrumentation::record(
            route,
            instrumentation::transport_status(&error),
            started.elapsed(),
        );
        tracing::debug!(
            route = route.as_str(),
            correlation_id,
            attempt,
            %error,
            "data-store request got no answer"
        );
        error
    }

    /// `{base}{records_path}/{segments…}`, each segment percent-encoded (`/` and `%` included).
    /// A `.`/`..`/empty segment is refused: the URL library would drop it and the call would go to
    /// another resource (job parsing refuses such ids first; this guards every other caller).
    fn url(&self, base: &str, segments: &[&str]) -> Result<url::Url, StoreError> {
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(StoreError::Config(format!(
                "{bad:?} cannot be a data-store or record id: it would change the request path"
            )));
        }
        let mut url = self.records_root(base)?;
        url.path_segments_mut()
            .map_err(|()| {
                StoreError::Config(format!("data-store URL {base:?} cannot have a path"))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// `{base}{records_path}`, parsed once per base.
    fn records_root(&self, base: &str) -> Result<url::Url, StoreError> {
        let mut cached = self
            .inner
            .records_root
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((seen, url)) = cached.as_ref()
            && seen == base
        {
            return Ok(url.clone());
        }
        let url = url::Url::parse(&format!("{base}{}", self.inner.records_path))
            .map_err(|e| StoreError::Config(format!("data-store URL {base:?}: {e}")))?;
        *cached = Some((base.to_owned(), url.clone()));
        Ok(url)
    }
}

/// The budget `[rate_limit]` asks for: one per process, or shared by every replica through Redis
/// (which falls back to `requests_per_second / replicas_hint` while Redis cannot be reached).
fn budget_from_settings(settings: &Settings) -> Result<Arc<dyn RateBudget>, StoreError> {
    let s = &settings.rate_limit;
    match s.backend {
        RateLimitBackend::Local => Ok(Arc::new(LocalBudget::new(s.requests_per_second, s.burst))),
        RateLimitBackend::Redis => {
            let key = if s.redis_key.is_empty() {
                let api = if settings.cxone.api_base.is_empty() {
                    &settings.cxone.auth.issuer
                } else {
                    &settings.cxone.api_base
                };
                redis_budget::default_key(&settings.amqp.prefix, api)
            } else {
                s.redis_key.clone()
            };
            let budget = RedisBudget::new(RedisBudgetConfig {
                url: s.redis_url.clone(),
                key,
                requests_per_second: s.requests_per_second,
                burst: s.burst,
                replicas_hint: s.replicas_hint,
            })
            .map_err(StoreError::Config)?;
            Ok(Arc::new(budget))
        }
    }
}

/// Retry-After as delta seconds (integer or decimal) or as an HTTP date (RFC 9110 §10.2.3), at
/// most an hour. A date that is not in the future says nothing usable (clocks differ), so it counts
/// as absent, as does anything unparsable.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs.min(3600.0)),
        Ok(_) => return None,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(std::time::SystemTime::now())
                .ok()
                .filter(|wait| !wait.is_zero())?
        }
    };
    Some(wait.min(Duration::from_secs(3600)))
}

fn decode<T: serde::de::DeserializeOwned>(route: Route, answer: &Answer) -> Result<T, StoreError> {
    error::decode_json(route.as_str(), answer.status, &answer.body)
}

fn repeated_page_token(token: &str) -> StoreError {
    let shown: String = token.chars().take(64).collect();
    StoreError::InvalidResponse {
        route: Route::ListRecords.as_str(),
        message: format!(
            "next_page_token {shown:?} was already returned: the store's paging loops; \
             check the store (or the proxy in front of it) before retrying"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_delta_seconds_and_future_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), None, "a past date");
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(soon)).unwrap(),
        );
        let wait = parse_retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }

    fn client(api_base: &str, records_path: &str) -> StoreClient {
        let settings = Settings::load_with_env(&Default::default(), Some(HashMap::new())).unwrap();
        let mut cxone = settings.cxone.clone();
        cxone.api_base = api_base.to_owned();
        cxone.records_path = records_path.to_owned();
        StoreClient::new(
            &cxone,
            &settings.retry,
            Arc::new(LocalBudget::new(10, 1)),
            5,
        )
        .unwrap()
    }

    #[test]
    fn dot_and_empty_segments_are_refused_rather_than_dropped() {
        let c = client("http://h:1", "/api/v2/datastores");
        for segments in [["..", "schema"], [".", "schema"], ["", "schema"]] {
            let err = c.url("http://h:1", &segments).unwrap_err();
            assert!(err.to_string().contains("change the request path"), "{err}");
        }
    }

    #[test]
    fn urls_join_base_path_and_encoded_segments() {
        let c = client("http://h:1/", "/api/v2/datastores/");
        let url = c.url("http://h:1", &["my ds", "records", "a/b"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/api/v2/datastores/my%20ds/records/a%2Fb"
        );
        let url = c.url("http://h:1", &["%2e%2e", "records", "%2E"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/api/v2/datastores/%252e%252e/records/%252E"
        );
        // Backslashes are separators to WHATWG parsers in http(s) URLs: they must be encoded too.
        let url = c.url("http://h:1", &["ds", "records", "..\\x"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/api/v2/datastores/ds/records/..%5Cx"
        );
        let c = client("http://h:1", "api/v2/datastores");
        let url = c.url("http://h:1/tenant", &["ds", "schema"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/tenant/api/v2/datastores/ds/schema"
        );
    }
}
