//! The job body exactly as it travels (SPEC §1): serde structs that refuse unknown keys. The same
//! structs derive the job's JSON Schema (`cxrel schema job`), so the contract follows the parser.

use schemars::JsonSchema;
use serde::Deserialize;

/// A relationship job: operations applied in order, all or none when `atomic`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Job")]
pub struct JobWire {
    /// Stable id of the job, kept across retries and replays. Default: the AMQP `message_id`,
    /// else a UUIDv7 assigned once.
    #[serde(default)]
    pub job_id: Option<String>,
    /// The data store the records live in. Default: `[cxone].default_datastore`.
    #[serde(default)]
    pub datastore_id: Option<String>,
    /// `true` (default): every operation applies or none does. `false`: valid operations apply and
    /// invalid ones are reported one by one.
    #[serde(default)]
    pub atomic: Option<bool>,
    /// The changes, applied in order; several on one (parent, field) fold into one final value.
    pub operations: Vec<OperationWire>,
}

/// One parent–child change.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Operation")]
pub struct OperationWire {
    /// The parent record.
    pub parent_id: String,
    /// The relationship field of the parent that holds the child ids.
    pub relationship_field: String,
    /// The child records; empty with `replace` clears the field.
    pub child_ids: Vec<String>,
    /// How `child_ids` combine with the field's current value. Default: `replace`.
    #[serde(default)]
    pub mode: Option<ModeWire>,
    /// What the data store does to the children when the parent changes or is deleted. Default:
    /// `none` for `replace`; `add` and `remove` keep the field's current action.
    #[serde(default)]
    pub cascade_action: Option<CascadeWire>,
}

/// The tutorial's single-operation shape, taken as one atomic operation in replace mode. Any of
/// its camelCase keys selects this shape.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "TutorialJob")]
pub struct TutorialWire {
    /// The parent record.
    pub parent_id: String,
    /// The child records (the field's new value).
    pub child_ids: Vec<String>,
    /// The relationship field of the parent.
    pub relationship_field: String,
    /// What the data store does to the children when the parent changes or is deleted. Default: `none`.
    #[serde(default)]
    pub cascade_action: Option<CascadeWire>,
    /// The data store. Default: `[cxone].default_datastore`.
    #[serde(default)]
    pub datastore_id: Option<String>,
}

/// `replace` sets the field to `child_ids`; `add` and `remove` change it by those ids.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Mode")]
pub enum ModeWire {
    Replace,
    Add,
    Remove,
}

/// The data store's cascade action of a relationship field.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CascadeAction")]
pub enum CascadeWire {
    None,
    Update,
    Delete,
}

/// Keys only the tutorial's shape has; their presence selects it.
pub const TUTORIAL_KEYS: [&str; 4] = ["parentId", "childIds", "relationshipField", "cascadeAction"];
