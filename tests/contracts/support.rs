//! Test support for the contract suites: the committed documents of `deploy/contracts` and
//! JSON Schema validation that lists every error (formats checked too).

use std::path::PathBuf;

use cxrel::contracts::{Document, Format};
use serde_json::Value;

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The committed copy of `document`, parsed.
pub fn committed(document: Document) -> Value {
    let path = repo_path(cxrel::contracts::COMMITTED_DIR).join(document.file_name());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (generate it with `cxrel schema`)", path.display()));
    parse(&text, document.committed_format())
}

pub fn parse(text: &str, format: Format) -> Value {
    match format {
        Format::Json => serde_json::from_str(text).expect("JSON document"),
        Format::Yaml => serde_yaml_ng::from_str(text).expect("YAML document"),
    }
}

/// The settings the committed copies are generated from: the compiled-in defaults only.
pub fn default_settings() -> cxrel::settings::Settings {
    cxrel::settings::Settings::load_with_env(
        &cxrel::settings::Sources::default(),
        Some(std::collections::HashMap::new()),
    )
    .expect("default settings")
}

/// A validator that also checks `format` (uuid, date-time).
pub fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

/// Every validation error of `instance`, as "path: message" lines.
pub fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Panics with every error when `instance` does not validate.
pub fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors = errors(validator, instance);
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n{}\n{instance:#}",
        errors.join("\n")
    );
}
