//! The emulator's auth endpoints (SPEC §4) over real HTTP: discovery, both grants, the id_token's
//! tenantId claim, OAuth errors, token expiry and scopes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::emulator;
use crate::helpers::emulator::{
    ACCESS_KEY_ID, CLIENT_ID, CLIENT_SECRET, EmulatorProcess, TENANT_ID, client, fetch_json,
    password_grant,
};

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn discovery_names_the_token_endpoint_and_the_tenant_api_host() {
    let emu = EmulatorProcess::spawn();
    let http = client();
    let oidc = fetch_json(http.get(emu.url("/.well-known/openid-configuration"))).await;
    assert_eq!(oidc["issuer"], emu.base);
    assert_eq!(oidc["token_endpoint"], format!("{}/auth/token", emu.base));

    let url = emu.url(&format!(
        "/.well-known/cxone-configuration?tenantId={TENANT_ID}"
    ));
    let cxone = fetch_json(http.get(url)).await;
    assert_eq!(cxone["api_endpoint"], emu.base);
    assert_eq!(cxone["domain"], "127.0.0.1");
    assert!(cxone["area"].is_string());

    let other = http
        .get(emu.url("/.well-known/cxone-configuration?tenantId=someone-else"))
        .send()
        .await
        .unwrap();
    emulator::assert_error(other, 404, "tenant_not_found").await;
}

#[tokio::test]
async fn the_password_grant_returns_a_full_scope_token_and_an_id_token_with_the_tenant() {
    let emu = EmulatorProcess::spawn();
    let body = password_grant(&client(), &emu.base).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "datastore:read datastore:write");
    assert_eq!(body["expires_in"], 3600);
    let claims = jwt_claims(body["id_token"].as_str().unwrap());
    assert_eq!(claims["tenantId"], TENANT_ID);
    assert_eq!(claims["iss"], emu.base);
    assert_eq!(claims["sub"], ACCESS_KEY_ID);
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
}

#[tokio::test]
async fn the_client_credentials_grant_gives_the_scopes_asked_for() {
    let emu = EmulatorProcess::spawn();
    let response = client()
        .post(emu.url("/auth/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "datastore:read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["scope"], "datastore:read");
    assert!(body["access_token"].as_str().unwrap().len() >= 32);

    // Client credentials in the form body are accepted too (client_secret_post).
    let response = client()
        .post(emu.url("/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", "datastore:read datastore:write"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Form fields, Basic credentials, expected status and error code.
type Case = (
    &'static [(&'static str, &'static str)],
    Option<(&'static str, &'static str)>,
    u16,
    &'static str,
);

#[tokio::test]
async fn oauth_errors_follow_rfc_6749() {
    let emu = EmulatorProcess::spawn();
    let http = client();
    let cases: [Case; 6] = [
        (
            &[
                ("grant_type", "password"),
                ("username", "x"),
                ("password", "y"),
            ],
            Some((CLIENT_ID, CLIENT_SECRET)),
            400,
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "x"),
                ("password", "y"),
            ],
            Some((CLIENT_ID, "wrong")),
            401,
            "invalid_client",
        ),
        (
            &[("grant_type", "client_credentials")],
            None,
            401,
            "invalid_client",
        ),
        (
            &[("grant_type", "authorization_code")],
            Some((CLIENT_ID, CLIENT_SECRET)),
            400,
            "unsupported_grant_type",
        ),
        (
            &[("grant_type", "client_credentials"), ("scope", "admin")],
            Some((CLIENT_ID, CLIENT_SECRET)),
            400,
            "invalid_scope",
        ),
        // RFC 6749 §2.3: one client authentication method per request.
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ],
            Some((CLIENT_ID, CLIENT_SECRET)),
            400,
            "invalid_request",
        ),
    ];
    for (form, basic, status, code) in cases {
        let mut request = http.post(emu.url("/auth/token")).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.unwrap();
        let body = emulator::assert_error(response, status, code).await;
        assert!(body["error_description"].is_string(), "{form:?}");
    }
}

#[tokio::test]
async fn an_expired_token_gets_401_and_a_fresh_one_works() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([])).await;
    emu.set_faults(json!({"token_ttl_ms": 1000})).await;
    let token = emu.token().await;
    let schema_url = emu.url("/api/v2/datastores/ds/schema");
    let fresh = client()
        .get(&schema_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expired = client()
        .get(&schema_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(expired.headers().contains_key("www-authenticate"));
    emulator::assert_error(expired, 401, "invalid_token").await;

    let missing = client().get(&schema_url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
}

#[tokio::test]
async fn a_read_only_token_can_read_but_not_patch_or_delete() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([emulator::named_record("r1", "one")]))
        .await;
    let token = emu.token_with_scope("datastore:read").await;
    let http = client();
    let read = http
        .get(emu.record_url("ds", "r1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let patch = http
        .patch(emu.record_url("ds", "r1"))
        .bearer_auth(&token)
        .json(&json!({"fields": {"name": "x"}}))
        .send()
        .await
        .unwrap();
    emulator::assert_error(patch, 403, "insufficient_scope").await;
    let delete = http
        .delete(emu.record_url("ds", "r1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);

    let write_only = emu.token_with_scope("datastore:write").await;
    let read = http
        .get(emu.record_url("ds", "r1"))
        .bearer_auth(&write_only)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403);
}

/// SPEC §10: string settings keep their exact text from the environment. With `try_parsing` the
/// secret `00123` became the number 123, so the emulator accepted `123` and refused `00123`.
#[tokio::test]
async fn a_digit_only_secret_from_the_environment_is_taken_verbatim() {
    let emu = EmulatorProcess::spawn_with_env(&[], &[("CXREL__EMULATOR__CLIENT_SECRET", "00123")]);
    let grant = |secret: &'static str| {
        client()
            .post(emu.url("/auth/token"))
            .basic_auth(CLIENT_ID, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "datastore:read"),
            ])
            .send()
    };
    assert_eq!(grant("00123").await.unwrap().status(), 200);
    assert_eq!(grant("123").await.unwrap().status(), 401);
}
