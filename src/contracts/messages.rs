//! The AsyncAPI messages: content type, headers and payload of each message on the channels, all
//! referencing the generated schemas in `components.schemas`.

use serde_json::{Map, Value, json};

use super::amqp;
use super::asyncapi::CLOUDEVENTS_MODE;
use super::defs::Defs;
use super::headers::{DeadLetterHeaders, ParkedWebhookHeaders, TraceHeaders, WebhookHeaders};
use super::{event, job};
use crate::events::{EventType, STRUCTURED_CONTENT_TYPE};

/// `components.messages`: every message the channels carry.
pub fn all(defs: &mut Defs) -> Value {
    let trace = defs.subschema::<TraceHeaders>();
    let mut messages = Map::new();
    let job = json!({
        "name": "job",
        "title": "Relationship job",
        "contentType": "application/json",
        "description": "AMQP `message_id` is the default job id. Messages coming back from a \
                        hold queue also carry `x-cxrel-attempts`, `x-cxrel-first-failed-at` and \
                        the broker's `x-death`.",
        "headers": trace,
        "payload": defs.reference(job::ROOT),
        "bindings": {"amqp": {"bindingVersion": amqp::BINDING_VERSION}},
    });
    messages.insert("job".into(), job);
    for ty in EventType::ALL {
        messages.insert(
            event::definition_name(ty).into(),
            event_message(defs, ty, &trace),
        );
    }
    messages.insert("deadLetter".into(), dead_letter_message(defs));
    let parked = json!({
        "name": "parkedWebhook",
        "title": "Undeliverable webhook",
        "contentType": STRUCTURED_CONTENT_TYPE,
        "headers": defs.subschema::<ParkedWebhookHeaders>(),
        "payload": defs.reference(event::ROOT),
    });
    messages.insert("parkedWebhook".into(), parked);
    let intent = json!({
        "name": "writeIntent",
        "title": "Write intent",
        "contentType": "application/json",
        "description": "What an atomic job with several PATCHes writes and the values it \
                        replaces, recorded before its first PATCH. AMQP `message_id` is the \
                        intent's id. Internal to cxrel: the active worker alone publishes and \
                        consumes it.",
        "payload": defs.subschema::<crate::pipeline::intent::Intent>(),
    });
    messages.insert("writeIntent".into(), intent);
    let webhook = json!({
        "name": "webhookEvent",
        "title": "Webhook delivery",
        "contentType": STRUCTURED_CONTENT_TYPE,
        "description": format!("HTTP POST, body = the event. {CLOUDEVENTS_MODE}"),
        "headers": defs.subschema::<WebhookHeaders>(),
        "payload": defs.reference(event::ROOT),
    });
    messages.insert("webhookEvent".into(), webhook);
    Value::Object(messages)
}

fn event_message(defs: &Defs, ty: EventType, trace: &Value) -> Value {
    json!({
        "name": event::definition_name(ty),
        "title": ty.as_str(),
        "summary": event::summary(ty),
        "contentType": STRUCTURED_CONTENT_TYPE,
        "description": CLOUDEVENTS_MODE,
        "headers": trace,
        "payload": defs.reference(event::definition_name(ty)),
        "bindings": {"amqp": {"messageType": ty.as_str(), "bindingVersion": amqp::BINDING_VERSION}},
    })
}

fn dead_letter_message(defs: &mut Defs) -> Value {
    json!({
        "name": "deadLetter",
        "title": "Dead letter",
        "description": "The original job message: body and AMQP properties untouched (content \
                        type included), failure headers added. `cxrel dlq show|export` print \
                        it as the `DeadLetter` schema.",
        "headers": defs.subschema::<DeadLetterHeaders>(),
        "payload": {"description": "The original body, byte for byte (usually a job)."},
    })
}
