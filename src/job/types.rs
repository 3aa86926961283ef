//! The domain types a parsed job is made of; holding one means the boundary checks passed.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A record id as written in the job (checked against `[validation].id_format`). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(Arc<str>);

/// A relationship field name as written in the job. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldName(Arc<str>);

macro_rules! string_newtype {
    ($t:ident) => {
        impl $t {
            /// Wraps a string that has already been checked (or comes from a trusted source such as
            /// the data store's own record list).
            pub fn new(s: &str) -> Self {
                $t(Arc::from(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

string_newtype!(RecordId);
string_newtype!(FieldName);

/// How an operation's child ids combine with the field's current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Replace,
    Add,
    Remove,
}

/// What the data store does to a field's children when the parent changes or is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CascadeAction {
    #[default]
    None,
    Update,
    Delete,
}

impl CascadeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CascadeAction::None => "none",
            CascadeAction::Update => "update",
            CascadeAction::Delete => "delete",
        }
    }
    /// The action `name` spells, in any case (`"Delete"`), as stores not our own may write it.
    pub fn from_name_any_case(name: &str) -> Option<Self> {
        [Self::None, Self::Update, Self::Delete]
            .into_iter()
            .find(|action| action.as_str().eq_ignore_ascii_case(name))
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replace => "replace",
            Mode::Add => "add",
            Mode::Remove => "remove",
        }
    }
}

/// One parent–child change. `cascade` is `None` when the job did not say: a replace then sets
/// `none` (SPEC default), while add and remove keep the field's current cascade action, so that
/// removing one child does not silently drop a `delete` cascade on the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub parent: RecordId,
    pub field: FieldName,
    pub children: Vec<RecordId>,
    pub mode: Mode,
    pub cascade: Option<CascadeAction>,
}

impl Operation {
    /// The field's cascade action once this operation is applied over `current`.
    pub fn cascade_after(&self, current: CascadeAction) -> CascadeAction {
        match (self.cascade, self.mode) {
            (Some(c), _) => c,
            (None, Mode::Replace) => CascadeAction::None,
            (None, _) => current,
        }
    }
}

/// A parsed job: at least one operation, every limit and id format checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    pub datastore_id: String,
    pub atomic: bool,
    pub operations: Vec<Operation>,
}
