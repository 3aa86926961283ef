//! The data-store emulator served inside this process, driven through its HTTP control API like
//! any other client would.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::emulator::{self, Emulator, RECORDS_PATH, Server};
use crate::settings::EmulatorSettings;

pub struct LocalEmulator {
    config: EmulatorSettings,
    server: Server,
    base: String,
    http: reqwest::Client,
}

impl LocalEmulator {
    /// Serves a fresh emulator on 127.0.0.1 (a free port).
    pub async fn start(config: &EmulatorSettings) -> anyhow::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server = emulator::serve(Emulator::new(config), addr)
            .await
            .context("start the emulator")?;
        let base = format!("http://{}", server.local_addr());
        Ok(Self {
            config: config.clone(),
            server,
            base,
            http: reqwest::Client::new(),
        })
    }

    /// `http://127.0.0.1:PORT`: the data-store API base and the token issuer.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Creates a data store from `{"id","schema":{"fields"},"records"}` (the seed file's shape).
    pub async fn create_datastore(&self, datastore: &Value) -> anyhow::Result<()> {
        self.send(self.http.post(self.url("/_emulator/datastores")), datastore)
            .await
            .map(drop)
    }

    /// Changes injected faults (absent keys keep their values).
    pub async fn set_faults(&self, faults: &Value) -> anyhow::Result<()> {
        self.send(self.http.put(self.url("/_emulator/faults")), faults)
            .await
            .map(drop)
    }

    /// Sets up webhook receiver `name` verifying with `secret`; returns its URL.
    pub async fn webhook_receiver(&self, name: &str, secret: &str) -> anyhow::Result<String> {
        let url = self.url(&format!("/_emulator/webhooks/{name}"));
        self.send(self.http.put(&url), &json!({ "secret": secret }))
            .await?;
        Ok(url)
    }

    /// Deliveries receiver `name` recorded (each with `verified`).
    pub async fn webhook_deliveries(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let url = self.url(&format!("/_emulator/webhooks/{name}"));
        let body = self.get(&url).await?;
        Ok(body["deliveries"].as_array().cloned().unwrap_or_default())
    }

    /// Request statistics (`GET /_emulator/stats`).
    pub async fn stats(&self) -> anyhow::Result<EmulatorStats> {
        let body = self.get(&self.url("/_emulator/stats")).await?;
        Ok(EmulatorStats::from_json(&body))
    }

    /// A record as the data-store API returns it.
    pub async fn record(&self, datastore: &str, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}{RECORDS_PATH}/{datastore}/records/{id}", self.base);
        let token = self.token().await?;
        let response = self.http.get(url).bearer_auth(token).send().await?;
        Ok(response.error_for_status()?.json().await?)
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    async fn token(&self) -> anyhow::Result<String> {
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "datastore:read"),
        ];
        let response = self
            .http
            .post(self.url("/auth/token"))
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.expose()),
            )
            .form(&form)
            .send()
            .await?;
        let body: Value = response.error_for_status()?.json().await?;
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("token answer without access_token")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        let response = self.http.get(url).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("emulator GET {url}: {status}");
        }
        Ok(response.json().await?)
    }

    async fn send(&self, request: reqwest::RequestBuilder, body: &Value) -> anyhow::Result<Value> {
        let response = request.json(body).send().await?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("emulator control call failed: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// The emulator's counters that reports use.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EmulatorStats {
    /// Requests to the record API (schema, list, get, PATCH, DELETE), any status.
    pub store_requests: u64,
    pub patch_count: u64,
    pub throttled_count: u64,
    pub token_count: u64,
    pub max_requests_in_1s: u64,
}

impl EmulatorStats {
    fn from_json(body: &Value) -> Self {
        let store_requests = body["requests"]
            .as_object()
            .map(|routes| {
                routes
                    .iter()
                    .filter(|(route, _)| route.contains(RECORDS_PATH))
                    .flat_map(|(_, statuses)| statuses.as_object().into_iter().flatten())
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let n = |key: &str| body[key].as_u64().unwrap_or(0);
        Self {
            store_requests,
            patch_count: n("patch_count"),
            throttled_count: n("throttled_count"),
            token_count: n("token_count"),
            max_requests_in_1s: n("max_requests_in_1s"),
        }
    }
}
