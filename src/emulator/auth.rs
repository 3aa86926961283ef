//! SPEC §4 as served by the emulator: OIDC and CXone discovery documents, the token endpoint
//! (password and client-credentials grants), opaque bearer tokens with expiry and scopes, and the
//! extractors that guard the record API.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, HOST, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::error::{ApiError, body_error, has_content_type, parse_query};
use super::state::{EmulatorState, Shared, read, write};
use super::stats::ClientMethod;

pub const SCOPE_READ: &str = "datastore:read";
pub const SCOPE_WRITE: &str = "datastore:write";

/// Stand-in expiry for TTLs too large for `Instant` arithmetic.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Beyond this many stored tokens, issuing one first drops the expired ones.
const SWEEP_ABOVE: usize = 10_000;

/// What a bearer token allows, and until when.
#[derive(Debug, Clone, Copy)]
struct Grant {
    expires_at: Instant,
    read: bool,
    write: bool,
}

/// The scope a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
}

/// Issued access tokens: random opaque strings.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: RwLock<HashMap<String, Grant>>,
}

impl TokenStore {
    /// Issues a token valid for `ttl` with the given scopes.
    fn issue(&self, ttl: Duration, can_read: bool, can_write: bool) -> String {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut tokens = write(&self.tokens);
        if tokens.len() > SWEEP_ABOVE {
            tokens.retain(|_, g| g.expires_at > now);
        }
        let grant = Grant {
            // A TTL beyond what Instant can hold means "never" in practice.
            expires_at: now.checked_add(ttl).unwrap_or(now + FAR_FUTURE),
            read: can_read,
            write: can_write,
        };
        tokens.insert(token.clone(), grant);
        token
    }

    /// Checks the `Authorization: Bearer` header for `scope`: 401 if missing, unknown or
    /// expired, 403 if the scope is not granted.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
        let token = bearer(headers).ok_or_else(|| unauthorized("missing bearer token"))?;
        let grant = read(&self.tokens)
            .get(token)
            .copied()
            .ok_or_else(|| unauthorized("unknown access token"))?;
        if grant.expires_at <= Instant::now() {
            return Err(unauthorized("access token expired"));
        }
        let allowed = match scope {
            Scope::Read => grant.read,
            Scope::Write => grant.write,
        };
        if !allowed {
            let name = if scope == Scope::Read {
                SCOPE_READ
            } else {
                SCOPE_WRITE
            };
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("the access token lacks scope {name}"),
            ));
        }
        Ok(())
    }

    pub fn clear(&self) {
        write(&self.tokens).clear();
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(description: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", description).with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    )
}

/// Extractor: the request carries a live token with `datastore:read`.
pub struct ReadAccess;

/// Extractor: the request carries a live token with `datastore:write`.
pub struct WriteAccess;

impl FromRequestParts<Shared> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        state.tokens.authorize(&parts.headers, Scope::Read)?;
        Ok(Self)
    }
}

impl FromRequestParts<Shared> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        state.tokens.authorize(&parts.headers, Scope::Write)?;
        Ok(Self)
    }
}

/// `http://{Host}`: the port is unknown until bound (port 0), so discovery answers with whatever
/// address the client reached; the bound address when there is no usable Host header.
pub fn base_url(headers: &HeaderMap, state: &EmulatorState) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(is_host_char));
    match host {
        Some(host) => format!("http://{host}"),
        None => {
            let addr = state.bound.get().copied().unwrap_or(state.config.listen);
            format!("http://{addr}")
        }
    }
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')
}

/// `GET /.well-known/openid-configuration`.
pub async fn openid_configuration(State(state): State<Shared>, headers: HeaderMap) -> Json<Value> {
    let base = base_url(&headers, &state);
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/auth/token"),
        "grant_types_supported": ["password", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": [SCOPE_READ, SCOPE_WRITE],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["HS256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "tenantId"]
    }))
}

#[derive(Deserialize)]
pub struct TenantQuery {
    #[serde(rename = "tenantId")]
    tenant_id: Option<String>,
}

/// `GET /.well-known/cxone-configuration?tenantId=T`: where tenant T's API lives (here).
pub async fn cxone_configuration(
    State(state): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let query: TenantQuery = parse_query(&uri)?;
    let tenant = query
        .tenant_id
        .ok_or_else(|| ApiError::bad_request("invalid_request", "tenantId is required"))?;
    if !tenant.eq_ignore_ascii_case(&state.config.tenant_id) {
        return Err(ApiError::not_found(
            "tenant_not_found",
            format!("no tenant {tenant:?}"),
        ));
    }
    let base = base_url(&headers, &state);
    let domain = base
        .trim_start_matches("http://")
        .rsplit_once(':')
        .map_or_else(
            || base.trim_start_matches("http://").to_owned(),
            |(h, _)| h.to_owned(),
        );
    Ok(Json(
        json!({"api_endpoint": base, "area": "emulator", "domain": domain}),
    ))
}

/// `POST /auth/token` (form-encoded): the password grant with an access key, or
/// client_credentials with a scope list. Errors per RFC 6749 §5.2.
pub async fn token(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    if !has_content_type(&headers, |m| {
        m.eq_ignore_ascii_case("application/x-www-form-urlencoded")
    }) {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected an application/x-www-form-urlencoded body",
        ));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (client_id, client_method) = authenticate_client(&headers, &form, &state)?;
    let (read, write) = granted_scopes(&form, &state)?;
    let ttl = state.faults.token_ttl();
    let access_token = state.tokens.issue(ttl, read, write);
    state.stats.token_issued(client_method);
    let subject = form
        .get("username")
        .cloned()
        .unwrap_or_else(|| client_id.clone());
    let id_token = id_token(
        &state,
        &base_url(&headers, &state),
        &subject,
        &client_id,
        ttl,
    );
    let scope = scope_string(read, write);
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in(ttl),
        "id_token": id_token,
        "scope": scope,
    });
    Ok(([(CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `expires_in` of a token living `ttl`: whole seconds as an integer, a shorter or fractional
/// lifetime (a fault) to the millisecond, so clients can honour a sub-second lifetime.
fn expires_in(ttl: std::time::Duration) -> serde_json::Value {
    if ttl.subsec_millis() == 0 {
        ttl.as_secs().into()
    } else {
        (ttl.as_millis() as f64 / 1000.0).into()
    }
}

fn oauth(status: StatusCode, code: &'static str, description: &str) -> ApiError {
    ApiError::new(status, code, description)
}

/// The client by HTTP Basic or by `client_id`/`client_secret` form fields, not both (RFC 6749
/// §2.3: one method per request; 400 `invalid_request`); 401 `invalid_client` when refused.
fn authenticate_client(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    state: &EmulatorState,
) -> Result<(String, ClientMethod), ApiError> {
    let basic = basic_credentials(headers);
    let posted = form.get("client_secret").map(|secret| {
        let id = form.get("client_id").cloned().unwrap_or_default();
        (id, secret.clone())
    });
    let (id, secret, method) = match (basic, posted) {
        (Some(_), Some(_)) => {
            return Err(oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the client authenticated twice (HTTP Basic and form fields); use one method",
            ));
        }
        (Some((id, secret)), None) => (id, secret, ClientMethod::Basic),
        (None, Some((id, secret))) => (id, secret, ClientMethod::Post),
        (None, None) => return Err(invalid_client("client authentication is required")),
    };
    if state
        .faults
        .token_client_auth()
        .is_some_and(|only| only != method)
    {
        return Err(invalid_client(
            "this token endpoint does not take that client authentication method",
        ));
    }
    let config = &state.config;
    if id == config.client_id && secret == config.client_secret.expose() {
        Ok((id, method))
    } else {
        Err(invalid_client("unknown client or wrong client secret"))
    }
}

fn invalid_client(description: &str) -> ApiError {
    oauth(StatusCode::UNAUTHORIZED, "invalid_client", description).with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cxrel-emulator\""),
    )
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// (read, write) scopes the grant yields, checking the grant's own credentials.
fn granted_scopes(
    form: &HashMap<String, String>,
    state: &EmulatorState,
) -> Result<(bool, bool), ApiError> {
    let grant_type = form.get("grant_type").ok_or_else(|| {
        oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required",
        )
    })?;
    match grant_type.as_str() {
        "password" => {
            let (Some(user), Some(pass)) = (form.get("username"), form.get("password")) else {
                return Err(oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password are required",
                ));
            };
            let config = &state.config;
            if *user == config.access_key_id && pass == config.access_key_secret.expose() {
                Ok((true, true))
            } else {
                Err(oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown access key or wrong secret",
                ))
            }
        }
        "client_credentials" => parse_scopes(form.get("scope").map(String::as_str).unwrap_or("")),
        _ => Err(oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be password or client_credentials",
        )),
    }
}

/// A space-separated scope list; empty means both known scopes.
fn parse_scopes(scope: &str) -> Result<(bool, bool), ApiError> {
    let mut read = false;
    let mut write = false;
    for name in scope.split_whitespace() {
        match name {
            SCOPE_READ => read = true,
            SCOPE_WRITE => write = true,
            _ => {
                return Err(oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "known scopes: datastore:read datastore:write",
                ));
            }
        }
    }
    if !read && !write {
        return Ok((true, true));
    }
    Ok((read, write))
}

fn scope_string(read: bool, write: bool) -> String {
    let names = [(read, SCOPE_READ), (write, SCOPE_WRITE)];
    names
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An HS256 JWT keyed with the client secret (the OIDC rule for HS256 id_tokens), carrying the
/// `tenantId` claim that CXone clients use to discover the API host.
fn id_token(
    state: &EmulatorState,
    issuer: &str,
    subject: &str,
    audience: &str,
    ttl: Duration,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "exp": now.saturating_add(ttl.as_secs()),
        "tenantId": state.config.tenant_id,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(state.config.client_secret.expose().as_bytes())
            .expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn expired_token_is_rejected_with_401() {
        let store = TokenStore::default();
        let token = store.issue(Duration::ZERO, true, true);
        let err = store
            .authorize(&with_bearer(&token), Scope::Read)
            .unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert_eq!(err.code, "invalid_token");
    }

    #[test]
    fn a_read_only_token_cannot_write() {
        let store = TokenStore::default();
        let token = store.issue(Duration::from_secs(60), true, false);
        assert!(store.authorize(&with_bearer(&token), Scope::Read).is_ok());
        let err = store
            .authorize(&with_bearer(&token), Scope::Write)
            .unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert_eq!(err.code, "insufficient_scope");
    }

    #[test]
    fn an_empty_scope_list_grants_both_scopes_and_an_unknown_one_is_refused() {
        assert!(matches!(parse_scopes(""), Ok((true, true))));
        assert!(matches!(parse_scopes("datastore:read"), Ok((true, false))));
        assert_eq!(parse_scopes("admin").unwrap_err().code, "invalid_scope");
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let mut h = HeaderMap::new();
        let encoded = STANDARD.encode("id:sec:ret");
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(basic_credentials(&h), Some(("id".into(), "sec:ret".into())));
    }
}
