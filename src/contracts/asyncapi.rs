//! The AsyncAPI 3.0 document: cxrel as one application that receives jobs, holds retries,
//! dead-letters, publishes result events and delivers webhooks. Payloads and headers reference
//! the same schemas as `cxrel schema job|event|dead-letter`, under `components.schemas`.

use serde_json::{Map, Value, json};

use super::amqp::{self, exchange_binding, persistent_publish, queue_binding};
use super::defs::Defs;
use super::{ContractError, dead_letter, event, job, messages};
use crate::amqp::Topology;
use crate::events::EventType;
use crate::settings::Settings;

/// How results travel, stated once for the document, the event messages and the README.
pub const CLOUDEVENTS_MODE: &str = "Result events are CloudEvents 1.0 in structured content \
mode: the AMQP message body (and the webhook request body) is the whole event as JSON, with \
content type `application/cloudevents+json`; `data` is JSON (`datacontenttype: application/json`). \
There is no official CloudEvents binding for AMQP 0-9-1, so no `cloudEvents:*` or `ce_*` headers \
are set; AMQP properties mirror the event instead: `message_id` = event `id`, `type` = event \
`type`, `delivery_mode` = 2, and the `traceparent` header when the job carried one.";

pub fn document(settings: &Settings) -> Result<Value, ContractError> {
    let topology = Topology::from_settings(&settings.amqp);
    let vhost = amqp::vhost(settings.amqp.url.expose());
    let mut defs = Defs::asyncapi();
    job::define(&mut defs, settings)?;
    event::define(&mut defs, settings)?;
    dead_letter::define(&mut defs, settings)?;
    let messages = messages::all(&mut defs);
    Ok(json!({
        "asyncapi": "3.0.0",
        "id": format!("urn:cxrel:{}", topology.prefix()),
        "info": info(),
        "defaultContentType": "application/json",
        "servers": {
            "broker": amqp::server(settings),
            "webhookSubscriber": webhook_server(),
        },
        "channels": channels(&topology, &vhost),
        "operations": operations(&topology),
        "components": {"schemas": defs.take(), "messages": messages},
    }))
}

fn info() -> Value {
    let description = format!(
        "Queue-driven worker for parent–child relationship jobs. Publish a job to the jobs \
         queue (default exchange, routing key = queue name, persistent, `message_id` = job \
         id); results arrive on the events topic exchange (routing key = event type without \
         `cxrel.`; bind your own queue, e.g. `relationship.*` or `#`) and, if configured, as \
         signed webhooks. Jobs that fail for good land on the dead queue with `x-cxrel-*` \
         headers.\n\n{CLOUDEVENTS_MODE}"
    );
    json!({
        "title": "cxrel",
        "version": env!("CARGO_PKG_VERSION"),
        "description": description,
        "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
    })
}

fn webhook_server() -> Value {
    json!({
        "host": "{host}",
        "protocol": "https",
        "title": "Webhook subscriber",
        "description": "Each `[[webhooks]]` entry's URL (http or https) receives POSTs of the \
                        events its filter selects.",
        "variables": {"host": {"description": "Host of a `[[webhooks]].url`."}},
    })
}

fn message_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/messages/{name}")})
}

fn channel_message_ref(channel: &str, name: &str) -> Value {
    json!({"$ref": format!("#/channels/{channel}/messages/{name}")})
}

fn broker_channel(address: &str, message: &str, description: String, bindings: Value) -> Value {
    json!({
        "address": address,
        "description": description,
        "servers": [{"$ref": "#/servers/broker"}],
        "messages": {message: message_ref(message)},
        "bindings": bindings,
    })
}

fn channels(topology: &Topology, vhost: &str) -> Value {
    let mut channels = Map::new();
    let jobs = format!(
        "The jobs queue, the ingress. Quorum queue with one active consumer at a time \
         (`x-single-active-consumer`) and a delivery limit (`x-delivery-limit`); a job over \
         the limit is dead-lettered by the broker to `{}`. Manual ack: a job is acked only \
         after what follows it (retry, dead letter, events) is confirmed by the broker.",
        topology.dead()
    );
    let jobs_bindings = queue_binding(&topology.jobs(), vhost, amqp::jobs_arguments(topology));
    channels.insert(
        "jobs".into(),
        broker_channel(&topology.jobs(), "job", jobs, jobs_bindings),
    );
    for delay in topology.retry_delays() {
        let name = topology.retry_queue(*delay);
        let about = format!(
            "Hold queue: a job that failed transiently waits {} here (TTL), then the broker \
             dead-letters it back to `{}`. Nobody consumes it.",
            humantime::format_duration(*delay),
            topology.jobs()
        );
        let bindings = queue_binding(&name, vhost, amqp::hold_arguments(topology, *delay));
        channels.insert(
            hold_key(topology, &name),
            broker_channel(&name, "job", about, bindings),
        );
    }
    let dead = "Dead letters: jobs that failed for good, body untouched. Inspect and replay with \
                `cxrel dlq`."
        .to_owned();
    let bindings = queue_binding(&topology.dead(), vhost, amqp::quorum_arguments());
    channels.insert(
        "dead".into(),
        broker_channel(&topology.dead(), "deadLetter", dead, bindings),
    );
    let parked =
        "Webhook deliveries that ran out of attempts (the job's outcome is unaffected).".to_owned();
    let bindings = queue_binding(&topology.webhooks_dead(), vhost, amqp::quorum_arguments());
    let address = topology.webhooks_dead();
    channels.insert(
        "webhooksDead".into(),
        broker_channel(&address, "parkedWebhook", parked, bindings),
    );
    let intents =
        "The write-intent log: one message per atomic job being written, held unacked by \
                   the active worker until the job's writes are decided. A worker that becomes \
                   active first writes back the previous values of every intent a dead one left \
                   here. Nobody else consumes it."
            .to_owned();
    let bindings = queue_binding(&topology.intents(), vhost, amqp::quorum_arguments());
    channels.insert(
        "intents".into(),
        broker_channel(&topology.intents(), "writeIntent", intents, bindings),
    );
    for ty in EventType::ALL {
        let about = format!(
            "`{}` events on the `{}` topic exchange. {}",
            ty.as_str(),
            topology.events(),
            event::summary(ty)
        );
        let bindings = exchange_binding(topology, vhost);
        let channel = broker_channel(
            ty.routing_key(),
            event::definition_name(ty),
            about,
            bindings,
        );
        channels.insert(ty.routing_key().into(), channel);
    }
    channels.insert("webhook".into(), webhook_channel());
    Value::Object(channels)
}

/// `retry.30s` for `cxrel.retry.30s`.
fn hold_key(topology: &Topology, queue: &str) -> String {
    queue
        .strip_prefix(topology.prefix())
        .unwrap_or(queue)
        .trim_start_matches('.')
        .to_owned()
}

fn webhook_channel() -> Value {
    json!({
        "address": null,
        "description": "The path of each `[[webhooks]].url`.",
        "servers": [{"$ref": "#/servers/webhookSubscriber"}],
        "messages": {"webhookEvent": message_ref("webhookEvent")},
    })
}

fn operation(
    action: &str,
    channel: &str,
    message: &str,
    description: &str,
    bindings: Value,
) -> Value {
    json!({
        "action": action,
        "channel": {"$ref": format!("#/channels/{channel}")},
        "description": description,
        "messages": [channel_message_ref(channel, message)],
        "bindings": bindings,
    })
}

fn operations(topology: &Topology) -> Value {
    let mut ops = Map::new();
    let ack = json!({"amqp": {"ack": true, "bindingVersion": amqp::BINDING_VERSION}});
    let consume = "cxrel consumes jobs: parse, validate, apply, publish results.";
    ops.insert(
        "receiveJob".into(),
        operation("receive", "jobs", "job", consume, ack),
    );
    for delay in topology.retry_delays() {
        let key = hold_key(topology, &topology.retry_queue(*delay));
        let about = "A transient failure (429, 5xx, timeout, 409, 412) parks the job for the \
                     next retry delay, with `x-cxrel-attempts` counting deliveries.";
        let op = operation("send", &key, "job", about, persistent_publish());
        ops.insert(format!("hold.{key}"), op);
    }
    let dead = "A permanent failure, or a transient one past the last delay, dead-letters the job.";
    ops.insert(
        "deadLetter".into(),
        operation("send", "dead", "deadLetter", dead, persistent_publish()),
    );
    let park = "A webhook delivery out of attempts is parked.";
    let op = operation(
        "send",
        "webhooksDead",
        "parkedWebhook",
        park,
        persistent_publish(),
    );
    ops.insert("parkWebhook".into(), op);
    let record = "Before the first PATCH of an atomic job with several parents, its intent is \
                  recorded (confirmed); it is acked once the job's writes are decided.";
    let op = operation(
        "send",
        "intents",
        "writeIntent",
        record,
        persistent_publish(),
    );
    ops.insert("recordIntent".into(), op);
    for ty in EventType::ALL {
        let key = ty.routing_key();
        let op = operation(
            "send",
            key,
            event::definition_name(ty),
            event::summary(ty),
            persistent_publish(),
        );
        ops.insert(format!("publish.{key}"), op);
    }
    let post = json!({"http": {"method": "POST", "bindingVersion": "0.3.0"}});
    let deliver = "Each event a `[[webhooks]]` filter selects is POSTed, signed per Standard \
                   Webhooks 1.0 and retried with backoff; any 2xx is success.";
    ops.insert(
        "deliverWebhook".into(),
        operation("send", "webhook", "webhookEvent", deliver, post),
    );
    Value::Object(ops)
}
