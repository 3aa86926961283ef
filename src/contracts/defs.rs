//! The definition table every document is built in: a `schemars` generator for the derived types,
//! plus named definitions and pointed edits (limits, formats) the types cannot carry themselves.

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::ContractError;

/// Definitions under construction.
pub struct Defs {
    generator: SchemaGenerator,
    /// `/$defs` or `/components/schemas`: where `$ref`s point.
    path: &'static str,
}

impl Defs {
    /// For a standalone JSON Schema 2020-12 document (`$defs`).
    pub fn draft2020_12() -> Self {
        Self::with(SchemaSettings::draft2020_12(), "/$defs")
    }

    /// For AsyncAPI: its Schema Object is a superset of draft 07, and the definitions live in
    /// `components.schemas`, so a `$ref` sibling becomes an `allOf`.
    pub fn asyncapi() -> Self {
        Self::with(SchemaSettings::draft07(), "/components/schemas")
    }

    fn with(settings: SchemaSettings, path: &'static str) -> Self {
        let settings = settings.for_deserialize().with(|s| {
            s.definitions_path = path.into();
            s.meta_schema = None;
        });
        Self {
            generator: settings.into_generator(),
            path,
        }
    }

    /// Adds `T` (and what it uses) to the definitions; returns a `$ref` to it.
    pub fn subschema<T: JsonSchema>(&mut self) -> Value {
        self.generator.subschema_for::<T>().to_value()
    }

    /// A `$ref` to the definition `name`.
    pub fn reference(&self, name: &str) -> Value {
        json!({ "$ref": format!("#{}/{name}", self.path) })
    }

    pub fn insert(&mut self, name: &str, schema: Value) {
        self.generator
            .definitions_mut()
            .insert(name.to_owned(), schema);
    }

    /// Merges the keys of `extra` into the object at `pointer` inside definition `name`.
    pub fn merge(&mut self, name: &str, pointer: &str, extra: Value) -> Result<(), ContractError> {
        let missing = || ContractError::Missing {
            pointer: format!("{}/{name}{pointer}", self.path),
        };
        let target = self
            .generator
            .definitions_mut()
            .get_mut(name)
            .and_then(|d| d.pointer_mut(pointer))
            .and_then(Value::as_object_mut)
            .ok_or_else(missing)?;
        if let Value::Object(extra) = extra {
            target.extend(extra);
        }
        Ok(())
    }

    /// Removes `key` from the object at `pointer` inside definition `name` (absent is fine).
    pub fn unset(&mut self, name: &str, pointer: &str, key: &str) {
        let target = self
            .generator
            .definitions_mut()
            .get_mut(name)
            .and_then(|d| d.pointer_mut(pointer))
            .and_then(Value::as_object_mut);
        if let Some(target) = target {
            target.remove(key);
        }
    }

    /// Adds `key` to the `required` list of definition `name`.
    pub fn require(&mut self, name: &str, key: &str) -> Result<(), ContractError> {
        let missing = || ContractError::Missing {
            pointer: format!("{}/{name}/required", self.path),
        };
        let required = self
            .generator
            .definitions_mut()
            .get_mut(name)
            .and_then(|d| d.as_object_mut())
            .map(|d| d.entry("required").or_insert_with(|| json!([])))
            .and_then(Value::as_array_mut)
            .ok_or_else(missing)?;
        if !required.iter().any(|k| k == key) {
            required.push(key.into());
        }
        Ok(())
    }

    /// Every definition, with the draft's transforms applied and only standard `format`s left.
    pub fn take(&mut self) -> Map<String, Value> {
        let mut all = self.generator.take_definitions(true);
        all.values_mut().for_each(standard_formats_only);
        all
    }
}

/// The `format` values JSON Schema 2020-12 defines. schemars adds its own (`uint64`, `uint`, …)
/// for integers, which strict validators (Ajv) refuse as unknown; the `minimum` it writes beside
/// them already says what they mean.
pub(super) const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Removes every non-standard `format` keyword from `schema` and its subschemas.
fn standard_formats_only(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let custom = map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f));
            if custom {
                map.remove("format");
            }
            map.values_mut().for_each(standard_formats_only);
        }
        Value::Array(items) => items.iter_mut().for_each(standard_formats_only),
        _ => {}
    }
}

/// Every `$ref` string in `value`.
pub fn references(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_references(value, &mut out);
    out
}

fn collect_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_references(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Probe {
        name: String,
    }

    #[test]
    fn a_pointer_into_a_missing_property_is_an_error_naming_it() {
        let mut defs = Defs::draft2020_12();
        defs.subschema::<Probe>();
        assert!(
            defs.merge("Probe", "/properties/name", json!({"maxLength": 3}))
                .is_ok()
        );
        let err = defs
            .merge("Probe", "/properties/gone", json!({}))
            .unwrap_err();
        assert!(
            err.to_string().contains("/$defs/Probe/properties/gone"),
            "{err}"
        );
    }

    #[test]
    fn asyncapi_references_point_into_the_components() {
        let mut defs = Defs::asyncapi();
        let r = defs.subschema::<Probe>();
        assert_eq!(r["$ref"], "#/components/schemas/Probe");
        assert_eq!(defs.reference("X")["$ref"], "#/components/schemas/X");
    }
}
