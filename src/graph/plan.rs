//! The planner: folds the accepted operations per (parent, field) into final values, one PATCH per
//! parent, each with the version to send in `If-Match` and the previous values for compensation.

use rustc_hash::FxHashMap;

use super::Graph;
use super::intern::Ix;
use super::overlay::Overlay;
use super::verdict::Verdict;
use crate::job::{CascadeAction, FieldName, Job, RecordId};

/// A relationship field's value as the PATCH body carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValue {
    pub field: FieldName,
    pub ids: Vec<RecordId>,
    pub cascade: CascadeAction,
}

/// One PATCH: the final values of every field the job changes on `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchPlan {
    pub parent: RecordId,
    /// `_version` of the parent in the graph the job was validated against (`If-Match`).
    pub expected_version: u64,
    pub fields: Vec<FieldValue>,
    /// The same fields before the job, to restore if a later PATCH of an atomic job fails.
    pub previous: Vec<FieldValue>,
    /// Job operations folded into this PATCH, in order.
    pub operation_indexes: Vec<usize>,
}

/// PATCHes in the order their parents first appear in the job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub patches: Vec<PatchPlan>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }
}

/// Folds the operations `verdict` accepted into one PATCH per parent.
pub fn plan(graph: &Graph, job: &Job, verdict: &Verdict) -> Plan {
    let mut overlay = Overlay::new(graph);
    // Ids become `RecordId`s (shared strings) once each, starting from the job's own.
    let mut names: Names = FxHashMap::default();
    let mut field_names: FxHashMap<usize, FieldName> = FxHashMap::default();
    let mut by_parent: FxHashMap<Ix, usize> = FxHashMap::default();
    let mut patches: Vec<(Ix, PatchPlan, Vec<usize>)> = Vec::new();
    for i in verdict.accepted() {
        let Some(op) = job.operations.get(i) else {
            continue;
        };
        let (Some(f), Some(p)) = (
            graph.field_index(op.field.as_str()),
            graph.ix(op.parent.as_str()),
        ) else {
            continue;
        };
        let mut kids: Vec<Ix> = Vec::with_capacity(op.children.len());
        for c in &op.children {
            if let Some(ix) = graph.child_ix(c.as_str(), op.mode) {
                names.entry(ix).or_insert_with(|| c.clone());
                kids.push(ix);
            }
        }
        names.entry(p).or_insert_with(|| op.parent.clone());
        field_names.entry(f).or_insert_with(|| op.field.clone());
        overlay.apply((f, p), i, op.mode, |c| op.cascade_after(c), &kids);
        let slot = *by_parent.entry(p).or_insert_with(|| {
            patches.push((p, new_patch(graph, p, op.parent.clone()), Vec::new()));
            patches.len() - 1
        });
        if let Some((_, patch, fields)) = patches.get_mut(slot) {
            patch.operation_indexes.push(i);
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
    }
    let patches = patches
        .into_iter()
        .map(|(p, mut patch, fields)| {
            for f in fields {
                let name = field_names.get(&f).cloned().unwrap_or_else(|| {
                    FieldName::new(graph.field_names.get(f).map(String::as_str).unwrap_or(""))
                });
                let base = Overlay::new(graph);
                patch
                    .fields
                    .push(value(&overlay, f, p, name.clone(), &mut names));
                patch.previous.push(value(&base, f, p, name, &mut names));
            }
            patch
        })
        .collect();
    Plan { patches }
}

type Names = FxHashMap<Ix, RecordId>;

fn new_patch(graph: &Graph, p: Ix, parent: RecordId) -> PatchPlan {
    PatchPlan {
        parent,
        expected_version: graph.versions.get(p as usize).copied().unwrap_or(0),
        fields: Vec::new(),
        previous: Vec::new(),
        operation_indexes: Vec::new(),
    }
}

fn value(view: &Overlay<'_>, f: usize, p: Ix, field: FieldName, names: &mut Names) -> FieldValue {
    FieldValue {
        field,
        ids: view
            .children(f, p)
            .iter()
            .map(|&c| {
                names
                    .entry(c)
                    .or_insert_with(|| RecordId::new(view.graph.ids.resolve(c)))
                    .clone()
            })
            .collect(),
        cascade: view.cascade(f, p),
    }
}
