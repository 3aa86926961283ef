//! The job schema (SPEC §1): the parser's wire structs, with the limits and id formats the parser
//! checks after deserializing written in, so a job it refuses for structure fails the schema too.

use serde_json::{Value, json};

use super::ContractError;
use super::defs::Defs;
use crate::job::{JobWire, MAX_NAME_CHARS, ParseContext, TutorialWire};
use crate::settings::{IdFormat, Settings};

/// Root definition: either shape of a job message.
pub const ROOT: &str = "JobMessage";

/// No control characters (`char::is_control`, Unicode category Cc).
const PRINTABLE: &str = r"^[^\x00-\x1F\x7F-\x9F]*$";
/// Printable, and nothing that would change a URL path.
const DATASTORE: &str = r"^[^\x00-\x1F\x7F-\x9F/?#% ]*$";
/// The hyphenated form only: ids are compared as the data store spells them.
const UUID: &str = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

pub fn define(defs: &mut Defs, settings: &Settings) -> Result<&'static str, ContractError> {
    let ctx = ParseContext::from_settings(settings);
    let documented = defs.subschema::<JobWire>();
    let tutorial = defs.subschema::<TutorialWire>();
    constrain_documented(defs, &ctx)?;
    constrain_tutorial(defs, &ctx)?;
    let description = format!(
        "A relationship job, the body of a message on the jobs queue (content type \
         application/json, at most {} bytes: larger bodies are dead-lettered as \
         payload_too_large). Two shapes: the documented one with `operations`, or the \
         tutorial's single operation (selected by any of its camelCase keys).",
        ctx.limits.max_body_bytes
    );
    defs.insert(
        ROOT,
        json!({
            "title": "cxrel job",
            "description": description,
            "oneOf": [documented, tutorial],
        }),
    );
    Ok(ROOT)
}

fn constrain_documented(defs: &mut Defs, ctx: &ParseContext) -> Result<(), ContractError> {
    defs.merge("Job", "/properties/job_id", name())?;
    defs.merge("Job", "/properties/datastore_id", datastore())?;
    let ops = json!({"minItems": 1, "maxItems": ctx.limits.max_operations});
    defs.merge("Job", "/properties/operations", ops)?;
    defs.merge("Operation", "/properties/parent_id", record_id(ctx))?;
    defs.merge("Operation", "/properties/relationship_field", name())?;
    defs.merge("Operation", "/properties/child_ids", children(ctx))?;
    defs.merge("Operation", "/properties/child_ids/items", record_id(ctx))?;
    if ctx.default_datastore.is_none() {
        // The wire type is optional (a default may fill it), so `null` must be refused here.
        defs.merge("Job", "/properties/datastore_id", json!({"type": "string"}))?;
        defs.unset("Job", "/properties/datastore_id", "default");
        defs.require("Job", "datastore_id")?;
    }
    Ok(())
}

fn constrain_tutorial(defs: &mut Defs, ctx: &ParseContext) -> Result<(), ContractError> {
    defs.merge("TutorialJob", "/properties/parentId", record_id(ctx))?;
    defs.merge("TutorialJob", "/properties/relationshipField", name())?;
    defs.merge("TutorialJob", "/properties/childIds", children(ctx))?;
    defs.merge("TutorialJob", "/properties/childIds/items", record_id(ctx))?;
    defs.merge("TutorialJob", "/properties/datastoreId", datastore())?;
    if ctx.default_datastore.is_none() {
        defs.merge(
            "TutorialJob",
            "/properties/datastoreId",
            json!({"type": "string"}),
        )?;
        defs.unset("TutorialJob", "/properties/datastoreId", "default");
        defs.require("TutorialJob", "datastoreId")?;
    }
    Ok(())
}

/// Job ids and field names (string keywords only constrain strings, so `null` stays allowed
/// where the wire type is optional).
fn name() -> Value {
    json!({"minLength": 1, "maxLength": MAX_NAME_CHARS, "pattern": PRINTABLE})
}

/// No `%` in a data store id, so `.` and `..` are its only dot segments.
fn datastore() -> Value {
    json!({"minLength": 1, "maxLength": MAX_NAME_CHARS, "pattern": DATASTORE,
           "not": {"enum": [".", ".."]}})
}

/// Free-form record ids: not a dot segment, plain or percent-encoded up to three times (the
/// parser also undoes stranger encodings such as `%%32e`).
fn record_id(ctx: &ParseContext) -> Value {
    match ctx.id_format {
        IdFormat::Uuid => json!({"pattern": UUID, "format": "uuid"}),
        IdFormat::Any => {
            let mut id = name();
            id["not"] = json!({"pattern": r"^(\.|%(25){0,2}2[eE]){1,2}$"});
            id
        }
    }
}

fn children(ctx: &ParseContext) -> Value {
    json!({"maxItems": ctx.limits.max_children})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(env: &[(&str, &str)]) -> Value {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let settings =
            Settings::load_with_env(&crate::settings::Sources::default(), Some(env)).unwrap();
        super::super::generate(super::super::Document::Job, &settings).unwrap()
    }

    #[test]
    fn the_configured_limits_are_written_into_the_schema() {
        let s = schema(&[
            ("CXREL__LIMITS__MAX_OPERATIONS_PER_JOB", "7"),
            ("CXREL__LIMITS__MAX_CHILDREN_PER_OPERATION", "3"),
        ]);
        assert_eq!(s["$defs"]["Job"]["properties"]["operations"]["maxItems"], 7);
        let child_ids = &s["$defs"]["Operation"]["properties"]["child_ids"];
        assert_eq!(child_ids["maxItems"], 3);
        assert_eq!(child_ids["items"]["pattern"], UUID);
    }

    #[test]
    fn a_default_data_store_makes_the_data_store_optional() {
        let without = schema(&[]);
        let required = without["$defs"]["Job"]["required"].as_array().unwrap();
        assert!(required.contains(&json!("datastore_id")));
        let with = schema(&[("CXREL__CXONE__DEFAULT_DATASTORE", "accounts")]);
        let required = with["$defs"]["Job"]["required"].as_array().unwrap();
        assert!(!required.contains(&json!("datastore_id")));
    }

    #[test]
    fn free_form_ids_drop_the_uuid_pattern() {
        let s = schema(&[("CXREL__VALIDATION__ID_FORMAT", "any")]);
        let parent = &s["$defs"]["Operation"]["properties"]["parent_id"];
        assert_eq!(parent["pattern"], PRINTABLE);
        assert_eq!(parent["maxLength"], MAX_NAME_CHARS);
    }

    #[test]
    fn free_form_record_ids_that_are_dot_segments_are_refused_by_the_schema_too() {
        let s = schema(&[("CXREL__VALIDATION__ID_FORMAT", "any")]);
        let parent = s["$defs"]["Operation"]["properties"]["parent_id"].clone();
        let check = jsonschema::validator_for(&parent).unwrap();
        for id in [".", "..", "%2e", "%2E%2e", ".%2e", "%252e%252e"] {
            assert!(!check.is_valid(&json!(id)), "{id}");
        }
        for id in ["a.b", "...", "acct-1", "%2e%2e%2e"] {
            assert!(check.is_valid(&json!(id)), "{id}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_both_shapes() {
        let s = schema(&[]);
        assert_eq!(s["$defs"]["Job"]["additionalProperties"], false);
        assert_eq!(s["$defs"]["TutorialJob"]["additionalProperties"], false);
        assert_eq!(s["$defs"]["Operation"]["additionalProperties"], false);
    }
}
