//! Typed settings, loaded once at start (SPEC §8): compiled-in `config/default.toml` and the file
//! itself where the process runs (if present), then `config/{CXREL_ENV}.toml`, then
//! `--config FILE`, then `CXREL__SECTION__KEY` environment variables.
//! Unknown keys and bad values fail at start with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::events::EventType;
use crate::secret::Secret;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub log: LogSettings,
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub cxone: CxoneSettings,
    pub rate_limit: RateLimitSettings,
    pub retry: RetrySettings,
    pub graph: GraphSettings,
    pub validation: ValidationSettings,
    pub limits: LimitSettings,
    pub http: HttpSettings,
    pub emulator: EmulatorSettings,
    pub webhooks: Vec<WebhookSettings>,
    pub webhook_delivery: WebhookDeliverySettings,
    pub console: ConsoleSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Holds the broker password, hence a secret; log it with `secret::redact_url`.
    pub url: Secret,
    pub prefix: String,
    #[serde(deserialize_with = "durations")]
    pub retry_delays: Vec<Duration>,
    /// Deliveries of one job message without it being settled (the worker died or lost its
    /// connection each time) before it is dead-lettered (`x-delivery-limit` of the jobs queue).
    pub delivery_limit: u32,
    /// Longest wait for the broker to confirm one publish (a broker under a memory or disk alarm
    /// blocks publishers).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub prefetch: u16,
    pub max_in_flight: usize,
    pub parallel_patches: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub instance: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CxoneSettings {
    pub api_base: String,
    pub records_path: String,
    pub default_datastore: String,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub page_size: u32,
    #[serde(with = "humantime_serde")]
    pub schema_ttl: Duration,
    pub max_response_bytes: usize,
    pub auth: AuthSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Cxone,
    ClientCredentials,
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1; one method per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_secret_basic` in mode `cxone` (CXone's way), `client_secret_post` in mode
    /// `client_credentials` (the tutorial's way).
    Auto,
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` form fields.
    ClientSecretPost,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub client_auth: ClientAuth,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub token_url: String,
    pub scope: String,
    #[serde(with = "humantime_serde")]
    pub refresh_before: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub backend: RateLimitBackend,
    /// Ceiling of the adaptive budget; 0 = not configured (discover the limit).
    pub requests_per_second: u32,
    pub burst: u32,
    pub redis_url: Secret,
    /// Hash holding the shared budget; empty = `{amqp.prefix}:rate_budget:{data-store API}`.
    pub redis_key: String,
    pub replicas_hint: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSettings {
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdFormat {
    Uuid,
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSettings {
    pub id_format: IdFormat,
    pub default_max_depth: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_operations_per_job: usize,
    pub max_children_per_operation: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorSettings {
    pub listen: SocketAddr,
    pub seed: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub access_key_id: String,
    pub access_key_secret: Secret,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    pub max_body_bytes: usize,
    pub control_max_body_bytes: usize,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Often carries a token (in the path or the query): shown through `redact_webhook_url`.
    pub url: String,
    pub secret: Secret,
    #[serde(default)]
    pub events: Vec<String>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &crate::secret::redact_webhook_url(&self.url))
            .field("secret", &self.secret)
            .field("events", &self.events)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeliverySettings {
    pub queue_capacity: usize,
    pub concurrency: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// `cxrel console`, the dead-letter page and API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    /// Empty = read-only console. Never logged.
    pub token: Secret,
    /// Highest replay rate (messages per second), also used when a request names none.
    pub replay_rate: f64,
    /// Longest a read of the dead queue is reused while its depth stays the same.
    #[serde(with = "humantime_serde")]
    pub rescan: Duration,
}

/// Why settings could not be loaded; the message names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {path}: {source}")]
    File {
        path: PathBuf,
        source: config::ConfigError,
    },
    /// The `config` crate's error with any value it quotes blanked: a value of the wrong type
    /// may be a secret (a `CXREL__WEBHOOKS` variable holding a webhook secret, say).
    #[error("invalid configuration: {}", redact_quoted(&.0.to_string()))]
    Invalid(#[from] config::ConfigError),
    #[error("invalid configuration: {key}: {reason}")]
    Check { key: &'static str, reason: String },
}

/// Where the layers above the compiled-in defaults come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Value of `CXREL_ENV`: selects `config/{env}.toml` when that file exists.
    pub env_name: Option<String>,
    /// Directory holding `default.toml` and `{env}.toml`; `config` relative to the working
    /// directory by default.
    pub config_dir: Option<PathBuf>,
    /// `--config FILE`: must exist.
    pub file: Option<PathBuf>,
    /// A layer of TOML text above `file`: settings generated by a program rather than read from
    /// a file (an in-process worker of the harness or the tests, `harness::config`).
    pub text: Option<String>,
}

impl Settings {
    /// Loads the layers in SPEC §8 order, with `CXREL__…` variables from the process environment.
    pub fn load(sources: &Sources) -> Result<Self, SettingsError> {
        Self::load_with_env(sources, None)
    }

    /// As `load`, but with the environment given explicitly (tests) instead of the process's.
    pub fn load_with_env(
        sources: &Sources,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, SettingsError> {
        let dir = sources
            .config_dir
            .clone()
            .unwrap_or_else(|| "config".into());
        // The compiled-in defaults, then the file on disk when there is one: an operator who edits
        // `config/default.toml` where the binary runs is not silently ignored (SPEC §8).
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(
                File::from(dir.join("default.toml"))
                    .format(FileFormat::Toml)
                    .required(false),
            );
        if let Some(name) = sources.env_name.as_deref().filter(|n| !n.is_empty()) {
            // Named on purpose, so a missing file is a typo in CXREL_ENV, not an optional layer.
            let path = dir.join(format!("{name}.toml"));
            if !path.is_file() {
                return Err(SettingsError::Check {
                    key: "CXREL_ENV",
                    reason: format!(
                        "{name:?} selects {}, which does not exist (unset CXREL_ENV or create the file)",
                        path.display()
                    ),
                });
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        if let Some(path) = &sources.file {
            check_readable(path)?;
            // Settings files are TOML whatever their name (`--config /etc/cxrel/worker.conf`).
            builder = builder.add_source(
                File::from(path.as_path())
                    .format(FileFormat::Toml)
                    .required(true),
            );
        }
        if let Some(text) = &sources.text {
            builder = builder.add_source(File::from_str(text, FileFormat::Toml));
        }
        // No `try_parsing`: it would turn every digit-only value into a number, so a secret such as
        // `00123` would arrive as `123` (SPEC §10). Values stay strings; the `config` deserializer
        // parses them where the field's type is a number or a boolean, and lists are split by the
        // field's own deserializer (`durations`).
        let environment = Environment::with_prefix("CXREL")
            .prefix_separator("__")
            .separator("__")
            .source(env);
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.check()?;
        Ok(settings)
    }

    /// Cross-field rules the types cannot express.
    fn check(&self) -> Result<(), SettingsError> {
        let fail = |key, reason: &str| {
            Err(SettingsError::Check {
                key,
                reason: reason.to_owned(),
            })
        };
        // Checked here, never echoed: lapin's error for a URL it cannot read quotes it whole,
        // password included (`user:pass@host` without a scheme).
        let amqp_url = url::Url::parse(self.amqp.url.expose());
        if !amqp_url.is_ok_and(|u| matches!(u.scheme(), "amqp" | "amqps")) {
            return fail(
                "amqp.url",
                "needs an amqp:// or amqps:// URL (amqp://user:password@host:5672/%2f)",
            );
        }
        if self.amqp.retry_delays.is_empty() {
            return fail("amqp.retry_delays", "needs at least one delay");
        }
        if self.amqp.prefix.is_empty() {
            return fail("amqp.prefix", "must not be empty");
        }
        if self.worker.prefetch == 0 || self.worker.max_in_flight == 0 {
            return fail("worker.prefetch", "prefetch and max_in_flight must be ≥ 1");
        }
        if !is_log_filter(&self.log.level) {
            return fail(
                "log.level",
                "one of trace, debug, info, warn, error, off, or target=level pairs separated by commas",
            );
        }
        if self.worker.parallel_patches == 0 {
            return fail("worker.parallel_patches", "must be ≥ 1");
        }
        if self.rate_limit.burst == 0 {
            return fail("rate_limit.burst", "must be ≥ 1");
        }
        if self.rate_limit.replicas_hint == 0 {
            return fail("rate_limit.replicas_hint", "must be ≥ 1");
        }
        if self.retry.max_attempts == 0 {
            return fail("retry.max_attempts", "must be ≥ 1");
        }
        let delivery = &self.webhook_delivery;
        if delivery.queue_capacity == 0 || delivery.concurrency == 0 || delivery.max_attempts == 0 {
            return fail(
                "webhook_delivery",
                "queue_capacity, concurrency and max_attempts must be ≥ 1",
            );
        }
        if self.cxone.max_response_bytes == 0 {
            return fail("cxone.max_response_bytes", "must be ≥ 1");
        }
        let rate = self.console.replay_rate;
        if !rate.is_finite() || rate <= 0.0 {
            return fail("console.replay_rate", "must be > 0");
        }
        if self.cxone.page_size == 0 {
            return fail("cxone.page_size", "must be ≥ 1");
        }
        if self.cxone.api_base.is_empty() && self.cxone.auth.mode != AuthMode::Cxone {
            return fail(
                "cxone.api_base",
                "may only be empty in auth mode \"cxone\" (discovered from the tenant)",
            );
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            check_webhook(i, hook)?;
        }
        self.limits.check()?;
        check_instance(&self.worker.instance)
    }
}

impl LimitSettings {
    /// A limit of 0 would reject every job while the worker looked healthy.
    fn check(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            ("limits.max_body_bytes", self.max_body_bytes),
            ("limits.max_operations_per_job", self.max_operations_per_job),
            (
                "limits.max_children_per_operation",
                self.max_children_per_operation,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::Check {
                    key,
                    reason: "must be ≥ 1 (0 would reject every job)".to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// The instance name is the authority of every event's `source` (`cxrel://{instance}`), which
/// CloudEvents wants a URI-reference: host-name characters only, as a pod or host name has.
fn check_instance(instance: &str) -> Result<(), SettingsError> {
    let valid = instance.len() <= 255
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
    if valid {
        return Ok(());
    }
    Err(SettingsError::Check {
        key: "worker.instance",
        reason: "use at most 255 letters, digits, '.', '_', '~' or '-' (it becomes the events' source, cxrel://{instance})".to_owned(),
    })
}

/// Whether `text` is a level or a list of `target=level` / level directives. `EnvFilter` itself
/// takes "warning" as a target name and then logs nothing at all.
fn is_log_filter(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !text.trim().is_empty()
        && text.split(',').all(|part| match part.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(part),
        })
}

/// `text` with the value of serde's "invalid type: string \"…\", expected …" blanked.
fn redact_quoted(text: &str) -> String {
    const START: &str = "invalid type: string \"";
    const END: &str = "\", expected";
    let Some(start) = text.find(START).map(|i| i + START.len()) else {
        return text.to_owned();
    };
    match text[start..].rfind(END) {
        Some(len) => format!("{}***{}", &text[..start], &text[start + len..]),
        None => format!("{}***", &text[..start]),
    }
}

/// A webhook's URL is http(s) with a host, and its `events` filter names event types cxrel
/// publishes (a filter of `relationship.applied`, without the `cxrel.` prefix, would silently
/// match nothing). Messages name the webhook by position, never by URL (it may carry a token).
fn check_webhook(index: usize, hook: &WebhookSettings) -> Result<(), SettingsError> {
    // The url crate reads `http:///path` as host "path"; a typo like that must not pass.
    let empty_authority = hook
        .url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.starts_with('/'));
    let url_ok = !empty_authority
        && url::Url::parse(&hook.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !url_ok {
        return Err(SettingsError::Check {
            key: "webhooks.url",
            reason: format!(
                "webhook #{} needs an http:// or https:// URL with a host",
                index + 1
            ),
        });
    }
    if crate::webhooks::signing::SigningKey::from_secret(hook.secret.expose()).is_err() {
        return Err(SettingsError::Check {
            key: "webhooks.secret",
            reason: format!(
                "webhook #{}: the secret must be \"whsec_\" followed by base64 (Standard Webhooks)",
                index + 1
            ),
        });
    }
    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    if let Some(unknown) = hook.events.iter().find(|e| !known.contains(&e.as_str())) {
        return Err(SettingsError::Check {
            key: "webhooks.events",
            reason: format!(
                "webhook #{}: {unknown:?} is no event type (known: {})",
                index + 1,
                known.join(", ")
            ),
        });
    }
    Ok(())
}

/// A list of human-readable durations: a list (`["1s", "2m"]`, files) or one comma-separated
/// string (`1s,2m`, environment variables).
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    let items = match ListOrText::deserialize(d)? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            humantime::parse_duration(s.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "delay #{} {:?} is no duration such as 500ms, 5s or 2m ({e})",
                    i + 1,
                    s.trim()
                ))
            })
        })
        .collect()
}

fn check_readable(path: &Path) -> Result<(), SettingsError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| SettingsError::File {
            path: path.to_owned(),
            source: config::ConfigError::Message(e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(&Sources::default(), Some(env))
    }

    #[test]
    fn compiled_in_defaults_load_without_any_file() {
        let s = load_env(&[]).expect("defaults load");
        assert_eq!(s.amqp.prefix, "cxrel");
        assert_eq!(s.amqp.retry_delays.len(), 5);
        assert_eq!(s.rate_limit.requests_per_second, 100);
        assert_eq!(s.cxone.auth.mode, AuthMode::Cxone);
    }

    #[test]
    fn a_bad_retry_delay_is_named_by_its_position_and_text() {
        let err = load_env(&[("CXREL__AMQP__RETRY_DELAYS", "1s,xx")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("delay #2 \"xx\""), "{err}");
        assert!(err.contains("amqp.retry_delays"), "{err}");
    }

    #[test]
    fn a_job_limit_of_zero_stops_the_start_naming_the_key() {
        for key in [
            "MAX_BODY_BYTES",
            "MAX_OPERATIONS_PER_JOB",
            "MAX_CHILDREN_PER_OPERATION",
        ] {
            let var = format!("CXREL__LIMITS__{key}");
            let err = load_env(&[(var.as_str(), "0")]).unwrap_err().to_string();
            assert!(err.contains(&key.to_lowercase()), "{err}");
        }
    }

    #[test]
    fn an_instance_name_that_is_no_uri_authority_stops_the_start() {
        for bad in ["my worker", "w#1", "a/b", "é", &"x".repeat(256)] {
            let err = load_env(&[("CXREL__WORKER__INSTANCE", bad)]).unwrap_err();
            assert!(err.to_string().contains("worker.instance"), "{bad}: {err}");
        }
        for good in ["", "cxrel-7f9c4-x2k", "host.example_1~a"] {
            assert!(
                load_env(&[("CXREL__WORKER__INSTANCE", good)]).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn environment_variables_override_nested_keys() {
        let s = load_env(&[
            ("CXREL__RATE_LIMIT__REQUESTS_PER_SECOND", "42"),
            ("CXREL__CXONE__AUTH__MODE", "client_credentials"),
            ("CXREL__AMQP__RETRY_DELAYS", "1s,2s"),
        ])
        .expect("loads");
        assert_eq!(s.rate_limit.requests_per_second, 42);
        assert_eq!(s.cxone.auth.mode, AuthMode::ClientCredentials);
        assert_eq!(
            s.amqp.retry_delays,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
    }

    #[test]
    fn string_settings_keep_their_exact_text_from_the_environment() {
        let s = load_env(&[
            ("CXREL__EMULATOR__CLIENT_SECRET", "00123"),
            ("CXREL__CXONE__AUTH__CLIENT_ID", "12345678901234567890123"),
            ("CXREL__CXONE__AUTH__ACCESS_KEY_ID", "1e5"),
            ("CXREL__CXONE__DEFAULT_DATASTORE", "true"),
            ("CXREL__AMQP__PREFIX", "007"),
        ])
        .expect("loads");
        assert_eq!(s.emulator.client_secret.expose(), "00123");
        assert_eq!(s.cxone.auth.client_id, "12345678901234567890123");
        assert_eq!(s.cxone.auth.access_key_id, "1e5");
        assert_eq!(s.cxone.default_datastore, "true");
        assert_eq!(s.amqp.prefix, "007");
    }

    #[test]
    fn numbers_and_booleans_still_parse_from_environment_text() {
        let s = load_env(&[
            ("CXREL__WORKER__PREFETCH", "064"),
            ("CXREL__LIMITS__MAX_BODY_BYTES", "2048"),
            ("CXREL__AMQP__RETRY_DELAYS", "250ms"),
        ])
        .expect("loads");
        assert_eq!(s.worker.prefetch, 64);
        assert_eq!(s.limits.max_body_bytes, 2048);
        assert_eq!(s.amqp.retry_delays, vec![Duration::from_millis(250)]);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load_env(&[("CXREL__RATE_LIMIT__REQUESTS_PER_SECOND", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rate_limit.requests_per_second"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load_env(&[("CXREL__AMQP__PREFIXX", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefixx"), "{err}");
    }

    #[test]
    fn a_config_file_overrides_defaults_and_env_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.toml");
        std::fs::write(
            &path,
            "[amqp]\nprefix = \"fromfile\"\n[worker]\nprefetch = 7\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(path),
            ..Sources::default()
        };
        let env = HashMap::from([("CXREL__WORKER__PREFETCH".to_owned(), "9".to_owned())]);
        let s = Settings::load_with_env(&sources, Some(env)).unwrap();
        assert_eq!(s.amqp.prefix, "fromfile");
        assert_eq!(s.worker.prefetch, 9);
    }

    #[test]
    fn an_edited_default_toml_on_disk_wins_over_the_compiled_in_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), "[worker]\nprefetch = 7\n").unwrap();
        std::fs::write(dir.path().join("prod.toml"), "[amqp]\nprefix = \"p\"\n").unwrap();
        let sources = Sources {
            env_name: Some("prod".into()),
            config_dir: Some(dir.path().to_owned()),
            ..Sources::default()
        };
        let s = Settings::load_with_env(&sources, Some(HashMap::new())).unwrap();
        assert_eq!((s.worker.prefetch, s.amqp.prefix.as_str()), (7, "p"));
    }

    #[test]
    fn a_missing_config_file_is_an_error_naming_the_path() {
        let sources = Sources {
            file: Some("/nonexistent/cxrel.toml".into()),
            ..Sources::default()
        };
        let err = Settings::load_with_env(&sources, Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/cxrel.toml"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = load_env(&[]).unwrap();
        let dump = format!("{s:?}");
        assert!(!dump.contains("demo-client-secret"), "{dump}");
        assert!(!dump.contains("guest:guest"), "{dump}");
    }

    #[test]
    fn an_amqp_url_without_its_scheme_is_refused_without_showing_the_password() {
        for url in [
            "guest:SeCrEt@127.0.0.1:5672",
            "http://guest:SeCrEt@h/",
            "SeCrEt",
        ] {
            let toml = format!("[amqp]\nurl = \"{url}\"\n");
            let err = from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains("amqp.url"), "{url}: {err}");
            assert!(!err.contains("SeCrEt"), "{url}: {err}");
        }
        assert!(from_toml("[amqp]\nurl = \"amqps://u:p@h:5671/v\"\n").is_ok());
    }

    #[test]
    fn webhook_urls_are_redacted_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooks.toml");
        let hook = "[[webhooks]]\nurl = \"https://h.example/hooks/T0KEN\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        std::fs::write(&path, hook).unwrap();
        let sources = Sources {
            file: Some(path),
            ..Sources::default()
        };
        let s = Settings::load_with_env(&sources, Some(HashMap::new())).unwrap();
        let dump = format!("{s:?}");
        assert!(!dump.contains("T0KEN"), "{dump}");
        assert!(dump.contains("https://h.example/***"), "{dump}");
    }

    fn with_hook(url: &str, events: &str) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooks.toml");
        let hook = format!(
            "[[webhooks]]\nurl = \"{url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [{events}]\n"
        );
        std::fs::write(&path, hook).unwrap();
        let sources = Sources {
            file: Some(path),
            ..Sources::default()
        };
        Settings::load_with_env(&sources, Some(HashMap::new()))
    }

    fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, text).unwrap();
        let sources = Sources {
            file: Some(path),
            ..Sources::default()
        };
        Settings::load_with_env(&sources, Some(HashMap::new()))
    }

    #[test]
    fn a_webhook_filter_naming_no_event_type_stops_the_start_naming_the_key() {
        let err = with_hook("https://h.example/in", "\"relationship.applied\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("webhooks.events"), "{err}");
        assert!(err.contains("cxrel.relationship.applied"), "{err}");
        assert!(with_hook("https://h.example/in", "\"cxrel.job.completed\"").is_ok());
    }

    #[test]
    fn a_webhook_url_must_be_http_with_a_host_and_the_error_does_not_show_it() {
        for url in [
            "ftp://user:pw@h.example/x",
            "ht!tp://h.example",
            "file:///etc/passwd",
            "http:///in",
            "https:////h.example/in",
        ] {
            let err = with_hook(url, "").unwrap_err().to_string();
            assert!(err.contains("webhooks.url"), "{url}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }

    #[test]
    fn a_log_level_must_be_a_level_or_target_directives() {
        for good in ["info", "WARN", "cxrel=debug,lapin=warn", "off"] {
            assert!(is_log_filter(good), "{good}");
        }
        for bad in ["warning", "loud", "", "cxrel=loud", "=info"] {
            assert!(!is_log_filter(bad), "{bad}");
        }
        let err = from_toml("[log]\nlevel = \"warning\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_not_echoed_in_the_error() {
        let env = HashMap::from([(
            "CXREL__WEBHOOKS".to_owned(),
            "[{url=\"http://x/\",secret=\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"}]".to_owned(),
        )]);
        let err = Settings::load_with_env(&Sources::default(), Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("webhooks"), "{err}");
        assert!(!err.contains("whsec_"), "{err}");
    }

    #[test]
    fn a_cxrel_env_naming_no_file_stops_the_start() {
        let sources = Sources {
            env_name: Some("prdo".to_owned()),
            ..Sources::default()
        };
        let err = Settings::load_with_env(&sources, Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CXREL_ENV") && err.contains("prdo"), "{err}");
    }

    #[test]
    fn a_webhook_secret_that_is_no_signing_key_stops_the_start_naming_the_key_not_the_secret() {
        for secret in ["plainsecretvalue123", "whsec_!!!notbase64***", "whsec_"] {
            let text =
                format!("[[webhooks]]\nurl = \"https://h.example/in\"\nsecret = \"{secret}\"\n");
            let err = from_toml(&text).unwrap_err().to_string();
            assert!(
                err.contains("webhooks.secret") && err.contains("webhook #1"),
                "{err}"
            );
            assert!(
                !err.contains("plainsecret") && !err.contains("notbase64"),
                "{err}"
            );
        }
    }
}
