//! A wrapper that keeps secrets (client secret, access key secret, webhook secrets, AMQP password)
//! out of logs: `Debug` and `Display` print `***`; the value is reachable only through `expose`.

use serde::{Deserialize, Deserializer};

/// A secret string. Reading it needs an explicit `expose()`, which is easy to audit.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Never pass the result to a log macro.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A URL with its password replaced by `***`, for logs (`amqp://guest:***@host:5672/%2f`). The
/// query and fragment are masked whole: some schemes carry credentials there
/// (`redis+unix:///s.sock?pass=…`, `amqps://…?certfile=…&password=…`).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<unparsable url>".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        url.set_query(Some("***"));
    }
    if url.fragment().is_some() {
        url.set_fragment(Some("***"));
    }
    url.to_string()
}

/// A webhook URL for logs, error text and dead-letter headers: scheme, host and port only
/// (`https://hooks.example.com/***`). Webhook endpoints carry their token anywhere, in the path
/// (`/services/T0/B0/XXXX`) as often as in the query, so everything after the host is masked.
pub fn redact_webhook_url(raw: &str) -> String {
    let Ok(url) = url::Url::parse(raw) else {
        return "<unparsable url>".to_owned();
    };
    let Some(host) = url.host_str() else {
        return format!("{}:***", url.scheme());
    };
    let userinfo = if url.username().is_empty() && url.password().is_none() {
        ""
    } else {
        "***@"
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = url.path() != "/" || url.query().is_some() || url.fragment().is_some();
    let rest = if hidden { "/***" } else { "/" };
    format!("{}://{userinfo}{host}{port}{rest}", url.scheme())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn redact_url_masks_credentials_carried_in_the_query() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=0&pass=hunter2"),
            "redis+unix:///run/redis.sock?***"
        );
        assert_eq!(
            redact_url("redis://:hunter2@h:6379/0#frag"),
            "redis://:***@h:6379/0#***"
        );
    }

    #[test]
    fn webhook_urls_keep_only_scheme_host_and_port() {
        let cases = [
            (
                "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
                "https://hooks.slack.com/***",
            ),
            (
                "http://127.0.0.1:8480/hook?token=SECRET#frag",
                "http://127.0.0.1:8480/***",
            ),
            ("https://user:SECRET@h.example/", "https://***@h.example/"),
            ("https://h.example", "https://h.example/"),
            ("mailto:SECRET@example.com", "mailto:***"),
            ("not a url SECRET", "<unparsable url>"),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_webhook_url(raw), shown, "{raw}");
            assert!(!redact_webhook_url(raw).contains("SECRET"));
        }
    }

    #[test]
    fn redact_url_does_not_echo_unparsable_input() {
        assert_eq!(redact_url("::not a url:pass@"), "<unparsable url>");
    }
}
