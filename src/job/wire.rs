//! The job body exactly as it travels (SPEC §1): serde structs that refuse unknown keys.

use serde::Deserialize;

/// The documented shape: `{job_id?, datastore_id?, atomic?, operations: [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobWire {
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub datastore_id: Option<String>,
    #[serde(default)]
    pub atomic: Option<bool>,
    pub operations: Vec<OperationWire>,
}

/// One operation of the documented shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationWire {
    pub parent_id: String,
    pub relationship_field: String,
    pub child_ids: Vec<String>,
    #[serde(default)]
    pub mode: Option<ModeWire>,
    #[serde(default)]
    pub cascade_action: Option<CascadeWire>,
}

/// The tutorial's single-operation shape, taken as one operation in replace mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TutorialWire {
    pub parent_id: String,
    pub child_ids: Vec<String>,
    pub relationship_field: String,
    #[serde(default)]
    pub cascade_action: Option<CascadeWire>,
    #[serde(default)]
    pub datastore_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeWire {
    Replace,
    Add,
    Remove,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CascadeWire {
    None,
    Update,
    Delete,
}

/// Keys only the tutorial's shape has; their presence selects it.
pub const TUTORIAL_KEYS: [&str; 4] = ["parentId", "childIds", "relationshipField", "cascadeAction"];
