//! Turns a job body into a [`Job`]: size, shape, limits and id formats, each error with its path.

use serde_json::{Map, Value};

use super::error::JobError;
use super::ids::is_dot_segment;
use super::types::{CascadeAction, FieldName, Job, Mode, Operation, RecordId};
use super::wire::{CascadeWire, JobWire, ModeWire, OperationWire, TUTORIAL_KEYS, TutorialWire};
use crate::settings::{IdFormat, LimitSettings, Settings};

/// Longest job id, data store id, field name and (with `id_format = "any"`) record id.
pub const MAX_NAME_CHARS: usize = 128;

/// Why `.`/`..` ids are refused: they would address another URL of the record API.
const DOT_SEGMENT: &str =
    "\".\" and \"..\" (also percent-encoded) would change the data-store URL; use another id";

/// The configurable limits of SPEC §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    pub max_body_bytes: usize,
    pub max_operations: usize,
    pub max_children: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_body_bytes: 1 << 20,
            max_operations: 10_000,
            max_children: 1_000,
        }
    }
}

impl From<&LimitSettings> for JobLimits {
    fn from(l: &LimitSettings) -> Self {
        JobLimits {
            max_body_bytes: l.max_body_bytes,
            max_operations: l.max_operations_per_job,
            max_children: l.max_children_per_operation,
        }
    }
}

/// Everything parsing needs besides the body.
#[derive(Debug, Clone)]
pub struct ParseContext {
    pub limits: JobLimits,
    pub id_format: IdFormat,
    /// `[cxone].default_datastore`; `None` (or empty) means jobs must name one.
    pub default_datastore: Option<String>,
    /// The AMQP `message_id`, the default job id.
    pub message_id: Option<String>,
}

impl ParseContext {
    /// Limits and defaults from settings; set `message_id` per delivery.
    pub fn from_settings(settings: &Settings) -> Self {
        let datastore = &settings.cxone.default_datastore;
        ParseContext {
            limits: JobLimits::from(&settings.limits),
            id_format: settings.validation.id_format,
            default_datastore: (!datastore.is_empty()).then(|| datastore.clone()),
            message_id: None,
        }
    }

    /// The same context for one delivery.
    pub fn with_message_id(&self, message_id: Option<&str>) -> Self {
        ParseContext {
            message_id: message_id.map(str::to_owned),
            ..self.clone()
        }
    }
}

impl From<&Settings> for ParseContext {
    fn from(settings: &Settings) -> Self {
        ParseContext::from_settings(settings)
    }
}

impl Job {
    /// Parses a job body (SPEC §1): the documented shape or the tutorial's single operation.
    pub fn parse(body: &[u8], ctx: &ParseContext) -> Result<Job, JobError> {
        if body.len() > ctx.limits.max_body_bytes {
            return Err(JobError::PayloadTooLarge {
                size: body.len(),
                limit: ctx.limits.max_body_bytes,
            });
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| JobError::invalid("$", format!("not valid JSON: {e}{}", hint(body))))?;
        if let Ok(Some(key)) = super::unique_keys::first_duplicate(body) {
            let message = format!("the key {key:?} appears twice in one object");
            return Err(JobError::invalid("$", message));
        }
        let Value::Object(map) = value else {
            return Err(JobError::invalid("$", "expected a JSON object"));
        };
        if TUTORIAL_KEYS.iter().any(|k| map.contains_key(*k)) {
            let wire: TutorialWire = from_value(map)?;
            return from_tutorial(wire, ctx);
        }
        check_operation_count(&map, ctx.limits.max_operations)?;
        let wire: JobWire = from_value(map)?;
        from_wire(wire, ctx)
    }
}

/// What a body that is not JSON probably is, when its first bytes tell.
fn hint(body: &[u8]) -> &'static str {
    match body {
        [0xef, 0xbb, 0xbf, ..] => {
            " (the body starts with a UTF-8 byte-order mark, which JSON does not allow: RFC 8259 §8.1)"
        }
        [0xff, 0xfe, ..] | [0xfe, 0xff, ..] => " (the body looks UTF-16; send UTF-8)",
        [0x1f, 0x8b, ..] => " (the body looks gzip-compressed; publish the JSON uncompressed)",
        _ => "",
    }
}

/// Counts operations before deserializing them, so an oversized job fails with its own code.
fn check_operation_count(map: &Map<String, Value>, limit: usize) -> Result<(), JobError> {
    match map.get("operations") {
        Some(Value::Array(ops)) if ops.len() > limit => Err(JobError::TooManyOperations {
            count: ops.len(),
            limit,
        }),
        _ => Ok(()),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(map: Map<String, Value>) -> Result<T, JobError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = json_path(&e.path().to_string());
        JobError::invalid(path, e.into_inner().to_string())
    })
}

/// `operations[1].mode` → `$.operations[1].mode`; the root (`.`) → `$`.
fn json_path(inner: &str) -> String {
    match inner {
        "" | "." => "$".to_owned(),
        p if p.starts_with('[') => format!("${p}"),
        p => format!("$.{p}"),
    }
}

fn from_wire(wire: JobWire, ctx: &ParseContext) -> Result<Job, JobError> {
    let ops = &wire.operations;
    if ops.is_empty() {
        return Err(JobError::invalid(
            "$.operations",
            "at least one operation is required",
        ));
    }
    if ops.len() > ctx.limits.max_operations {
        return Err(JobError::TooManyOperations {
            count: ops.len(),
            limit: ctx.limits.max_operations,
        });
    }
    let job_id = job_id(wire.job_id, ctx)?;
    let datastore_id = datastore_id(wire.datastore_id, "$.datastore_id", ctx)?;
    let operations = wire
        .operations
        .into_iter()
        .enumerate()
        .map(|(i, op)| operation(op, &format!("$.operations[{i}]"), ctx))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Job {
        job_id,
        datastore_id,
        atomic: wire.atomic.unwrap_or(true),
        operations,
    })
}

fn from_tutorial(wire: TutorialWire, ctx: &ParseContext) -> Result<Job, JobError> {
    let datastore_id = datastore_id(wire.datastore_id, "$.datastoreId", ctx)?;
    let op = OperationWire {
        parent_id: wire.parent_id,
        relationship_field: wire.relationship_field,
        child_ids: wire.child_ids,
        mode: Some(ModeWire::Replace),
        cascade_action: wire.cascade_action,
    };
    let names = TutorialNames;
    let operation = operation_named(op, "$", ctx, &names)?;
    Ok(Job {
        job_id: job_id(None, ctx)?,
        datastore_id,
        atomic: true,
        operations: vec![operation],
    })
}

/// JSON key names used in error paths, which differ between the two shapes.
trait KeyNames {
    fn parent(&self) -> &'static str;
    fn field(&self) -> &'static str;
    fn children(&self) -> &'static str;
}

struct DocumentedNames;
struct TutorialNames;

impl KeyNames for DocumentedNames {
    fn parent(&self) -> &'static str {
        "parent_id"
    }
    fn field(&self) -> &'static str {
        "relationship_field"
    }
    fn children(&self) -> &'static str {
        "child_ids"
    }
}

impl KeyNames for TutorialNames {
    fn parent(&self) -> &'static str {
        "parentId"
    }
    fn field(&self) -> &'static str {
        "relationshipField"
    }
    fn children(&self) -> &'static str {
        "childIds"
    }
}

fn operation(op: OperationWire, path: &str, ctx: &ParseContext) -> Result<Operation, JobError> {
    operation_named(op, path, ctx, &DocumentedNames)
}

fn operation_named(
    op: OperationWire,
    path: &str,
    ctx: &ParseContext,
    names: &dyn KeyNames,
) -> Result<Operation, JobError> {
    let children_path = format!("{path}.{}", names.children());
    if op.child_ids.len() > ctx.limits.max_children {
        return Err(JobError::TooManyChildren {
            path: children_path,
            count: op.child_ids.len(),
            limit: ctx.limits.max_children,
        });
    }
    let parent = record_id(&op.parent_id, &format!("{path}.{}", names.parent()), ctx)?;
    let field = field_name(&op.relationship_field, &format!("{path}.{}", names.field()))?;
    let children = op
        .child_ids
        .iter()
        .enumerate()
        .map(|(i, id)| record_id(id, &format!("{children_path}[{i}]"), ctx))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Operation {
        parent,
        field,
        children,
        mode: match op.mode.unwrap_or(ModeWire::Replace) {
            ModeWire::Replace => Mode::Replace,
            ModeWire::Add => Mode::Add,
            ModeWire::Remove => Mode::Remove,
        },
        cascade: op.cascade_action.map(|c| match c {
            CascadeWire::None => CascadeAction::None,
            CascadeWire::Update => CascadeAction::Update,
            CascadeWire::Delete => CascadeAction::Delete,
        }),
    })
}

fn record_id(raw: &str, path: &str, ctx: &ParseContext) -> Result<RecordId, JobError> {
    let bad = |reason: &str| JobError::InvalidId {
        path: path.to_owned(),
        reason: format!("{reason}: {:?}", truncate(raw)),
    };
    if is_dot_segment(raw) {
        return Err(bad(DOT_SEGMENT));
    }
    match ctx.id_format {
        IdFormat::Uuid => {
            // Only the hyphenated form: it is the form the data store prints. Kept in lower case
            // (UUIDs are case-insensitive; the graph keeps store ids the same way), so a client
            // that writes upper case finds the store's records and its events name them as stored.
            if raw.len() != 36 || uuid::Uuid::try_parse(raw).is_err() {
                return Err(bad("not a hyphenated UUID"));
            }
            return Ok(RecordId::new(crate::graph::canonical_id(raw).as_ref()));
        }
        IdFormat::Any => {
            if !printable_name(raw) {
                return Err(bad("record ids are 1..=128 printable characters"));
            }
        }
    }
    Ok(RecordId::new(raw))
}

fn field_name(raw: &str, path: &str) -> Result<FieldName, JobError> {
    if !printable_name(raw) {
        return Err(JobError::invalid(
            path,
            "field names are 1..=128 printable characters",
        ));
    }
    Ok(FieldName::new(raw))
}

fn job_id(given: Option<String>, ctx: &ParseContext) -> Result<String, JobError> {
    match given {
        Some(id) if printable_name(&id) => Ok(id),
        Some(_) => Err(JobError::invalid(
            "$.job_id",
            "job ids are 1..=128 printable characters",
        )),
        None => Ok(ctx
            .message_id
            .as_deref()
            .filter(|m| printable_name(m))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())),
    }
}

fn datastore_id(given: Option<String>, path: &str, ctx: &ParseContext) -> Result<String, JobError> {
    let id = given
        .or_else(|| ctx.default_datastore.clone().filter(|d| !d.is_empty()))
        .ok_or_else(|| {
            JobError::invalid(path, "required: no [cxone].default_datastore is configured")
        })?;
    // The id becomes a URL path segment; characters that would change the path are refused.
    let bad = |reason: &str| JobError::InvalidId {
        path: path.to_owned(),
        reason: format!("{reason}: {:?}", truncate(&id)),
    };
    if is_dot_segment(&id) {
        return Err(bad(DOT_SEGMENT));
    }
    if !is_datastore_id(&id) {
        return Err(bad(
            "data store ids are 1..=128 printable characters without / ? # % or space",
        ));
    }
    Ok(id)
}

/// Whether `id` can name a data store: a printable name that stays one URL path segment (so it
/// also never holds the `/` that separates the parts of an event's `subject`).
pub fn is_datastore_id(id: &str) -> bool {
    printable_name(id) && !is_dot_segment(id) && !id.contains(['/', '?', '#', '%', ' '])
}

/// 1..=[`MAX_NAME_CHARS`] characters, none of them control characters: the rule for job ids,
/// field names and data store ids (and for ids read before a body parses).
pub fn printable_name(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_NAME_CHARS && !s.chars().any(char::is_control)
}

/// Offending values are echoed in messages; keep them short.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
