//! `max_children_exceeded`: a changed parent with more children than its field allows.

use super::{Blame, Ctx, Finding};
use crate::graph::verdict::ViolationCode;

pub fn check(ctx: &Ctx<'_, '_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for ch in ctx.changes {
        let (f, p) = ch.key;
        let Some(max) = ctx.constraints(f).and_then(|c| c.max_children) else {
            continue;
        };
        let n = ctx.view.children(f, p).len();
        // Only a change that adds children can break the limit (a valid "before" is assumed).
        if n as u64 > u64::from(max) && ch.new_edges(ctx.view).next().is_some() {
            out.push(Finding {
                code: ViolationCode::MaxChildrenExceeded,
                message: format!(
                    "record {} would have {n} children in {} (max_children {max})",
                    ctx.name(p),
                    ctx.field_name(f)
                ),
                records: vec![p],
                blame: vec![Blame::Key(f, p)],
            });
        }
    }
    out
}
