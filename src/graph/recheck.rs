//! A non-atomic job written in part: which of its landed PATCHes relied on one that did not land.
//! Such a job's operations are accepted in order, each given the ones accepted before it, so a
//! landed operation may hold only thanks to an unwritten one (a swap whose remove failed while its
//! add landed leaves a cycle). Those PATCHes must be undone.

use super::Graph;
use super::intern::Ix;
use super::overlay::{Key, Overlay};
use super::plan::Plan;
use super::validate::run;
use super::verdict::OpVerdict;
use crate::job::{CascadeAction, Job};
use crate::schema::Schema;

/// What a partly written job must undo.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unsupported {
    /// Indexes of the PATCHes to write back to their previous values.
    pub patches: Vec<usize>,
    /// The operations that no longer pass; the others in those PATCHes go with them (one PATCH
    /// per parent).
    pub refused: Vec<usize>,
}

/// The PATCHes of `plan` to undo so that the state `graph` holds breaks no rule for the job's
/// operations. `written[i]` says PATCH `i` landed (the graph holds its values); the others did
/// not. Checks the landed operations in order against the graph as it was before the job, drops
/// every PATCH holding one that no longer passes, and checks again until all pass.
pub fn unsupported_writes(
    graph: &Graph,
    schema: &Schema,
    job: &Job,
    plan: &Plan,
    written: &[bool],
) -> Unsupported {
    if !graph.is_built_for(schema) {
        return Unsupported::default();
    }
    let before = values_before(graph, plan, written);
    let mut kept = written.to_vec();
    let mut refused_all = Vec::new();
    loop {
        let mut ops: Vec<usize> = plan
            .patches
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| **kept)
            .flat_map(|(patch, _)| patch.operation_indexes.iter().copied())
            .collect();
        ops.sort_unstable();
        let landed = Job {
            job_id: job.job_id.clone(),
            datastore_id: job.datastore_id.clone(),
            atomic: false,
            operations: ops
                .iter()
                .filter_map(|&i| job.operations.get(i).cloned())
                .collect(),
        };
        let verdict = run(
            Overlay::with_context(graph, before.clone()),
            schema,
            &landed,
        );
        let refused: Vec<usize> = verdict
            .operations
            .iter()
            .zip(&ops)
            .filter(|(v, _)| !v.is_accepted() && !matches!(v, OpVerdict::Blocked))
            .map(|(_, &i)| i)
            .collect();
        if refused.is_empty() {
            break;
        }
        refused_all.extend(refused.iter().copied());
        for (patch, kept) in plan.patches.iter().zip(kept.iter_mut()) {
            if patch.operation_indexes.iter().any(|i| refused.contains(i)) {
                *kept = false;
            }
        }
    }
    refused_all.sort_unstable();
    Unsupported {
        patches: (0..plan.patches.len())
            .filter(|&i| written.get(i) == Some(&true) && kept.get(i) != Some(&true))
            .collect(),
        refused: refused_all,
    }
}

/// The landed PATCHes' fields as they were before the job, in graph indexes.
fn values_before(
    graph: &Graph,
    plan: &Plan,
    written: &[bool],
) -> Vec<(Key, Vec<Ix>, CascadeAction)> {
    let mut out = Vec::new();
    for (patch, _) in plan.patches.iter().zip(written).filter(|(_, w)| **w) {
        let Some(p) = graph.ids.get(patch.parent.as_str()) else {
            continue;
        };
        for value in &patch.previous {
            let Some(f) = graph.field_index(value.field.as_str()) else {
                continue;
            };
            let kids = value
                .ids
                .iter()
                .filter_map(|id| graph.ids.get(id.as_str()))
                .collect();
            out.push(((f, p), kids, value.cascade));
        }
    }
    out
}
