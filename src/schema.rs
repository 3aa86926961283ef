//! A data store's schema: the wire JSON of SPEC §3 and the domain `Schema` the validator reads.
//!
//! The wire struct tolerates unknown keys (the data store owns that format and may grow it); the
//! domain type resolves every relationship field's effective constraints once, so the validator
//! never deals with defaults.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorClass;

/// Depth limit of a relationship field whose schema sets none, when no settings are at hand.
/// The worker passes `[validation].default_max_depth` to [`Schema::from_wire`] instead.
pub const DEFAULT_MAX_DEPTH: u32 = 5;

/// The type string that makes a field a relationship field.
pub const RELATIONSHIP_TYPE: &str = "relationship";

/// `GET /api/v2/datastores/{ds}/schema` as sent by the data store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaWire {
    pub fields: Vec<FieldWire>,
}

/// One field of the wire schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldWire {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(
        default,
        deserialize_with = "crate::store::wire::null_as_default",
        skip_serializing_if = "ConstraintsWire::is_empty"
    )]
    pub constraints: ConstraintsWire,
}

/// Constraints of a wire field; all optional (defaults are resolved in [`Schema`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintsWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_children: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_parent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acyclic: Option<bool>,
}

impl ConstraintsWire {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Effective constraints of one relationship field, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constraints {
    /// Longest downward path along this field, in edges.
    pub max_depth: u32,
    /// Children per parent in this field, when limited.
    pub max_children: Option<u32>,
    /// A child has at most one parent in this field.
    pub unique_parent: bool,
    /// The field takes part in the cross-field cycle check.
    pub acyclic: bool,
}

/// Index of a relationship field among the schema's relationship fields (dense, schema order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFieldId(pub u16);

impl RelFieldId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A relationship field with its effective constraints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationshipField {
    pub name: String,
    pub constraints: Constraints,
}

/// What a field name means in this schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldLookup<'a> {
    /// No such field (`unknown_field`).
    Unknown,
    /// A field of another type (`not_relationship_field`); carries the type.
    NotRelationship(&'a str),
    /// A relationship field.
    Relationship(RelFieldId, &'a RelationshipField),
}

/// The domain schema: relationship fields indexed densely, other fields by name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    relationships: Vec<RelationshipField>,
    other: HashMap<String, String>,
    by_name: HashMap<String, RelFieldId>,
}

/// Why a wire schema cannot be used. Permanent: the data store's configuration must change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("schema field #{index} has an empty name")]
    EmptyName { index: usize },
    #[error("schema field {name:?} is declared twice")]
    DuplicateField { name: String },
    #[error("schema has more than {max} relationship fields", max = u16::MAX)]
    TooManyRelationshipFields,
}

impl SchemaError {
    pub fn code(&self) -> &'static str {
        "invalid_schema"
    }

    pub fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

impl Schema {
    /// Resolves a wire schema; `default_max_depth` is `[validation].default_max_depth`.
    pub fn from_wire(wire: SchemaWire, default_max_depth: u32) -> Result<Self, SchemaError> {
        let mut schema = Schema {
            relationships: Vec::new(),
            other: HashMap::new(),
            by_name: HashMap::new(),
        };
        for (index, field) in wire.fields.into_iter().enumerate() {
            schema.add(index, field, default_max_depth)?;
        }
        Ok(schema)
    }

    fn add(
        &mut self,
        index: usize,
        field: FieldWire,
        default_depth: u32,
    ) -> Result<(), SchemaError> {
        if field.name.is_empty() {
            return Err(SchemaError::EmptyName { index });
        }
        if self.by_name.contains_key(&field.name) || self.other.contains_key(&field.name) {
            return Err(SchemaError::DuplicateField { name: field.name });
        }
        if field.kind != RELATIONSHIP_TYPE {
            self.other.insert(field.name, field.kind);
            return Ok(());
        }
        let id = u16::try_from(self.relationships.len())
            .map_err(|_| SchemaError::TooManyRelationshipFields)?;
        let c = field.constraints;
        let constraints = Constraints {
            max_depth: c.max_depth.unwrap_or(default_depth),
            max_children: c.max_children,
            unique_parent: c.unique_parent.unwrap_or(false),
            acyclic: c.acyclic.unwrap_or(true),
        };
        self.by_name.insert(field.name.clone(), RelFieldId(id));
        self.relationships.push(RelationshipField {
            name: field.name,
            constraints,
        });
        Ok(())
    }

    /// What `name` is in this schema.
    pub fn lookup(&self, name: &str) -> FieldLookup<'_> {
        if let Some(&id) = self.by_name.get(name)
            && let Some(field) = self.relationships.get(id.index())
        {
            return FieldLookup::Relationship(id, field);
        }
        match self.other.get(name) {
            Some(kind) => FieldLookup::NotRelationship(kind),
            None => FieldLookup::Unknown,
        }
    }

    /// The relationship field called `name`, if there is one.
    pub fn relationship_id(&self, name: &str) -> Option<RelFieldId> {
        self.by_name.get(name).copied()
    }

    /// The relationship field with this id.
    pub fn relationship(&self, id: RelFieldId) -> Option<&RelationshipField> {
        self.relationships.get(id.index())
    }

    /// All relationship fields, indexed by `RelFieldId`.
    pub fn relationships(&self) -> &[RelationshipField] {
        &self.relationships
    }

    /// Number of relationship fields.
    pub fn relationship_count(&self) -> usize {
        self.relationships.len()
    }
}

/// Uses [`DEFAULT_MAX_DEPTH`]; prefer [`Schema::from_wire`] with the configured default.
impl TryFrom<SchemaWire> for Schema {
    type Error = SchemaError;

    fn try_from(wire: SchemaWire) -> Result<Self, SchemaError> {
        Schema::from_wire(wire, DEFAULT_MAX_DEPTH)
    }
}

/// With `(wire, [validation].default_max_depth)`.
impl TryFrom<(SchemaWire, u32)> for Schema {
    type Error = SchemaError;

    fn try_from((wire, default_max_depth): (SchemaWire, u32)) -> Result<Self, SchemaError> {
        Schema::from_wire(wire, default_max_depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: &str) -> SchemaWire {
        serde_json::from_str(json).expect("wire schema parses")
    }

    #[test]
    fn constraints_default_to_acyclic_and_the_configured_depth() {
        let w = wire(r#"{"fields":[{"name":"parent_child_link","type":"relationship"}]}"#);
        let s = Schema::from_wire(w, 7).unwrap();
        let FieldLookup::Relationship(id, f) = s.lookup("parent_child_link") else {
            panic!("relationship expected");
        };
        assert_eq!(id, RelFieldId(0));
        assert_eq!(
            f.constraints,
            Constraints {
                max_depth: 7,
                max_children: None,
                unique_parent: false,
                acyclic: true
            }
        );
    }

    #[test]
    fn null_constraints_read_as_none_set() {
        let w = wire(
            r#"{"fields":[{"name":"name","type":"string","constraints":null},
            {"name":"l","type":"relationship","constraints":{"max_depth":null}}]}"#,
        );
        let s = Schema::from_wire(w, 5).unwrap();
        let FieldLookup::Relationship(_, f) = s.lookup("l") else {
            panic!("relationship expected");
        };
        assert_eq!(f.constraints.max_depth, 5);
    }

    #[test]
    fn explicit_constraints_are_kept() {
        let w = wire(
            r#"{"fields":[{"name":"name","type":"string"},{"name":"owner","type":"relationship",
            "constraints":{"max_depth":2,"max_children":3,"unique_parent":true,"acyclic":false}}]}"#,
        );
        let s = Schema::try_from(w).unwrap();
        let c = s.relationships()[0].constraints;
        assert_eq!((c.max_depth, c.max_children), (2, Some(3)));
        assert!(c.unique_parent && !c.acyclic);
    }

    #[test]
    fn unknown_keys_of_the_wire_schema_are_tolerated() {
        let w = wire(
            r#"{"version":3,"fields":[{"name":"a","type":"relationship","label":"A",
            "constraints":{"acyclic":true,"future":1}}]}"#,
        );
        assert!(Schema::try_from(w).is_ok());
    }

    #[test]
    fn lookup_tells_unknown_from_non_relationship_fields() {
        let w = wire(r#"{"fields":[{"name":"title","type":"string"}]}"#);
        let s = Schema::try_from(w).unwrap();
        assert_eq!(s.lookup("title"), FieldLookup::NotRelationship("string"));
        assert_eq!(s.lookup("nope"), FieldLookup::Unknown);
    }

    #[test]
    fn a_field_declared_twice_is_an_invalid_schema() {
        let w = wire(r#"{"fields":[{"name":"a","type":"relationship"},{"name":"a","type":"x"}]}"#);
        let err = Schema::try_from(w).unwrap_err();
        assert_eq!(err.code(), "invalid_schema");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    #[test]
    fn the_wire_schema_round_trips() {
        let json =
            r#"{"fields":[{"name":"a","type":"relationship","constraints":{"max_depth":3}}]}"#;
        let w = wire(json);
        assert_eq!(serde_json::to_string(&w).unwrap(), json);
    }
}
