//! The relationship graph of one data store, the validator of SPEC §2 and the PATCH planner.
//!
//! [`Graph`] holds every record id (interned), its `_version`, and per relationship field the
//! children and parents of each record. [`validate`] checks a job against "graph + this job" through
//! an overlay of the changed adjacency (the graph is never copied); [`plan`] folds the accepted
//! operations into at most one PATCH per parent. Everything here is synchronous and does no I/O.

mod adjacency;
mod build;
mod fold;
mod intern;
mod overlay;
mod plan;
mod recheck;
mod reserve;
mod rules;
#[cfg(test)]
mod tests;
mod validate;
mod verdict;

use adjacency::{Children, Parents};
use intern::{Interner, Ix};

pub use build::GraphBuilder;
pub use intern::canonical as canonical_id;
pub use plan::{FieldValue, PatchPlan, Plan, plan};
pub use recheck::{Unsupported, unsupported_writes};
pub use reserve::{Bound, ReservationId, Reservations};
pub use validate::{validate, validate_reserved};
pub use verdict::{JobOutcome, OpVerdict, Verdict, Violation, ViolationCode};

use crate::error::ErrorClass;
use crate::job::{CascadeAction, Mode};
use crate::schema::Schema;

/// `_version` of an id that is referenced by some record but is not (or no longer) a record.
const ABSENT: u64 = u64::MAX;

/// Why the graph could not take a record or an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("{0:?} is not a relationship field of this graph's schema")]
    UnknownField(String),
    #[error("record {0:?} is not in the graph")]
    UnknownRecord(String),
    #[error("graph is larger than its 32-bit indexes allow")]
    TooLarge,
}

impl GraphError {
    pub fn code(&self) -> &'static str {
        match self {
            GraphError::UnknownField(_) => "unknown_field",
            GraphError::UnknownRecord(_) => "record_not_found",
            GraphError::TooLarge => "graph_too_large",
        }
    }

    /// A graph that disagrees with the data store is cured by rebuilding it: transient.
    pub fn class(&self) -> ErrorClass {
        match self {
            GraphError::TooLarge => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        }
    }
}

/// Adjacency of one relationship field.
#[derive(Debug, Clone, Default)]
struct FieldGraph {
    children: Children,
    parents: Parents,
}

/// The relationship graph of one data store, built by [`GraphBuilder`].
#[derive(Debug, Clone)]
pub struct Graph {
    ids: Interner,
    versions: Vec<u64>,
    fields: Vec<FieldGraph>,
    field_names: Vec<String>,
    present: usize,
}

impl Graph {
    /// Records in the graph (ids only referenced by other records are not counted).
    pub fn record_count(&self) -> usize {
        self.present
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ix(id).is_some()
    }

    /// `id` as the store spells it (a record the store printed as an upper-case UUID), for the
    /// URLs and bodies of requests; `id` itself when the graph does not know it.
    pub fn store_spelling<'a>(&'a self, id: &'a str) -> &'a str {
        self.ix(id).map_or(id, |ix| self.ids.spelling(ix))
    }

    /// The record's `_version`, for `If-Match`.
    pub fn version(&self, id: &str) -> Option<u64> {
        self.ix(id)
            .and_then(|ix| self.versions.get(ix as usize).copied())
    }

    /// The children and cascade action of `parent` in `field`, `None` for an unknown record or
    /// field.
    pub fn children(&self, parent: &str, field: &str) -> Option<(Vec<&str>, CascadeAction)> {
        let f = self.field_index(field)?;
        let p = self.ix(parent)?;
        let (kids, cascade) = self.fields.get(f)?.children.get(p);
        Some((kids.iter().map(|&c| self.ids.resolve(c)).collect(), cascade))
    }

    /// The relationship fields this graph was built for, in schema order.
    pub fn field_names(&self) -> &[String] {
        &self.field_names
    }

    /// True when `schema` has exactly the relationship fields this graph was built with.
    pub fn is_built_for(&self, schema: &Schema) -> bool {
        let names = schema.relationships().iter().map(|f| f.name.as_str());
        names.eq(self.field_names.iter().map(String::as_str))
    }

    /// Records a successful PATCH of one field: new children, cascade and the returned version.
    pub fn apply_patch<S: AsRef<str>>(
        &mut self,
        parent: &str,
        field: &str,
        children: &[S],
        cascade: CascadeAction,
        new_version: u64,
    ) -> Result<(), GraphError> {
        let f = self
            .field_index(field)
            .ok_or_else(|| GraphError::UnknownField(field.to_owned()))?;
        let p = self
            .ix(parent)
            .ok_or_else(|| GraphError::UnknownRecord(parent.to_owned()))?;
        let mut new = Vec::with_capacity(children.len());
        for c in children {
            let ix = self.intern_reference(c.as_ref())?;
            if !new.contains(&ix) {
                new.push(ix);
            }
        }
        self.set_edges(f, p, &new, cascade)?;
        if let Some(v) = self.versions.get_mut(p as usize) {
            *v = new_version;
        }
        Ok(())
    }

    /// Makes `id` a present record with `version` (a record created behind the worker, found by
    /// a GET); its relationship values are set separately with [`Graph::apply_patch`].
    pub fn upsert_record(&mut self, id: &str, version: u64) -> Result<(), GraphError> {
        let ix = self.intern_reference(id)?;
        if let Some(v) = self.versions.get_mut(ix as usize) {
            if *v == ABSENT {
                self.present += 1;
            }
            *v = version.min(ABSENT - 1);
        }
        Ok(())
    }

    /// Sets a record's version (after a PATCH of non-relationship fields, or a fresh GET).
    pub fn set_version(&mut self, id: &str, version: u64) -> Result<(), GraphError> {
        let ix = self
            .ix(id)
            .ok_or_else(|| GraphError::UnknownRecord(id.to_owned()))?;
        if let Some(v) = self.versions.get_mut(ix as usize) {
            *v = version;
        }
        Ok(())
    }

    /// Forgets a deleted record: its edges in both directions, in every field.
    pub fn remove_record(&mut self, id: &str) {
        let Some(ix) = self.ix(id) else {
            return;
        };
        for f in 0..self.fields.len() {
            let _ = self.set_edges(f, ix, &[], CascadeAction::None);
            let parents: Vec<Ix> = self.fields[f].parents.iter(ix).collect();
            for p in parents {
                let (kids, cascade) = self.fields[f].children.get(p);
                let kept: Vec<Ix> = kids.iter().copied().filter(|&k| k != ix).collect();
                let _ = self.set_edges(f, p, &kept, cascade);
            }
        }
        if let Some(v) = self.versions.get_mut(ix as usize) {
            *v = ABSENT;
            self.present = self.present.saturating_sub(1);
        }
    }

    /// Bytes the graph holds on the heap, counted from the capacities of its vectors and tables.
    pub fn heap_bytes(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|f| f.children.heap_bytes() + f.parents.heap_bytes())
            .sum();
        self.ids.heap_bytes() + self.versions.capacity() * 8 + fields
    }

    fn set_edges(
        &mut self,
        f: usize,
        p: Ix,
        new: &[Ix],
        cascade: CascadeAction,
    ) -> Result<(), GraphError> {
        let Some(field) = self.fields.get_mut(f) else {
            return Err(GraphError::TooLarge);
        };
        let old = field.children.get(p).0.to_vec();
        for &c in old.iter().filter(|c| !new.contains(c)) {
            field.parents.remove(c, p);
        }
        for &c in new.iter().filter(|c| !old.contains(c)) {
            field.parents.add(c, p);
        }
        field.children.set(p, new, cascade)
    }

    /// A present record's index.
    fn ix(&self, id: &str) -> Option<Ix> {
        let ix = self.ids.get(id)?;
        (self.versions.get(ix as usize).copied()? != ABSENT).then_some(ix)
    }

    /// The index of a child named by an operation in `mode`. Adds and replaces name records; a
    /// remove may also name an id the graph only references (a record deleted behind the worker,
    /// whose reference it clears): after the job it is no child, so it need not exist (SPEC §2).
    fn child_ix(&self, id: &str, mode: Mode) -> Option<Ix> {
        match mode {
            Mode::Remove => self.ids.get(id),
            Mode::Add | Mode::Replace => self.ix(id),
        }
    }

    fn field_index(&self, name: &str) -> Option<usize> {
        self.field_names.iter().position(|n| n == name)
    }

    /// Interns an id seen as a child; it stays absent until the record itself is known.
    fn intern_reference(&mut self, id: &str) -> Result<Ix, GraphError> {
        let ix = self.ids.intern(id)?;
        let n = self.ids.len();
        if self.versions.len() < n {
            self.versions.resize(n, ABSENT);
            for field in &mut self.fields {
                field.children.grow(n);
                field.parents.grow(n);
            }
        }
        Ok(ix)
    }
}
