//! The broker side of the AsyncAPI document: the server from `[amqp].url` (password never
//! printed), and AMQP 0-9-1 channel bindings for the queues and the events exchange of a
//! [`Topology`].

use std::time::Duration;

use serde_json::{Value, json};

use crate::amqp::Topology;
use crate::secret::redact_url;
use crate::settings::Settings;

/// Version of the AsyncAPI AMQP bindings used.
pub const BINDING_VERSION: &str = "0.3.0";

/// `servers.broker`: host, scheme and virtual host of `[amqp].url`; credentials stay out.
pub fn server(settings: &Settings) -> Value {
    let raw = settings.amqp.url.expose();
    let (host, protocol) = match url::Url::parse(raw) {
        Ok(url) => (host_port(&url), url.scheme().to_owned()),
        Err(_) => ("unknown".to_owned(), "amqp".to_owned()),
    };
    json!({
        "host": host,
        "protocol": protocol,
        "protocolVersion": "0.9.1",
        "title": "RabbitMQ",
        "description": format!(
            "The broker of `[amqp].url` (`CXREL__AMQP__URL`), here {} with the password \
             redacted; virtual host `{}`. Topology: `cxrel topology declare`.",
            redact_url(raw),
            vhost(raw)
        ),
        "security": [{
            "type": "userPassword",
            "description": "AMQP PLAIN with the user and password of the broker URL."
        }],
    })
}

fn host_port(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("localhost");
    let default = if url.scheme() == "amqps" { 5671 } else { 5672 };
    format!("{host}:{}", url.port().unwrap_or(default))
}

/// The virtual host of an AMQP URI: its one path segment, percent-decoded; `/` when absent.
pub fn vhost(raw: &str) -> String {
    let path = url::Url::parse(raw)
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    let decoded: Vec<u8> = percent_decode(path.as_bytes());
    String::from_utf8_lossy(&decoded).into_owned()
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// A durable, shared queue; `arguments` are its `x-` declaration arguments.
pub fn queue_binding(name: &str, vhost: &str, arguments: Value) -> Value {
    json!({
        "amqp": {
            "is": "queue",
            "queue": {
                "name": name,
                "durable": true,
                "exclusive": false,
                "autoDelete": false,
                "vhost": vhost,
            },
            "x-queue-arguments": arguments,
            "bindingVersion": BINDING_VERSION,
        }
    })
}

/// A routing key on the durable events topic exchange.
pub fn exchange_binding(topology: &Topology, vhost: &str) -> Value {
    json!({
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": topology.events(),
                "type": "topic",
                "durable": true,
                "autoDelete": false,
                "vhost": vhost,
            },
            "bindingVersion": BINDING_VERSION,
        }
    })
}

/// The jobs queue: quorum, one active consumer, a delivery limit whose overflow goes to the dead
/// queue (so the broker never drops a job unseen).
pub fn jobs_arguments(topology: &Topology) -> Value {
    json!({
        "x-queue-type": "quorum",
        "x-single-active-consumer": true,
        "x-delivery-limit": u64::from(topology.delivery_limit()) + 1,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": topology.dead(),
    })
}

/// A hold queue: messages wait out the TTL, then the broker dead-letters them back to the jobs
/// queue through the default exchange.
pub fn hold_arguments(topology: &Topology, delay: Duration) -> Value {
    json!({
        "x-message-ttl": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": topology.jobs(),
    })
}

pub fn quorum_arguments() -> Value {
    json!({"x-queue-type": "quorum"})
}

/// Persistent messages, as every cxrel publish is.
pub fn persistent_publish() -> Value {
    json!({"amqp": {"deliveryMode": 2, "bindingVersion": BINDING_VERSION}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_is_the_decoded_path_and_defaults_to_slash() {
        assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost("amqp://h:5672/prod"), "prod");
        assert_eq!(vhost("amqp://h:5672"), "/");
        assert_eq!(vhost("amqp://h/a%2"), "a%2");
    }

    #[test]
    fn the_server_never_shows_the_password() {
        let settings = Settings::load_with_env(
            &crate::settings::Sources::default(),
            Some(
                [(
                    "CXREL__AMQP__URL".to_owned(),
                    "amqps://u:s3cr3t@mq:5671/v".to_owned(),
                )]
                .into(),
            ),
        )
        .unwrap();
        let server = server(&settings);
        assert!(!server.to_string().contains("s3cr3t"), "{server}");
        assert_eq!(server["host"], "mq:5671");
        assert_eq!(server["protocol"], "amqps");
    }
}
