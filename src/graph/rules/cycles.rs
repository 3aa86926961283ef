//! `cycle_detected`: a cycle in the union of every acyclic field. A new cycle must use a new edge
//! p → c, so for each one we search upward from p (ancestors are few: depth is bounded) for c.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Blame, Ctx, Finding};
use crate::graph::intern::Ix;
use crate::graph::verdict::ViolationCode;

pub fn check(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    let acyclic: Vec<usize> = (0..ctx.view.field_count())
        .filter(|&f| ctx.constraints(f).is_some_and(|c| c.acyclic))
        .collect();
    let mut out = Vec::new();
    let mut seen: FxHashSet<Vec<Ix>> = FxHashSet::default();
    let mut search = Search::default();
    for ch in ctx.changes {
        let (f, p) = ch.key;
        if !acyclic.contains(&f) {
            continue;
        }
        for c in ch.new_edges(ctx.view) {
            // A child without children in any acyclic field cannot lead back to p.
            if acyclic.iter().all(|&g| ctx.view.children(g, c).is_empty()) {
                continue;
            }
            let Some(cycle) = search.path_up(ctx, &acyclic, p, c) else {
                continue;
            };
            let mut key: Vec<Ix> = cycle.iter().map(|&(node, _)| node).collect();
            key.sort_unstable();
            if seen.insert(key) {
                out.push(finding(ctx, f, p, &cycle));
            }
        }
    }
    out
}

/// Reused breadth-first search state.
#[derive(Default)]
struct Search {
    /// node → (the child it was reached from, field of that edge).
    pred: FxHashMap<Ix, (Ix, usize)>,
    queue: VecDeque<Ix>,
}

impl Search {
    /// The downward path c → … → p as (node, field of the edge to the next node), when c is an
    /// ancestor of p in the union of `fields`.
    fn path_up(
        &mut self,
        ctx: &Ctx<'_, '_>,
        fields: &[usize],
        p: Ix,
        c: Ix,
    ) -> Option<Vec<(Ix, usize)>> {
        self.pred.clear();
        self.queue.clear();
        self.queue.push_back(p);
        let mut found = false;
        'bfs: while let Some(y) = self.queue.pop_front() {
            for &g in fields {
                for x in ctx.view.parents(g, y) {
                    if x == p || self.pred.contains_key(&x) {
                        continue;
                    }
                    self.pred.insert(x, (y, g));
                    if x == c {
                        found = true;
                        break 'bfs;
                    }
                    self.queue.push_back(x);
                }
            }
        }
        if !found {
            return None;
        }
        let mut path = Vec::new();
        let mut node = c;
        while node != p {
            let &(next, g) = self.pred.get(&node)?;
            path.push((node, g));
            node = next;
        }
        Some(path)
    }
}

/// `path` is c → … → p; the cycle is p → c → … → p, the first edge in field `f`.
fn finding(ctx: &Ctx<'_, '_>, f: usize, p: Ix, path: &[(Ix, usize)]) -> Finding {
    let mut nodes = vec![p];
    let mut fields = vec![f];
    for &(node, g) in path {
        nodes.push(node);
        fields.push(g);
    }
    let mut shown: Vec<&str> = nodes.iter().map(|&n| ctx.name(n)).collect();
    shown.push(ctx.name(p));
    let field_list: Vec<&str> = fields.iter().map(|&g| ctx.field_name(g)).collect();
    let blame = nodes
        .iter()
        .zip(fields.iter())
        .enumerate()
        .map(|(i, (&from, &g))| {
            let to = nodes.get(i + 1).copied().unwrap_or(p);
            Blame::Edge(g, from, to)
        })
        .collect();
    Finding {
        code: ViolationCode::CycleDetected,
        message: format!(
            "would create a cycle: {} (fields: {})",
            shown.join(" → "),
            field_list.join(", ")
        ),
        records: nodes,
        blame,
    }
}
