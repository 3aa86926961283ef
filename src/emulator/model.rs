//! Data stores as the emulator keeps them: schema, records with versions, locks, and the checks a
//! written field value must pass (known field, right type, relationship shape).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::state::lock;

/// `{"fields":[…]}` of SPEC §3.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSchema {
    pub fields: Vec<FieldDef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<StoreConstraints>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
    Datetime,
    Relationship,
}

/// Relationship constraints, echoed as given: defaults (acyclic true, max_depth 5) are the
/// worker's business, not the store's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConstraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_children: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_parent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acyclic: Option<bool>,
}

/// A relationship value as written: `{"ids":[…],"cascade_action":…}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationshipValue {
    ids: Vec<String>,
    #[serde(default)]
    cascade_action: StoreCascade,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreCascade {
    #[default]
    None,
    Update,
    Delete,
}

impl StoreSchema {
    /// Structural checks: unique non-empty names, constraints only on relationship fields.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for field in &self.fields {
            if field.name.is_empty() || field.name.starts_with('_') {
                return Err(format!(
                    "field name {:?} must be non-empty and not start with '_'",
                    field.name
                ));
            }
            if !seen.insert(field.name.as_str()) {
                return Err(format!("field {:?} is declared twice", field.name));
            }
            if field.constraints.is_some() && field.kind != FieldType::Relationship {
                return Err(format!(
                    "field {:?}: constraints apply to relationship fields only",
                    field.name
                ));
            }
        }
        Ok(())
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Relationship field names, for cascade walks.
    pub fn relationship_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| f.kind == FieldType::Relationship)
            .map(|f| f.name.as_str())
    }

    /// Checks every written field and returns them normalised (relationships always carry
    /// `cascade_action`). 400 `unknown_field` or `invalid_field_value` otherwise.
    pub fn normalize_fields(
        &self,
        fields: Map<String, Value>,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut out = Map::with_capacity(fields.len());
        for (name, value) in fields {
            let def = self.field(&name).ok_or_else(|| {
                ApiError::bad_request("unknown_field", format!("the schema has no field {name:?}"))
            })?;
            let value = normalize_value(def, value).map_err(|why| {
                ApiError::bad_request("invalid_field_value", format!("field {name:?}: {why}"))
            })?;
            out.insert(name, value);
        }
        Ok(out)
    }
}

/// One field value against its definition. `null` clears a scalar field.
fn normalize_value(def: &FieldDef, value: Value) -> Result<Value, String> {
    let ok = match (def.kind, &value) {
        (FieldType::Relationship, _) => return normalize_relationship(value),
        (_, Value::Null) => true,
        (FieldType::String | FieldType::Datetime, Value::String(_)) => true,
        (FieldType::Number, Value::Number(_)) => true,
        (FieldType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (FieldType::Boolean, Value::Bool(_)) => true,
        _ => false,
    };
    if ok {
        Ok(value)
    } else {
        Err(format!("expected a {:?} value", def.kind).to_lowercase())
    }
}

fn normalize_relationship(value: Value) -> Result<Value, String> {
    let rel: RelationshipValue = serde_json::from_value(value).map_err(|e| {
        format!("a relationship value is {{\"ids\":[strings],\"cascade_action\":\"none|update|delete\"}} ({e})")
    })?;
    if rel.ids.iter().any(|id| id.is_empty()) {
        return Err("relationship ids must be non-empty strings".to_owned());
    }
    Ok(serde_json::json!({"ids": rel.ids, "cascade_action": rel.cascade_action}))
}

/// Whether a stored relationship value asks for cascade deletion; its ids if so.
pub fn cascade_delete_ids(value: &Value) -> Option<&Vec<Value>> {
    let delete = value.get("cascade_action").and_then(Value::as_str) == Some("delete");
    if delete {
        value.get("ids").and_then(Value::as_array)
    } else {
        None
    }
}

#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub fields: Map<String, Value>,
    pub version: u64,
}

/// A record as answered: `{"id","fields","_version"}` plus `_links` after a PATCH.
#[derive(Serialize)]
pub struct RecordView<'a> {
    pub id: &'a str,
    pub fields: &'a Map<String, Value>,
    #[serde(rename = "_version")]
    pub version: u64,
    #[serde(rename = "_links", skip_serializing_if = "Option::is_none")]
    pub links: Option<Links>,
}

#[derive(Serialize)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_link: Href,
}

#[derive(Serialize)]
pub struct Href {
    pub href: String,
}

/// A record as loaded through the control API or a seed file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordInput {
    pub id: String,
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Version to start from; default 1.
    #[serde(default, rename = "_version")]
    pub version: Option<u64>,
    /// Accepted and ignored, so a record read from the API can be loaded back as is.
    #[serde(default, rename = "_links")]
    pub _links: Option<serde::de::IgnoredAny>,
}

/// The records of one data store, in id order so pagination is deterministic.
#[derive(Debug, Default)]
pub struct Records {
    pub map: BTreeMap<String, StoredRecord>,
    pub locked: HashSet<String>,
}

/// One data store: a fixed schema and its records behind one short-held lock.
#[derive(Debug)]
pub struct DataStore {
    pub schema: StoreSchema,
    records: Mutex<Records>,
}

impl DataStore {
    pub fn new(schema: StoreSchema) -> Self {
        Self {
            schema,
            records: Mutex::new(Records::default()),
        }
    }

    pub fn records(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }

    /// The same records (versions and locks kept) under another schema, as when the store's
    /// owner edits the schema (e.g. adds a relationship field).
    pub fn with_schema(&self, schema: StoreSchema) -> Self {
        let records = self.records();
        Self {
            schema,
            records: Mutex::new(Records {
                map: records.map.clone(),
                locked: records.locked.clone(),
            }),
        }
    }

    /// Inserts or replaces records after checking them against the schema; all or nothing.
    pub fn load(&self, inputs: Vec<RecordInput>) -> Result<usize, ApiError> {
        let mut checked = Vec::with_capacity(inputs.len());
        for input in inputs {
            if input.id.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "a record id is empty",
                ));
            }
            let fields = self
                .schema
                .normalize_fields(input.fields)
                .map_err(|mut e| {
                    e.description = format!("record {:?}: {}", input.id, e.description);
                    e
                })?;
            let version = input.version.unwrap_or(1);
            checked.push((input.id, StoredRecord { fields, version }));
        }
        let count = checked.len();
        self.records().map.extend(checked);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> StoreSchema {
        serde_json::from_value(json!({"fields": [
            {"name": "name", "type": "string"},
            {"name": "size", "type": "integer"},
            {"name": "link", "type": "relationship", "constraints": {"max_depth": 3}}
        ]}))
        .unwrap()
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_relationship_value_gets_its_default_cascade_action() {
        let out = schema()
            .normalize_fields(fields(json!({"link": {"ids": ["a", "b"]}})))
            .unwrap();
        assert_eq!(
            out["link"],
            json!({"ids": ["a", "b"], "cascade_action": "none"})
        );
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_code() {
        let err = schema()
            .normalize_fields(fields(json!({"nope": 1})))
            .unwrap_err();
        assert_eq!(err.code, "unknown_field");
    }

    #[test]
    fn a_relationship_of_the_wrong_shape_is_refused() {
        for bad in [
            json!(["a"]),
            json!({"ids": "a"}),
            json!({"ids": [1]}),
            json!({"ids": ["a"], "cascade_action": "explode"}),
            json!({"ids": ["a"], "extra": true}),
            json!({"ids": [""]}),
        ] {
            let err = schema()
                .normalize_fields(fields(json!({"link": bad})))
                .unwrap_err();
            assert_eq!(err.code, "invalid_field_value", "{bad}");
        }
    }

    #[test]
    fn scalar_fields_are_type_checked_and_null_clears_them() {
        let s = schema();
        assert!(s.normalize_fields(fields(json!({"size": 1.5}))).is_err());
        assert!(s.normalize_fields(fields(json!({"name": 3}))).is_err());
        assert!(
            s.normalize_fields(fields(json!({"name": null, "size": 7})))
                .is_ok()
        );
    }

    #[test]
    fn constraints_on_a_scalar_field_make_the_schema_invalid() {
        let s: StoreSchema = serde_json::from_value(json!({"fields": [
            {"name": "name", "type": "string", "constraints": {"max_depth": 1}}
        ]}))
        .unwrap();
        assert!(s.check().is_err());
    }

    #[test]
    fn only_cascade_delete_values_name_children_to_delete() {
        let v = json!({"ids": ["x"], "cascade_action": "delete"});
        assert_eq!(cascade_delete_ids(&v).map(Vec::len), Some(1));
        let v = json!({"ids": ["x"], "cascade_action": "update"});
        assert!(cascade_delete_ids(&v).is_none());
    }
}
