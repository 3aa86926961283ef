//! `parent_conflict` (unique_parent) and `ownership_conflict` (a child held under cascade delete
//! has no other parent): both are about the parents of a child that gained an edge.

use rustc_hash::FxHashSet;

use super::{Blame, Ctx, Finding};
use crate::graph::intern::Ix;
use crate::graph::verdict::ViolationCode;
use crate::job::CascadeAction;

pub fn check_unique_parent(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: FxHashSet<(usize, Ix)> = FxHashSet::default();
    for ch in ctx.changes {
        let f = ch.key.0;
        if !ctx.constraints(f).is_some_and(|c| c.unique_parent) {
            continue;
        }
        for c in ch.new_edges(ctx.view) {
            if !seen.insert((f, c)) {
                continue;
            }
            let parents = ctx.view.parents(f, c);
            if parents.len() > 1 {
                out.push(conflict(ctx, f, c, &parents));
            }
        }
    }
    out
}

fn conflict(ctx: &Ctx<'_, '_>, f: usize, c: Ix, parents: &[Ix]) -> Finding {
    let names: Vec<&str> = parents.iter().map(|&p| ctx.name(p)).collect();
    let mut records = vec![c];
    records.extend_from_slice(parents);
    Finding {
        code: ViolationCode::ParentConflict,
        message: format!(
            "record {} would have {} parents in {} (unique_parent): {}",
            ctx.name(c),
            parents.len(),
            ctx.field_name(f),
            names.join(", ")
        ),
        records,
        blame: parents.iter().map(|&p| Blame::Edge(f, p, c)).collect(),
    }
}

pub fn check_ownership(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: FxHashSet<Ix> = FxHashSet::default();
    let mut became_delete: FxHashSet<(usize, Ix)> = FxHashSet::default();
    let mut candidates: Vec<Ix> = Vec::new();
    for ch in ctx.changes {
        let (f, p) = ch.key;
        let now_delete = ctx.view.cascade(f, p) == CascadeAction::Delete;
        if now_delete && ch.before_cascade != CascadeAction::Delete {
            became_delete.insert((f, p));
            candidates.extend_from_slice(ctx.view.children(f, p));
        }
        candidates.extend(ch.new_edges(ctx.view));
    }
    for c in candidates {
        if seen.insert(c)
            && let Some(finding) = owned_twice(ctx, c, &became_delete)
        {
            out.push(finding);
        }
    }
    out
}

/// A finding when `c` is held under cascade delete and has another parent record.
fn owned_twice(
    ctx: &Ctx<'_, '_>,
    c: Ix,
    became_delete: &FxHashSet<(usize, Ix)>,
) -> Option<Finding> {
    let mut edges: Vec<(usize, Ix)> = Vec::new();
    for f in 0..ctx.view.field_count() {
        edges.extend(ctx.view.parents(f, c).into_iter().map(|p| (f, p)));
    }
    let holders: Vec<(usize, Ix)> = edges
        .iter()
        .copied()
        .filter(|&(f, p)| ctx.view.cascade(f, p) == CascadeAction::Delete)
        .collect();
    let mut parents: Vec<Ix> = edges.iter().map(|&(_, p)| p).collect();
    parents.sort_unstable();
    parents.dedup();
    let &(hf, holder) = holders.first()?;
    if parents.len() < 2 {
        return None;
    }
    let others: Vec<&str> = parents
        .iter()
        .filter(|&&p| p != holder)
        .map(|&p| ctx.name(p))
        .collect();
    let mut blame: Vec<Blame> = edges.iter().map(|&(f, p)| Blame::Edge(f, p, c)).collect();
    blame.extend(
        holders
            .iter()
            .filter(|h| became_delete.contains(h))
            .map(|&(f, p)| Blame::Key(f, p)),
    );
    let mut records = vec![c];
    records.extend(parents);
    Some(Finding {
        code: ViolationCode::OwnershipConflict,
        message: format!(
            "record {} would be held by {} under cascade delete in {} but also has parent(s) {}",
            ctx.name(c),
            ctx.name(holder),
            ctx.field_name(hf),
            others.join(", ")
        ),
        records,
        blame,
    })
}
