//! The settings of a worker the tools start themselves (`cxrel demo`, `cxrel bench`, the
//! integration tests), as one typed builder: what differs from `config/default.toml`, rendered as
//! the TOML layer a worker process reads with `--config` ([`WorkerConfig::to_toml`]) or loaded into
//! [`Settings`] for a worker built in this process ([`WorkerConfig::settings`], then
//! [`crate::worker::build`]).
//!
//! Secrets stay out of it (the broker URL, the data-store credentials, a Redis URL with a
//! password): they reach a worker process through its environment
//! ([`super::workers::worker_env`]). Webhook secrets are the exception, `[[webhooks]]` having no
//! environment form; the harness writes the file readable by its owner only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::settings::{RateLimitBackend, Settings, SettingsError, Sources};

/// A worker's settings over the compiled-in defaults; every key not set keeps its default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    layer: Layer,
}

/// One outgoing webhook (`[[webhooks]]`).
#[derive(Clone, Serialize)]
pub struct WebhookTarget {
    pub url: String,
    /// `whsec_…`.
    pub secret: String,
    /// Event types delivered; empty = all.
    pub events: Vec<String>,
}

impl WebhookTarget {
    /// A webhook receiving every event type.
    pub fn all_events(url: &str, secret: &str) -> Self {
        Self {
            url: url.to_owned(),
            secret: secret.to_owned(),
            events: Vec::new(),
        }
    }
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &crate::secret::redact_webhook_url(&self.url))
            .field("secret", &"***")
            .field("events", &self.events)
            .finish()
    }
}

impl WorkerConfig {
    /// A worker on the queues of `prefix`, with the data store and the token issuer at `emulator`
    /// (a base URL), serving `/healthz`, `/readyz` and `/metrics` on a free port of 127.0.0.1.
    pub fn new(prefix: &str, emulator: &str) -> Self {
        let mut layer = Layer::default();
        layer.amqp.prefix = Some(prefix.to_owned());
        layer.cxone.api_base = Some(emulator.to_owned());
        layer.cxone.auth.issuer = Some(emulator.to_owned());
        layer.http.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        Self { layer }
    }

    /// `[log].level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.layer.log.level = Some(level.to_owned());
        self
    }

    /// `[cxone].schema_ttl`: how long a data store's schema is trusted before it is read again.
    pub fn schema_ttl(mut self, ttl: Duration) -> Self {
        self.layer.cxone.schema_ttl = Some(ttl);
        self
    }

    /// `[amqp].retry_delays`: the hold queues a transient failure goes through.
    pub fn retry_delays(mut self, delays: &[Duration]) -> Self {
        self.layer.amqp.retry_delays = Some(delays.to_vec());
        self
    }

    /// `[amqp].delivery_limit`.
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.layer.amqp.delivery_limit = Some(limit);
        self
    }

    /// `[amqp].confirm_timeout`.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.layer.amqp.confirm_timeout = Some(timeout);
        self
    }

    /// `[worker].shutdown_timeout`: how long in-flight jobs may finish after a stop.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.layer.worker.shutdown_timeout = Some(timeout);
        self
    }

    /// `[worker].instance`.
    pub fn instance(mut self, name: &str) -> Self {
        self.layer.worker.instance = Some(name.to_owned());
        self
    }

    /// `[worker].parallel_patches`.
    pub fn parallel_patches(mut self, parallel: usize) -> Self {
        self.layer.worker.parallel_patches = Some(parallel);
        self
    }

    /// `[rate_limit].requests_per_second` and `burst`: the budget of the whole tenant
    /// (0 requests/s = not configured, discovered).
    pub fn rate(mut self, requests_per_second: u32, burst: u32) -> Self {
        self.layer.rate_limit.requests_per_second = Some(requests_per_second);
        self.layer.rate_limit.burst = Some(burst);
        self
    }

    /// `[rate_limit].backend` and `replicas_hint` (the local share when Redis is out of reach).
    pub fn rate_backend(mut self, backend: RateLimitBackend, replicas_hint: u32) -> Self {
        self.layer.rate_limit.backend = Some(backend);
        self.layer.rate_limit.replicas_hint = Some(replicas_hint);
        self
    }

    /// `[rate_limit].redis_key` (empty = derived from the prefix).
    pub fn redis_key(mut self, key: &str) -> Self {
        self.layer.rate_limit.redis_key = Some(key.to_owned());
        self
    }

    /// `[rate_limit].redis_url`, for a Redis without a password only (it is a secret otherwise:
    /// pass it as `CXREL__RATE_LIMIT__REDIS_URL`).
    pub fn redis_url(mut self, url: &str) -> Self {
        self.layer.rate_limit.redis_url = Some(url.to_owned());
        self
    }

    /// `[retry]`: attempts of one data-store request in the client, and their backoff.
    pub fn store_retry(
        mut self,
        max_attempts: u32,
        backoff: std::ops::RangeInclusive<Duration>,
        max_elapsed: Duration,
    ) -> Self {
        let retry = &mut self.layer.retry;
        retry.max_attempts = Some(max_attempts);
        retry.min_backoff = Some(*backoff.start());
        retry.max_backoff = Some(*backoff.end());
        retry.max_elapsed = Some(max_elapsed);
        self
    }

    /// Adds a `[[webhooks]]` entry.
    pub fn webhook(mut self, target: WebhookTarget) -> Self {
        self.layer.webhooks.push(target);
        self
    }

    /// `[webhook_delivery].queue_capacity`.
    pub fn webhook_queue_capacity(mut self, capacity: usize) -> Self {
        self.layer.webhook_delivery.queue_capacity = Some(capacity);
        self
    }

    /// `[webhook_delivery].concurrency` (deliveries in flight per endpoint).
    pub fn webhook_concurrency(mut self, concurrency: usize) -> Self {
        self.layer.webhook_delivery.concurrency = Some(concurrency);
        self
    }

    /// `[webhook_delivery].max_attempts`, `min_backoff` and `max_backoff`.
    pub fn webhook_retries(
        mut self,
        max_attempts: u32,
        backoff: std::ops::RangeInclusive<Duration>,
    ) -> Self {
        let delivery = &mut self.layer.webhook_delivery;
        delivery.max_attempts = Some(max_attempts);
        delivery.min_backoff = Some(*backoff.start());
        delivery.max_backoff = Some(*backoff.end());
        self
    }

    /// The queue prefix.
    pub fn prefix(&self) -> &str {
        self.layer.amqp.prefix.as_deref().unwrap_or_default()
    }

    /// The TOML layer a worker process reads with `--config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.layer).expect("strings, numbers and lists always render as TOML")
    }

    /// The settings a worker process given [`to_toml`](Self::to_toml) would load, with `env` as
    /// its `CXREL__…` environment (an in-process worker reads none of this process's).
    pub fn settings(&self, env: HashMap<String, String>) -> Result<Settings, SettingsError> {
        let sources = Sources {
            text: Some(self.to_toml()),
            ..Sources::default()
        };
        Settings::load_with_env(&sources, Some(env))
    }
}

/// The keys set, by section, as `config/default.toml` names them; `None` is left out.
#[derive(Debug, Clone, Default, Serialize)]
struct Layer {
    log: LogKeys,
    amqp: AmqpKeys,
    cxone: CxoneKeys,
    http: HttpKeys,
    worker: WorkerKeys,
    rate_limit: RateLimitKeys,
    retry: RetryKeys,
    webhook_delivery: WebhookDeliveryKeys,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    webhooks: Vec<WebhookTarget>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct LogKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct AmqpKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "human_durations"
    )]
    retry_delays: Option<Vec<Duration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    confirm_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct CxoneKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    api_base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    schema_ttl: Option<Duration>,
    auth: AuthKeys,
}

#[derive(Debug, Clone, Default, Serialize)]
struct AuthKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct HttpKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct WorkerKeys {
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_patches: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct RateLimitKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<RateLimitBackend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas_hint: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct RetryKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    min_backoff: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    max_backoff: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    max_elapsed: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct WebhookDeliveryKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_capacity: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    min_backoff: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    max_backoff: Option<Duration>,
}

/// A list of durations as the settings read them: `["200ms", "1s"]`.
fn human_durations<S: Serializer>(
    delays: &Option<Vec<Duration>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let texts: Option<Vec<String>> = delays.as_ref().map(|delays| {
        delays
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect()
    });
    texts.serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> WorkerConfig {
        WorkerConfig::new("test-x", "http://127.0.0.1:9")
            .log_level("warn")
            .retry_delays(&[Duration::from_millis(200), Duration::from_secs(1)])
            .delivery_limit(4)
            .confirm_timeout(Duration::from_secs(1))
            .shutdown_timeout(Duration::from_secs(10))
            .instance("test-x-1")
            .parallel_patches(2)
            .rate(60, 5)
            .rate_backend(RateLimitBackend::Redis, 3)
            .redis_key("k")
            .redis_url("redis://127.0.0.1:1")
            .store_retry(
                4,
                Duration::from_millis(20)..=Duration::from_millis(500),
                Duration::from_secs(10),
            )
            .webhook(WebhookTarget {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                events: vec!["cxrel.job.completed".into()],
            })
            .webhook_queue_capacity(8)
            .webhook_retries(2, Duration::from_millis(20)..=Duration::from_millis(50))
    }

    #[test]
    fn every_key_set_reaches_the_settings() {
        let s = full().settings(HashMap::new()).unwrap();
        assert_eq!(s.log.level, "warn");
        assert_eq!(s.amqp.prefix, "test-x");
        assert_eq!(
            s.amqp.retry_delays,
            [Duration::from_millis(200), Duration::from_secs(1)]
        );
        assert_eq!(s.amqp.delivery_limit, 4);
        assert_eq!(s.amqp.confirm_timeout, Duration::from_secs(1));
        assert_eq!(s.cxone.api_base, "http://127.0.0.1:9");
        assert_eq!(s.cxone.auth.issuer, "http://127.0.0.1:9");
        assert_eq!(s.http.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(s.worker.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.worker.instance, "test-x-1");
        assert_eq!(s.worker.parallel_patches, 2);
        assert_eq!(s.rate_limit.backend, RateLimitBackend::Redis);
        assert_eq!(
            (s.rate_limit.requests_per_second, s.rate_limit.burst),
            (60, 5)
        );
        assert_eq!(s.rate_limit.replicas_hint, 3);
        assert_eq!(s.rate_limit.redis_key, "k");
        assert_eq!(s.rate_limit.redis_url.expose(), "redis://127.0.0.1:1");
        assert_eq!(s.retry.max_attempts, 4);
        assert_eq!(s.retry.min_backoff, Duration::from_millis(20));
        assert_eq!(s.retry.max_backoff, Duration::from_millis(500));
        assert_eq!(s.retry.max_elapsed, Duration::from_secs(10));
        assert_eq!(s.webhook_delivery.queue_capacity, 8);
        assert_eq!(s.webhook_delivery.max_attempts, 2);
        assert_eq!(s.webhook_delivery.max_backoff, Duration::from_millis(50));
        assert_eq!(s.webhooks.len(), 1);
        assert_eq!(s.webhooks[0].events, ["cxrel.job.completed"]);
    }

    #[test]
    fn keys_not_set_keep_their_defaults() {
        let defaults = Settings::load_with_env(&Sources::default(), Some(HashMap::new())).unwrap();
        let config = WorkerConfig::new("test-y", "http://127.0.0.1:9");
        let s = config.settings(HashMap::new()).unwrap();
        assert_eq!(s.amqp.retry_delays, defaults.amqp.retry_delays);
        assert_eq!(s.rate_limit.requests_per_second, 100);
        assert_eq!(s.worker.parallel_patches, defaults.worker.parallel_patches);
        assert!(s.webhooks.is_empty());
        assert!(!config.to_toml().contains("[[webhooks]]"));
    }

    #[test]
    fn the_debug_form_hides_webhook_secrets() {
        let shown = format!("{:?}", full());
        assert!(!shown.contains("whsec_"), "{shown}");
    }
}
