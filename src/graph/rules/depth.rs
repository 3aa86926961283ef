//! `max_depth_exceeded`: the longest downward walk along one acyclic field, in edges, is at most
//! `max_depth` (fields with `acyclic: false` have no hierarchy and no depth). A new too-long walk uses a new edge p → c, and its length is
//! up(p) + 1 + down(c); both are computed level by level on the changed graph, capped at
//! max_depth + 1, so only the ancestors of p and the subtree of c are walked.

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Ctx, Finding};
use crate::graph::intern::Ix;
use crate::graph::overlay::Overlay;
use crate::graph::rules::Blame;
use crate::graph::verdict::ViolationCode;

pub fn check(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut up: FxHashMap<(usize, Ix), u64> = FxHashMap::default();
    let mut down: FxHashMap<(usize, Ix), u64> = FxHashMap::default();
    // A walk longer than the number of ids goes round a cycle, so it is unbounded anyway.
    let ids = ctx.view.graph.ids.len() as u64 + 1;
    for ch in ctx.changes {
        let (f, p) = ch.key;
        // Depth is a property of hierarchies: a field that allows cycles has none to measure.
        let Some(max) = ctx
            .constraints(f)
            .filter(|c| c.acyclic)
            .map(|c| u64::from(c.max_depth))
        else {
            continue;
        };
        let cap = (max + 1).min(ids);
        for c in ch.new_edges(ctx.view) {
            let above = *up
                .entry((f, p))
                .or_insert_with(|| longest(ctx.view, f, p, cap, Direction::Up));
            let below = *down
                .entry((f, c))
                .or_insert_with(|| longest(ctx.view, f, c, cap, Direction::Down));
            let depth = above + 1 + below;
            if depth > max {
                let capped = above >= cap || below >= cap;
                let mut records = walk(ctx.view, f, p, above, Direction::Up);
                records.reverse();
                records.extend(walk(ctx.view, f, c, below, Direction::Down));
                out.push(finding(ctx, (f, p, c), records, depth, max, capped));
                break;
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Length of the longest walk from `start` (capped at `cap`): the last level that is not empty.
fn longest(view: &Overlay<'_>, f: usize, start: Ix, cap: u64, dir: Direction) -> u64 {
    let mut level = vec![start];
    let mut next_set: FxHashSet<Ix> = FxHashSet::default();
    let mut length = 0;
    while length < cap {
        next_set.clear();
        for &node in &level {
            match dir {
                Direction::Down => next_set.extend(view.children(f, node).iter().copied()),
                Direction::Up => next_set.extend(view.parents(f, node)),
            }
        }
        if next_set.is_empty() {
            break;
        }
        level.clear();
        level.extend(next_set.iter().copied());
        length += 1;
    }
    length
}

/// One walk of `length` edges from `start` (start included), found level by level with the node
/// each was reached from: the records a confirmation re-reads.
fn walk(view: &Overlay<'_>, f: usize, start: Ix, length: u64, dir: Direction) -> Vec<Ix> {
    let mut from: FxHashMap<Ix, Ix> = FxHashMap::default();
    let mut level = vec![start];
    for _ in 0..length {
        let mut next = Vec::new();
        for &node in &level {
            let neighbours = match dir {
                Direction::Down => view.children(f, node).to_vec(),
                Direction::Up => view.parents(f, node),
            };
            for n in neighbours {
                if n != start && !from.contains_key(&n) {
                    from.insert(n, node);
                    next.push(n);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    let mut path = vec![level[0]];
    while let Some(&prev) = path.last().and_then(|n| from.get(n)) {
        path.push(prev);
    }
    path.reverse();
    path
}

fn finding(
    ctx: &Ctx<'_, '_>,
    (f, p, c): (usize, Ix, Ix),
    records: Vec<Ix>,
    depth: u64,
    max: u64,
    capped: bool,
) -> Finding {
    let at_least = if capped { "at least " } else { "" };
    let path: Vec<String> = records.iter().map(|&r| ctx.name(r).to_string()).collect();
    Finding {
        code: ViolationCode::MaxDepthExceeded,
        message: format!(
            "depth of {} would reach {at_least}{depth} along {} (new link {} → {}; max_depth {max})",
            ctx.field_name(f),
            path.join(" → "),
            ctx.name(p),
            ctx.name(c)
        ),
        records,
        blame: vec![Blame::Edge(f, p, c)],
    }
}
