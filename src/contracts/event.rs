//! The result-event schema (SPEC §6): the CloudEvents envelope and `data` structs the event
//! builder serializes, tied together per event type (`type` fixed, `data` of that type).

use schemars::JsonSchema;
use serde_json::{Value, json};

use super::ContractError;
use super::defs::Defs;
use crate::events::{
    CloudEvent, DATA_CONTENT_TYPE, EventType, JobCompletedData, JobDeadLetteredData, OutcomeStatus,
    RelationshipData, SPEC_VERSION, STRUCTURED_CONTENT_TYPE,
};
use crate::settings::Settings;

/// Root definition: any result event.
pub const ROOT: &str = "ResultEvent";

/// The values of `x-cxrel-stage` and of `data.stage` (the worker's `Stage` names).
pub const STAGES: [&str; 5] = ["parse", "validate", "apply", "compensate", "settle"];

pub fn define(defs: &mut Defs, _settings: &Settings) -> Result<&'static str, ContractError> {
    let envelope = defs.subschema::<CloudEvent>();
    constrain_envelope(defs)?;
    let mut variants = Vec::new();
    for ty in EventType::ALL {
        let schema = typed_event(defs, &envelope, ty);
        defs.insert(definition_name(ty), schema);
        variants.push(defs.reference(definition_name(ty)));
    }
    constrain_data(defs)?;
    let description = format!(
        "A cxrel result event: CloudEvents 1.0 in structured mode, the whole event is the JSON \
         body (AMQP content_type and webhook Content-Type {STRUCTURED_CONTENT_TYPE}; \
         datacontenttype {DATA_CONTENT_TYPE}). The event id repeats when a job is redelivered or \
         retried: drop duplicates by id. A job an operator replays from the dead letters is a new \
         run, and its events get new ids."
    );
    defs.insert(
        ROOT,
        json!({"title": "cxrel result event", "description": description, "oneOf": variants}),
    );
    Ok(ROOT)
}

/// The definition name of one event type's schema, also its AsyncAPI message name.
pub fn definition_name(ty: EventType) -> &'static str {
    match ty {
        EventType::Applied => "RelationshipAppliedEvent",
        EventType::Rejected => "RelationshipRejectedEvent",
        EventType::Failed => "RelationshipFailedEvent",
        EventType::RolledBack => "RelationshipRolledBackEvent",
        EventType::JobCompleted => "JobCompletedEvent",
        EventType::JobDeadLettered => "JobDeadLetteredEvent",
    }
}

/// What each event type means, for people.
pub fn summary(ty: EventType) -> &'static str {
    match ty {
        EventType::Applied => "An operation was written to the data store.",
        EventType::Rejected => "An operation broke a validation rule; nothing of it was written.",
        EventType::Failed => {
            "An operation could not be written (retries exhausted or permanent store error)."
        }
        EventType::RolledBack => {
            "An applied operation of an atomic job was undone because another one failed."
        }
        EventType::JobCompleted => {
            "A job whose body could be read finished: every operation's result, with a summary."
        }
        EventType::JobDeadLettered => {
            "A job was moved to the dead-letter queue; the only end event of a body that could not be read as a job and of a job never settled (delivery_limit_exceeded)."
        }
    }
}

/// `data` of one event type, and the optional keys that type always carries.
fn data_of(defs: &mut Defs, ty: EventType) -> (Value, &'static [&'static str]) {
    match ty {
        EventType::Applied => (defs.subschema::<RelationshipData>(), &["version"]),
        EventType::Rejected | EventType::Failed | EventType::RolledBack => {
            (defs.subschema::<RelationshipData>(), &["code", "message"])
        }
        EventType::JobCompleted => (defs.subschema::<JobCompletedData>(), &[]),
        EventType::JobDeadLettered => (defs.subschema::<JobDeadLetteredData>(), &[]),
    }
}

fn typed_event(defs: &mut Defs, envelope: &Value, ty: EventType) -> Value {
    let (data, always) = data_of(defs, ty);
    // Every keyword sits beside the `type` it applies to and every required key beside its
    // property, so strict validators (Ajv's strict mode) compile the schema as it is.
    let data = if always.is_empty() {
        data
    } else {
        let named: serde_json::Map<String, Value> = always
            .iter()
            .map(|k| ((*k).to_owned(), json!({})))
            .collect();
        json!({"type": "object", "allOf": [data], "properties": named, "required": always})
    };
    json!({
        "title": ty.as_str(),
        "description": format!("{} Routing key `{}`.", summary(ty), ty.routing_key()),
        "allOf": [envelope, {
            "type": "object",
            "properties": {"type": {"const": ty.as_str()}, "data": data},
        }],
    })
}

fn constrain_envelope(defs: &mut Defs) -> Result<(), ContractError> {
    let name = CloudEvent::schema_name();
    defs.merge(
        &name,
        "/properties/specversion",
        json!({"const": SPEC_VERSION}),
    )?;
    defs.merge(
        &name,
        "/properties/datacontenttype",
        json!({"const": DATA_CONTENT_TYPE}),
    )?;
    defs.merge(&name, "/properties/id", json!({"format": "uuid"}))?;
    defs.merge(
        &name,
        "/properties/source",
        json!({"pattern": "^cxrel://[A-Za-z0-9._~-]{1,255}$"}),
    )?;
    defs.merge(&name, "/properties/time", json!({"format": "date-time"}))?;
    let traceparent = json!({"pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"});
    defs.merge(&name, "/properties/traceparent", traceparent)
}

fn constrain_data(defs: &mut Defs) -> Result<(), ContractError> {
    let status = json!({"enum": OutcomeStatus::ALL.map(OutcomeStatus::as_str)});
    defs.merge("OperationOutcome", "/properties/status", status)?;
    let stage = json!({"enum": STAGES});
    defs.merge(
        &JobDeadLetteredData::schema_name(),
        "/properties/stage",
        stage,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Stage;

    #[test]
    fn every_worker_stage_is_a_documented_stage() {
        // The match fails to compile when a stage is added, pointing here.
        let all = [
            Stage::Parse,
            Stage::Validate,
            Stage::Apply,
            Stage::Compensate,
            Stage::Settle,
        ];
        for stage in all {
            match stage {
                Stage::Parse
                | Stage::Validate
                | Stage::Apply
                | Stage::Compensate
                | Stage::Settle => {}
            }
            assert!(STAGES.contains(&stage.as_str()), "{}", stage.as_str());
        }
    }

    #[test]
    fn each_event_type_fixes_its_type_and_data() {
        let mut defs = Defs::draft2020_12();
        let settings = Settings::load_with_env(
            &crate::settings::Sources::default(),
            Some(std::collections::HashMap::new()),
        )
        .unwrap();
        define(&mut defs, &settings).unwrap();
        let all = defs.take();
        let applied = &all[definition_name(EventType::Applied)]["allOf"][1]["properties"];
        assert_eq!(applied["type"]["const"], "cxrel.relationship.applied");
        assert_eq!(applied["data"]["required"], json!(["version"]));
        let oneof = all[ROOT]["oneOf"].as_array().unwrap();
        assert_eq!(oneof.len(), EventType::ALL.len());
    }
}
