//! A real `cxrel emulator` process on a free port, plus small reqwest helpers for its auth
//! endpoints and control API.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Credentials the emulator accepts by default (`[emulator]` of config/default.toml).
pub const CLIENT_ID: &str = "cxrel-demo";
pub const CLIENT_SECRET: &str = "demo-client-secret";
pub const ACCESS_KEY_ID: &str = "demo-access-key";
pub const ACCESS_KEY_SECRET: &str = "demo-access-key-secret";
pub const TENANT_ID: &str = "11111111-2222-3333-4444-555555555555";

/// Path prefix of the record API the emulator serves.
pub const RECORDS_PATH: &str = "/api/v2/datastores";

/// A `cxrel emulator` child process listening on 127.0.0.1 with a free port; killed on drop.
pub struct EmulatorProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
}

impl EmulatorProcess {
    /// Starts an emulator with no data stores (no seed file).
    pub fn spawn() -> Self {
        Self::spawn_with_args(&[])
    }

    /// Starts an emulator loaded with the shipped sample data (config/emulator-seed.json).
    pub fn spawn_seeded() -> Self {
        let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/config/emulator-seed.json");
        Self::spawn_with_args(&["--seed", seed])
    }

    /// Starts an emulator with extra arguments after `emulator --listen 127.0.0.1:0`.
    pub fn spawn_with_args(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// As `spawn_with_args`, with extra environment variables (`CXREL__EMULATOR__…`).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxrel"))
            .args(["emulator", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("CXREL_ENV")
            .env("CXREL__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the cxrel binary");
        let Some(base) = super::listening_url(&mut child, "emulator") else {
            let _ = child.kill();
            panic!("cxrel emulator did not print its address within 30s");
        };
        Self { child, base }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `{base}/api/v2/datastores/{ds}/records`.
    pub fn records_url(&self, datastore: &str) -> String {
        format!("{}{RECORDS_PATH}/{datastore}/records", self.base)
    }

    /// `{base}/api/v2/datastores/{ds}/records/{id}`.
    pub fn record_url(&self, datastore: &str, id: &str) -> String {
        format!("{}{RECORDS_PATH}/{datastore}/records/{id}", self.base)
    }

    /// An access token with datastore:read and datastore:write (password grant, default keys).
    pub async fn token(&self) -> String {
        let body = password_grant(&client(), &self.base).await;
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// An access token with exactly `scope` (client-credentials grant).
    pub async fn token_with_scope(&self, scope: &str) -> String {
        let response = client()
            .post(self.url("/auth/token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), 200, "client_credentials grant");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Creates data store `id` with `fields` (schema field list) and `records`; panics unless 201.
    pub async fn create_datastore(&self, id: &str, fields: Value, records: Value) {
        let body = json!({"id": id, "schema": {"fields": fields}, "records": records});
        let response = self.control_post("/_emulator/datastores", &body).await;
        assert_eq!(response.status(), 201, "create data store {id}");
    }

    /// Creates data store `id` with the usual test schema (see `test_schema`) and `records`.
    pub async fn create_test_datastore(&self, id: &str, records: Value) {
        self.create_datastore(id, test_schema(), records).await;
    }

    /// Deletes data store `id` (`DELETE /_emulator/datastores/{id}`); panics unless 204.
    pub async fn delete_datastore(&self, id: &str) {
        let response = client()
            .delete(self.url(&format!("/_emulator/datastores/{id}")))
            .send()
            .await
            .expect("control request");
        assert_eq!(response.status(), 204, "delete data store {id}");
    }

    /// Adds `records` to data store `datastore` behind whatever reads it; panics unless 200.
    pub async fn add_records(&self, datastore: &str, records: Value) {
        let path = format!("/_emulator/datastores/{datastore}/records");
        let response = self.control_post(&path, &json!({"records": records})).await;
        assert_eq!(response.status(), 200, "add records to {datastore}");
    }

    /// Sets faults (`PUT /_emulator/faults`; absent keys keep their values); panics unless 200.
    pub async fn set_faults(&self, faults: Value) -> Value {
        let response = client()
            .put(self.url("/_emulator/faults"))
            .json(&faults)
            .send()
            .await
            .expect("faults request");
        assert_eq!(response.status(), 200, "set faults {faults}");
        response.json().await.expect("faults JSON")
    }

    /// `GET /_emulator/stats`.
    pub async fn stats(&self) -> Value {
        fetch_json(client().get(self.url("/_emulator/stats"))).await
    }

    /// Makes PATCH and DELETE of a record answer 409 (`unlock_record` undoes it).
    pub async fn lock_record(&self, datastore: &str, id: &str) {
        let path = format!("/_emulator/records/{datastore}/{id}/lock");
        let response = self.control_post(&path, &json!({})).await;
        assert_eq!(response.status(), 200, "lock {datastore}/{id}");
    }

    pub async fn unlock_record(&self, datastore: &str, id: &str) {
        let path = format!("/_emulator/records/{datastore}/{id}/unlock");
        let response = self.control_post(&path, &json!({})).await;
        assert_eq!(response.status(), 200, "unlock {datastore}/{id}");
    }

    /// Sets up webhook receiver `name` at `{base}/_emulator/webhooks/{name}`, verifying
    /// signatures with `secret` (`whsec_…`); returns the URL to deliver to.
    pub async fn webhook_receiver(&self, name: &str, secret: &str) -> String {
        self.configure_webhook_receiver(name, json!({"secret": secret}))
            .await
    }

    /// Sets up webhook receiver `name` with the emulator's receiver settings (`secret`, `status`,
    /// `delay_ms`, `retry_after`); returns the URL to deliver to.
    pub async fn configure_webhook_receiver(&self, name: &str, config: Value) -> String {
        let url = self.url(&format!("/_emulator/webhooks/{name}"));
        let response = client()
            .put(&url)
            .json(&config)
            .send()
            .await
            .expect("configure webhook receiver");
        assert_eq!(response.status(), 200, "configure webhook receiver {name}");
        url
    }

    /// The deliveries receiver `name` recorded, once there are `count` of them (or after 10 s).
    pub async fn webhook_deliveries_at_least(&self, name: &str, count: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let deliveries = self.webhook_deliveries(name).await;
            if deliveries.len() >= count || std::time::Instant::now() > deadline {
                return deliveries;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The deliveries receiver `name` recorded, oldest first (each with `headers`, `body`,
    /// `json`, `verified`, `reason`); empty if it has none.
    pub async fn webhook_deliveries(&self, name: &str) -> Vec<Value> {
        let response = client()
            .get(self.url(&format!("/_emulator/webhooks/{name}")))
            .send()
            .await
            .expect("webhook deliveries");
        if response.status() == 404 {
            return Vec::new();
        }
        let body: Value = response.json().await.expect("deliveries JSON");
        body["deliveries"].as_array().cloned().unwrap_or_default()
    }

    /// POSTs JSON to a control path and returns the response.
    pub async fn control_post(&self, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("control request")
    }

    /// GETs one record with a fresh full-scope token; returns (status, body).
    pub async fn get_record(&self, datastore: &str, id: &str) -> (u16, Value) {
        let token = self.token().await;
        let response = client()
            .get(self.record_url(datastore, id))
            .bearer_auth(token)
            .send()
            .await
            .expect("get record");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// DELETEs one record with a fresh full-scope token; returns the status.
    pub async fn delete_record(&self, datastore: &str, id: &str) -> u16 {
        let token = self.token().await;
        let response = client()
            .delete(self.record_url(datastore, id))
            .bearer_auth(token)
            .send()
            .await
            .expect("delete record");
        response.status().as_u16()
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client with a short timeout, so a hung emulator fails the test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

/// Sends `request` and returns its JSON body, whatever the status.
pub async fn fetch_json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("send request");
    response.json().await.expect("JSON body")
}

/// Asserts that `response` has `status` and an error body whose `error` is `code`; returns the
/// body (for checks of `error_description`).
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let got = response.status();
    let url = response.url().clone();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{url}: {body}");
    assert_eq!(body["error"], code, "{url}: {body}");
    body
}

/// Password grant with the default access key; returns the token response JSON (panics unless 200).
pub async fn password_grant(client: &reqwest::Client, base: &str) -> Value {
    let response = client
        .post(format!("{base}/auth/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "password"),
            ("username", ACCESS_KEY_ID),
            ("password", ACCESS_KEY_SECRET),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200, "password grant");
    response.json().await.expect("token JSON")
}

/// A schema field list: `name` (string), `parent_child_link` (relationship, max_depth 5, acyclic)
/// and `owner_link` (relationship, unique_parent, acyclic).
pub fn test_schema() -> Value {
    json!([
        {"name": "name", "type": "string"},
        {"name": "parent_child_link", "type": "relationship",
         "constraints": {"max_depth": 5, "acyclic": true}},
        {"name": "owner_link", "type": "relationship",
         "constraints": {"unique_parent": true, "acyclic": true}}
    ])
}

/// A record with only a name, as the control API and the seed file take it.
pub fn named_record(id: &str, name: &str) -> Value {
    json!({"id": id, "fields": {"name": name}})
}
