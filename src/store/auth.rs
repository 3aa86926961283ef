//! Access tokens for the data store (SPEC §4): OIDC discovery, the password grant (`mode = "cxone"`)
//! or the client-credentials grant, a cached token refreshed ahead of expiry by a single request
//! however many tasks are waiting, and discovery of the API base from the `tenantId` claim.
//!
//! Single flight: the cached token sits behind a `RwLock` (fast path, no await); refreshing takes a
//! `tokio::sync::Mutex`. A task that finds the token expired queues on the mutex and, once inside,
//! re-checks: if another task refreshed meanwhile it uses that token. While the token is only *near*
//! expiry (inside the refresh margin) and still valid, a task that cannot take the mutex at once
//! keeps using the old token instead of waiting. A 401 invalidates the token by its generation, so
//! fifty tasks that get 401 with the same token cause one refresh, not fifty. A failed fetch is
//! shared the same way: tasks that waited for it, and any asking within `FAILURE_HOLD`, get its
//! error.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OnceCell};

use super::body::{self, BodyLimits};
use super::error::{ErrorBody, StoreError, decode_json};
use super::instrumentation::{self as m, Route};
use super::shared_failure::{self, Failure};
use super::wire::{CxoneConfiguration, OidcConfiguration, TokenResponse, tenant_id_claim};
use crate::secret::Secret;
use crate::settings::{AuthMode, AuthSettings, ClientAuth};

/// Lifetime assumed when the token endpoint does not say (`expires_in` absent).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// After a failed token fetch, callers get that failure for this long before the endpoint is
/// asked again: a failing endpoint sees about two requests a second, not one per waiting task.
const FAILURE_HOLD: Duration = Duration::from_millis(500);

/// Longest wait a token endpoint's Retry-After imposes on every caller before it is asked again.
const MAX_RETRY_AFTER_HOLD: Duration = Duration::from_secs(30);

/// How long callers get a failed fetch's error before the token endpoint is asked again: at least
/// [`FAILURE_HOLD`], and as long as the endpoint's own Retry-After on a 429 says (capped).
fn failure_hold(error: &StoreError) -> Duration {
    match error {
        StoreError::RateLimited {
            retry_after: Some(wait),
            ..
        } => (*wait).clamp(FAILURE_HOLD, MAX_RETRY_AFTER_HOLD),
        _ => FAILURE_HOLD,
    }
}

/// Longest lifetime believed: a token endpoint answering `expires_in: 18446744073709551615` must
/// neither overflow `Instant` (a panic) nor make cxrel keep a token forever.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A cached access token.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: Secret,
    /// Increases with every fetched token; a 401 invalidates only the generation it was sent with.
    pub generation: u64,
    expires_at: Instant,
    refresh_at: Instant,
}

impl Token {
    fn expired(&self, now: Instant) -> bool {
        now >= self.expires_at
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.refresh_at
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &self.value)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// When to refresh a token that lives `lifetime`: `refresh_before` ahead of expiry, but never
/// more than a tenth of its life, so short-lived tokens are not refreshed on every call.
pub(crate) fn refresh_margin(lifetime: Duration, refresh_before: Duration) -> Duration {
    refresh_before.min(lifetime / 10)
}

/// The lifetime of a token whose endpoint said `expires_in`, capped at [`MAX_LIFETIME`]. Zero or
/// less says nothing usable, as absent does: taken at its word it would fetch a token for every
/// request (a black-box run counted 63 token requests for 62 store calls). If the token really is
/// expired, the store's 401 refreshes it once.
pub(crate) fn token_lifetime(expires_in: Option<Duration>) -> Duration {
    match expires_in {
        Some(lifetime) if !lifetime.is_zero() => lifetime.min(MAX_LIFETIME),
        _ => DEFAULT_LIFETIME,
    }
}

/// When a token fetched at `now` expires and when to refresh it. Saturating: a clock near the end
/// of `Instant`'s range expires the token at once instead of panicking.
pub(crate) fn token_deadlines(
    now: Instant,
    lifetime: Duration,
    refresh_before: Duration,
) -> (Instant, Instant) {
    let expires_at = now.checked_add(lifetime).unwrap_or(now);
    let refresh_at = expires_at
        .checked_sub(refresh_margin(lifetime, refresh_before))
        .unwrap_or(now);
    (expires_at, refresh_at.max(now))
}

/// Fetches, caches and refreshes tokens; discovers endpoints once.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    settings: AuthSettings,
    /// `[cxone].api_base`; empty = discover through the tenant id.
    configured_api_base: String,
    current: RwLock<Option<Token>>,
    refresh: Mutex<u64>,
    /// The last failed fetch: tasks that were already waiting when it failed get its error
    /// instead of asking the token endpoint again each in turn.
    failed: RwLock<Option<Failure<StoreError>>>,
    token_endpoint: OnceCell<String>,
    api_base: OnceCell<String>,
    tenant_id: RwLock<Option<String>>,
    body_limits: BodyLimits,
    /// With `client_auth = "auto"`: the method the token endpoint took after refusing the other.
    client_auth_learned: std::sync::OnceLock<ClientAuth>,
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        settings: AuthSettings,
        api_base: &str,
        body_limits: BodyLimits,
    ) -> Self {
        Self {
            http,
            settings,
            configured_api_base: api_base.trim_end_matches('/').to_owned(),
            current: RwLock::new(None),
            refresh: Mutex::new(0),
            failed: RwLock::new(None),
            token_endpoint: OnceCell::new(),
            api_base: OnceCell::new(),
            tenant_id: RwLock::new(None),
            body_limits,
            client_auth_learned: std::sync::OnceLock::new(),
        }
    }

    fn cached(&self) -> Option<Token> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A valid token: the cached one, or a fresh one fetched by exactly one of the waiting tasks.
    pub async fn token(&self) -> Result<Token, StoreError> {
        if let Some(t) = self.cached() {
            let now = Instant::now();
            if !t.due(now) {
                return Ok(t);
            }
            if !t.expired(now) {
                // Near expiry: refresh if nobody else is; otherwise keep using the valid token.
                let Ok(mut guard) = self.refresh.try_lock() else {
                    return Ok(t);
                };
                let asked = Instant::now();
                return match self
                    .refresh_locked(&mut guard, Some(t.generation), asked)
                    .await
                {
                    Ok(fresh) => Ok(fresh),
                    Err(error) if !t.expired(Instant::now()) => {
                        tracing::warn!(%error, "token refresh failed; the current token is still valid");
                        Ok(t)
                    }
                    Err(error) => Err(error),
                };
            }
        }
        let stale = self.cached().map(|t| t.generation);
        let asked = Instant::now();
        let mut guard = self.refresh.lock().await;
        self.refresh_locked(&mut guard, stale, asked).await
    }

    /// Drops the token of `generation` after a 401 (a newer one is kept).
    pub fn invalidate(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            *current = None;
        }
    }

    /// Inside the refresh mutex: fetch unless another task already replaced the `stale` token,
    /// or a fetch failed after this task `asked` (one request however many tasks wait, also
    /// while the token endpoint fails: they share that failure).
    async fn refresh_locked(
        &self,
        last_generation: &mut u64,
        stale: Option<u64>,
        asked: Instant,
    ) -> Result<Token, StoreError> {
        if let Some(t) = self.cached() {
            let now = Instant::now();
            let replaced = stale.is_none_or(|g| t.generation != g);
            if replaced && !t.due(now) {
                return Ok(t);
            }
        }
        let waited = shared_failure::waited_on(
            self.failed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref(),
            asked,
            failure_hold,
        );
        if let Some(error) = waited {
            return Err(error);
        }
        let fetched = self.fetch().await;
        if let Some(failure) = shared_failure::kept(&fetched, |_| true) {
            *self.failed.write().unwrap_or_else(|e| e.into_inner()) = Some(failure);
        }
        let fetched = fetched?;
        *last_generation += 1;
        let lifetime = token_lifetime(fetched.expires_in);
        let (expires_at, refresh_at) =
            token_deadlines(Instant::now(), lifetime, self.settings.refresh_before);
        let token = Token {
            value: Secret::new(fetched.access_token),
            generation: *last_generation,
            expires_at,
            refresh_at,
        };
        if let Some(tenant) = fetched.id_token.as_deref().and_then(tenant_id_claim) {
            *self.tenant_id.write().unwrap_or_else(|e| e.into_inner()) = Some(tenant);
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        tracing::debug!(
            generation = token.generation,
            expires_in_s = lifetime.as_secs(),
            "data-store access token fetched"
        );
        Ok(token)
    }

    /// The data-store API base: `[cxone].api_base`, or (mode "cxone", empty setting) the
    /// `api_endpoint` of `{issuer}/.well-known/cxone-configuration?tenantId=T`.
    pub async fn api_base(&self) -> Result<String, StoreError> {
        if !self.configured_api_base.is_empty() {
            return Ok(self.configured_api_base.clone());
        }
        self.api_base
            .get_or_try_init(|| async {
                let tenant = self.tenant_id().await?;
                let url = format!(
                    "{}/.well-known/cxone-configuration",
                    self.settings.issuer.trim_end_matches('/')
                );
                let request = self.http.get(&url).query(&[("tenantId", tenant.as_str())]);
                let config: CxoneConfiguration =
                    send_json(request, Route::Discovery, self.body_limits).await?;
                let base = config.api_endpoint.trim_end_matches('/').to_owned();
                if base.is_empty() {
                    return Err(invalid(Route::Discovery, "empty api_endpoint"));
                }
                tracing::info!(api_base = %base, tenant_id = %tenant, "data-store API base discovered");
                Ok(base)
            })
            .await
            .cloned()
    }

    /// The tenant id from the last id_token (fetching a token first when there is none).
    pub async fn tenant_id(&self) -> Result<String, StoreError> {
        if let Some(t) = self
            .tenant_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(t);
        }
        self.token().await?;
        self.tenant_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| invalid(Route::Token, "id_token without a tenantId claim"))
    }

    async fn token_endpoint(&self) -> Result<String, StoreError> {
        if self.settings.mode == AuthMode::ClientCredentials && !self.settings.token_url.is_empty()
        {
            return Ok(self.settings.token_url.clone());
        }
        self.token_endpoint
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.settings.issuer.trim_end_matches('/')
                );
                let doc: OidcConfiguration =
                    send_json(self.http.get(&url), Route::Discovery, self.body_limits).await?;
                tracing::debug!(token_endpoint = %doc.token_endpoint, "OIDC discovery done");
                Ok(doc.token_endpoint)
            })
            .await
            .cloned()
    }

    /// One token request. With `client_auth = "auto"`, a refusal of the client is tried
    /// once more with the other method, and the one that worked is kept: RFC 6749 servers must take
    /// Basic, the tutorial's server takes form fields, and a store may do either.
    async fn fetch(&self) -> Result<TokenResponse, StoreError> {
        let method = self
            .client_auth_learned
            .get()
            .copied()
            .unwrap_or_else(|| client_auth(&self.settings));
        let first = self.fetch_with(method).await;
        let may_switch = self.settings.client_auth == ClientAuth::Auto
            && self.client_auth_learned.get().is_none();
        match first {
            Err(StoreError::Unauthorized { status, ref body })
                if may_switch && refuses_client(status, body) =>
            {
                let other = match method {
                    ClientAuth::ClientSecretPost => ClientAuth::ClientSecretBasic,
                    _ => ClientAuth::ClientSecretPost,
                };
                let answer = self.fetch_with(other).await?;
                let _ = self.client_auth_learned.set(other);
                tracing::info!(client_auth = ?other, "the token endpoint refused the client by the other method; using this one from now on");
                Ok(answer)
            }
            answer => answer,
        }
    }

    async fn fetch_with(&self, method: ClientAuth) -> Result<TokenResponse, StoreError> {
        let endpoint = self.token_endpoint().await?;
        let s = &self.settings;
        let mut form: Vec<(&str, &str)> = match s.mode {
            AuthMode::Cxone => vec![
                ("grant_type", "password"),
                ("username", s.access_key_id.as_str()),
                ("password", s.access_key_secret.expose()),
            ],
            AuthMode::ClientCredentials => vec![("grant_type", "client_credentials")],
        };
        // An empty scope parameter is invalid for some servers; absent means "the client's default".
        if s.mode == AuthMode::ClientCredentials && !s.scope.is_empty() {
            form.push(("scope", s.scope.as_str()));
        }
        let request = self.http.post(&endpoint);
        let request = match method {
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", s.client_id.as_str()));
                form.push(("client_secret", s.client_secret.expose()));
                request
            }
            _ => request.basic_auth(&s.client_id, Some(s.client_secret.expose())),
        };
        let request = request.form(&form);
        send_json(request, Route::Token, self.body_limits).await
    }
}

/// The token endpoint's answer is about how the client authenticated (RFC 6749 §5.2), not about
/// the grant (`invalid_grant`, `invalid_scope`: another method would not help).
fn refuses_client(status: u16, body: &ErrorBody) -> bool {
    match body.error.as_deref() {
        Some("invalid_client" | "unauthorized_client" | "invalid_request") => true,
        Some(_) => false,
        None => status == 401,
    }
}

/// The method `auto` stands for in each mode (see `[cxone.auth].client_auth`).
fn client_auth(s: &AuthSettings) -> ClientAuth {
    match (s.client_auth, s.mode) {
        (ClientAuth::Auto, AuthMode::Cxone) => ClientAuth::ClientSecretBasic,
        (ClientAuth::Auto, AuthMode::ClientCredentials) => ClientAuth::ClientSecretPost,
        (explicit, _) => explicit,
    }
}

/// Sends an auth request and decodes its JSON answer. A 400/401/403 from the token endpoint means
/// the credentials were refused (permanent `unauthorized`); 5xx and transport errors are transient.
async fn send_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    route: Route,
    limits: BodyLimits,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let request = request.header(reqwest::header::ACCEPT, "application/json");
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let error = StoreError::from_transport(&e);
            m::record(route, m::transport_status(&error), started.elapsed());
            return Err(error);
        }
    };
    let status = response.status().as_u16();
    m::record(route, m::status_label(status), started.elapsed());
    if !(200..300).contains(&status) {
        let retry_after = super::parse_retry_after(response.headers());
        let bytes = body::read_excerpt(response, limits).await;
        let body = ErrorBody::parse(&bytes);
        tracing::warn!(
            route = route.as_str(),
            status,
            error = body.error.as_deref().unwrap_or(""),
            description = body.description.as_deref().unwrap_or(""),
            "auth request refused"
        );
        return Err(match status {
            400 | 401 | 403 if route == Route::Token => StoreError::Unauthorized { status, body },
            _ => StoreError::from_status(status, body, retry_after),
        });
    }
    let bytes = body::read(response, route, limits).await?;
    decode_json(route.as_str(), status, &bytes)
}

fn invalid(route: Route, message: &str) -> StoreError {
    StoreError::InvalidResponse {
        route: route.as_str(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_margin_is_capped_at_a_tenth_of_the_lifetime() {
        let before = Duration::from_secs(30);
        assert_eq!(
            refresh_margin(Duration::from_secs(3600), before),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(2), before),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn a_huge_expires_in_is_capped_instead_of_overflowing_the_clock() {
        assert_eq!(token_lifetime(Some(Duration::MAX)), MAX_LIFETIME);
        assert_eq!(
            token_lifetime(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(token_lifetime(None), DEFAULT_LIFETIME);
        let now = Instant::now();
        let (expires, refresh) = token_deadlines(
            now,
            token_lifetime(Some(Duration::MAX)),
            Duration::from_secs(30),
        );
        assert_eq!(expires, now + MAX_LIFETIME);
        assert!(refresh < expires && refresh >= now);
    }

    #[test]
    fn an_expires_in_of_zero_or_less_is_taken_as_unsaid_not_as_expired() {
        // The wire reads 0 and negative numbers as zero.
        assert_eq!(token_lifetime(Some(Duration::ZERO)), DEFAULT_LIFETIME);
        let short = Duration::from_millis(700);
        assert_eq!(token_lifetime(Some(short)), short);
    }

    #[test]
    fn deadlines_saturate_whatever_the_lifetime() {
        let now = Instant::now();
        let (expires, refresh) = token_deadlines(now, Duration::MAX, Duration::MAX);
        assert!(expires >= now && refresh >= now && refresh <= expires);
        let (expires, refresh) = token_deadlines(now, Duration::ZERO, Duration::from_secs(30));
        assert_eq!((expires, refresh), (now, now));
    }

    #[test]
    fn a_token_never_shows_its_value_in_debug_output() {
        let t = Token {
            value: Secret::new("eyJhbGciOi.secret.value"),
            generation: 1,
            expires_at: Instant::now(),
            refresh_at: Instant::now(),
        };
        let dump = format!("{t:?}");
        assert!(!dump.contains("secret.value"), "{dump}");
    }
}
