//! Machine-readable contracts (`cxrel schema`): JSON Schemas of the job, the result events and the
//! dead letters, and an AsyncAPI 3.0 document of the queues and exchanges. Everything is derived
//! from the types the parser and the event builder use (`schemars`), plus the limits and names the
//! settings give, so the documents cannot drift from the code.
//!
//! Files: [`defs`] the shared definition table, [`job`], [`event`], [`dead_letter`] one schema
//! each, [`headers`] typed header sets, [`asyncapi`] the AsyncAPI document, [`messages`] its
//! messages and [`amqp`] its broker parts.

mod amqp;
mod asyncapi;
pub mod dead_letter;
mod defs;
mod event;
mod headers;
mod job;
mod messages;

use serde_json::{Map, Value};

use crate::settings::Settings;
use defs::Defs;
pub use defs::references;

/// Where `cxrel schema` documents are committed, relative to the repository root.
pub const COMMITTED_DIR: &str = "deploy/contracts";

/// One document `cxrel schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Document {
    /// JSON Schema of a job message (SPEC §1).
    Job,
    /// JSON Schema of a result event: a CloudEvents 1.0 envelope per event type (SPEC §6).
    Event,
    /// JSON Schema of a dead letter as `cxrel dlq show|export` prints it (SPEC §5).
    DeadLetter,
    /// AsyncAPI 3.0 document of the queues, exchanges and webhooks, AMQP 0-9-1 bindings.
    Asyncapi,
}

impl Document {
    pub const ALL: [Document; 4] = [Self::Job, Self::Event, Self::DeadLetter, Self::Asyncapi];

    /// File name of the committed copy under [`COMMITTED_DIR`].
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Job => "job.schema.json",
            Self::Event => "event.schema.json",
            Self::DeadLetter => "dead-letter.schema.json",
            Self::Asyncapi => "asyncapi.yaml",
        }
    }

    /// The format of the committed copy.
    pub fn committed_format(self) -> Format {
        match self {
            Self::Asyncapi => Format::Yaml,
            _ => Format::Json,
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Yaml,
}

/// A document could not be produced. Generation only reads types and settings, so this means a
/// wire type changed without `src/contracts` following it.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error(
        "the generated schema has no {pointer} (a wire type changed; update src/contracts to match)"
    )]
    Missing { pointer: String },
    #[error("cannot print YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Generates `document` for the deployment `settings` describe (limits, id format, prefix, broker).
pub fn generate(document: Document, settings: &Settings) -> Result<Value, ContractError> {
    match document {
        Document::Job => standalone(settings, job::define),
        Document::Event => standalone(settings, event::define),
        Document::DeadLetter => standalone(settings, dead_letter::define),
        Document::Asyncapi => asyncapi::document(settings),
    }
}

/// Prints a document; JSON is pretty-printed, both end with a newline.
pub fn render(value: &Value, format: Format) -> Result<String, ContractError> {
    let mut text = match format {
        Format::Json => serde_json::to_string_pretty(value)?,
        Format::Yaml => serde_yaml_ng::to_string(value)?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A definer adds its schemas to `defs` and returns the name of its root definition.
type Define = fn(&mut Defs, &Settings) -> Result<&'static str, ContractError>;

/// A JSON Schema 2020-12 document: the root definition inline, the others under `$defs`.
fn standalone(settings: &Settings, define: Define) -> Result<Value, ContractError> {
    let mut defs = Defs::draft2020_12();
    let root_name = define(&mut defs, settings)?;
    let mut all = defs.take();
    let Some(Value::Object(root)) = all.remove(root_name) else {
        return Err(ContractError::Missing {
            pointer: format!("/$defs/{root_name}"),
        });
    };
    let mut document = Map::new();
    document.insert(
        "$schema".into(),
        "https://json-schema.org/draft/2020-12/schema".into(),
    );
    document.insert("$id".into(), format!("urn:cxrel:schema:{root_name}").into());
    document.extend(root);
    document.insert("$defs".into(), Value::Object(all));
    Ok(Value::Object(document))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Settings::load_with_env(
            &crate::settings::Sources::default(),
            Some(std::collections::HashMap::new()),
        )
        .unwrap()
    }

    #[test]
    fn every_document_generates_from_the_default_settings() {
        let settings = defaults();
        for document in Document::ALL {
            let value = generate(document, &settings).unwrap();
            let text = render(&value, document.committed_format()).unwrap();
            assert!(text.len() > 500, "{document:?} is suspiciously short");
        }
    }

    #[test]
    fn yaml_and_json_print_the_same_document() {
        let value = generate(Document::Job, &defaults()).unwrap();
        let yaml = render(&value, Format::Yaml).unwrap();
        let back: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, value);
    }

    /// What Ajv's strict mode refuses (a modelling tool compiling the schemas for code generation):
    /// formats JSON Schema does not define, and `properties` / `required` without `type: object`
    /// beside them or required keys not named in the same `properties`.
    fn strict_mode_complaints(schema: &Value, at: &str, out: &mut Vec<String>) {
        let Value::Object(map) = schema else { return };
        if let Some(format) = map.get("format").and_then(Value::as_str)
            && !defs::STANDARD_FORMATS.contains(&format)
        {
            out.push(format!("{at}: format {format}"));
        }
        let object = map.get("type") == Some(&Value::from("object"));
        if (map.contains_key("properties") || map.contains_key("required")) && !object {
            out.push(format!("{at}: properties or required without type object"));
        }
        let named = |key: &Value| {
            map.get("properties")
                .and_then(|p| p.as_object())
                .zip(key.as_str())
                .is_some_and(|(p, k)| p.contains_key(k))
        };
        for key in map
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !named(key) {
                out.push(format!("{at}: required {key} not in properties"));
            }
        }
        for (key, value) in map {
            let here = format!("{at}/{key}");
            match (key.as_str(), value) {
                ("properties" | "$defs" | "patternProperties", Value::Object(named)) => {
                    for (name, sub) in named {
                        strict_mode_complaints(sub, &format!("{here}/{name}"), out);
                    }
                }
                ("allOf" | "anyOf" | "oneOf" | "prefixItems", Value::Array(subs)) => {
                    for (i, sub) in subs.iter().enumerate() {
                        strict_mode_complaints(sub, &format!("{here}/{i}"), out);
                    }
                }
                ("items" | "additionalProperties" | "not" | "contains" | "propertyNames", sub) => {
                    strict_mode_complaints(sub, &here, out);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_schemas_hold_to_what_strict_validators_require() {
        let settings = defaults();
        for document in [Document::Job, Document::Event, Document::DeadLetter] {
            let mut complaints = Vec::new();
            strict_mode_complaints(&generate(document, &settings).unwrap(), "", &mut complaints);
            assert!(complaints.is_empty(), "{document:?}: {complaints:#?}");
        }
    }

    #[test]
    fn standalone_schemas_reference_only_their_own_definitions() {
        let settings = defaults();
        for document in [Document::Job, Document::Event, Document::DeadLetter] {
            let value = generate(document, &settings).unwrap();
            for reference in defs::references(&value) {
                let name = reference.strip_prefix("#/$defs/").unwrap_or_else(|| {
                    panic!("{document:?}: {reference} is not a local definition")
                });
                assert!(
                    value["$defs"].get(name).is_some(),
                    "{document:?}: {reference}"
                );
            }
        }
    }
}
