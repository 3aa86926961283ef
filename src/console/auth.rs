//! Who may change the dead queue. Without `[console].token` nobody (read-only console). With it: an
//! API client sending `Authorization: Bearer TOKEN`, or a browser logged in with the token (an
//! HttpOnly, SameSite=Strict session cookie). Every write must come from this origin: a request
//! whose `Origin` or `Sec-Fetch-Site` names another site is refused (CSRF).

use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde::Deserialize;

use super::state::{SESSION_TTL, SharedConsole};
use super::{ConsoleError, page};

pub const COOKIE: &str = "cxrel_console";

/// Who is asking, as far as the console can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token configured: nobody may write.
    ReadOnly,
    /// A token is configured but this request does not carry it.
    Anonymous,
    /// May write; the name goes into audit lines.
    Operator(String),
}

impl Access {
    pub fn can_write(&self) -> bool {
        matches!(self, Access::Operator(_))
    }
}

/// Reads the bearer header or the session cookie of a request.
pub fn access(console: &SharedConsole, headers: &HeaderMap, peer: SocketAddr) -> Access {
    let Some(token) = &console.token else {
        return Access::ReadOnly;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if bearer.is_some_and(|b| same(b.trim().as_bytes(), token.expose().as_bytes())) {
        return Access::Operator(format!("token@{}", peer.ip()));
    }
    match session_id(headers).and_then(|id| console.session(&id)) {
        Some(label) => Access::Operator(format!("session:{label}@{}", peer.ip())),
        None => Access::Anonymous,
    }
}

/// The credentials of `Bearer <token>`; the scheme name is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The operator's name for a write, or the error to answer with.
pub fn writer(
    console: &SharedConsole,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, ConsoleError> {
    same_origin(headers)?;
    match access(console, headers, peer) {
        Access::Operator(name) => Ok(name),
        Access::ReadOnly => Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "this console is read-only: set [console].token (CXREL__CONSOLE__TOKEN) to allow \
             replay and purge",
        )),
        Access::Anonymous => Err(ConsoleError::new(
            StatusCode::UNAUTHORIZED,
            "log in at /login, or send Authorization: Bearer TOKEN",
        )),
    }
}

/// On a loopback listener, only requests addressed to a loopback name are answered: a web page
/// whose own name resolves to 127.0.0.1 (DNS rebinding) must not read the dead letters.
pub async fn loopback_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        return next.run(request).await;
    }
    ConsoleError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "this console listens on loopback and answers only http://127.0.0.1:PORT or \
         http://localhost:PORT; to serve another name, listen on another address",
    )
    .into_response()
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses requests another site made a browser send (CSRF). Clients that send neither header
/// (curl, scripts) pass; browsers always send at least one of them with a POST.
pub fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err(cross_origin(site));
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if origin_host != host {
            return Err(cross_origin(origin));
        }
    }
    Ok(())
}

fn cross_origin(from: &str) -> ConsoleError {
    ConsoleError::new(
        StatusCode::FORBIDDEN,
        format!("cross-origin request refused (from {from}); use the console's own page"),
    )
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// POST /login: the token in a form; sets the session cookie and goes to the overview.
pub async fn login(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(error) = same_origin(&headers) {
        return error.into_response();
    }
    let Some(token) = &console.token else {
        return page::login(Some(
            "this console is read-only: there is nothing to log in to",
        ));
    };
    if console.logins.check().is_err() {
        tracing::warn!(target: "cxrel::audit", peer = %peer.ip(), "console login refused: too many attempts");
        let mut page = page::login(Some(
            "too many login attempts in the last minute (all clients together); wait a minute and try again",
        ));
        *page.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
        return page;
    }
    if !same(form.token.trim().as_bytes(), token.expose().as_bytes()) {
        tracing::warn!(target: "cxrel::audit", peer = %peer.ip(), "console login refused");
        // A pause makes guessing slow.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        return page::login(Some("wrong token"));
    }
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let label = console.add_session(id.clone());
    tracing::info!(target: "cxrel::audit", peer = %peer.ip(), session = %label, "console login");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// POST /logout: ends the session.
pub async fn logout(State(console): State<SharedConsole>, headers: HeaderMap) -> Response {
    if let Err(error) = same_origin(&headers) {
        return error.into_response();
    }
    if let Some(id) = session_id(&headers) {
        console.end_session(&id);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        assert_eq!(bearer_token("Bearer t0k"), Some("t0k"));
        assert_eq!(bearer_token("bearer t0k"), Some("t0k"));
        assert_eq!(bearer_token("BEARER t0k"), Some("t0k"));
        assert_eq!(bearer_token("Basic t0k"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn a_post_from_another_site_is_refused() {
        let evil = headers(&[("host", "127.0.0.1:8481"), ("origin", "http://evil.test")]);
        assert!(same_origin(&evil).is_err());
        let fetch = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(same_origin(&fetch).is_err());
    }

    #[test]
    fn same_origin_browsers_and_plain_clients_pass() {
        let page = headers(&[
            ("host", "127.0.0.1:8481"),
            ("origin", "http://127.0.0.1:8481"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(same_origin(&page).is_ok());
        assert!(same_origin(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; cxrel_console=abc; b=2")]);
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "127.0.0.1:8481",
            "localhost:8481",
            "[::1]:8481",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for refused in [
            "evil.example:8481",
            "10.0.0.1:8481",
            "",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(refused), "{refused}");
        }
    }

    #[test]
    fn tokens_compare_by_every_byte() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
