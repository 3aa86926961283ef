//! `validate`: a job against "graph + this job" (SPEC §2).
//!
//! Per operation, the local rules first (in precedence order): `unknown_field`,
//! `not_relationship_field`, `record_not_found`, `duplicate_child`, self-reference
//! (`cycle_detected`; for replace and add, a remove cannot create an edge). An operation failing
//! one takes no further part. Then the graph rules on the state after the operations:
//! - atomic job: all remaining operations are folded together and every rule is checked once on
//!   the final state, so only the combination matters (a transient excess fixed by a later
//!   operation is fine). Violations are attributed to the operations that added the edges
//!   involved; the job is rejected when anything is violated, and operations not at fault are
//!   `Blocked`.
//! - non-atomic job: operations are considered in order, and one is accepted only if the graph
//!   plus the previously accepted operations plus it breaks no rule; it is then reported with the
//!   first broken rule in precedence order.

use super::Graph;
use super::intern::Ix;
use super::overlay::{Key, Overlay};
use super::reserve::{Bound, Reservations};
use super::rules::{self, Blame, Change, Ctx, Finding};
use super::verdict::{OpVerdict, Verdict, Violation, ViolationCode};
use crate::job::{CascadeAction, Job, Mode, Operation, RecordId};
use crate::schema::{Constraints, FieldLookup, Schema};

/// An operation that passed the local rules, in graph indexes.
pub(crate) struct Resolved {
    pub key: Key,
    pub kids: Vec<Ix>,
    pub mode: Mode,
    pub cascade: Option<CascadeAction>,
}

impl Resolved {
    pub fn cascade_after(&self, current: CascadeAction) -> CascadeAction {
        match (self.cascade, self.mode) {
            (Some(c), _) => c,
            (None, Mode::Replace) => CascadeAction::None,
            (None, _) => current,
        }
    }
}

/// Validates `job` against `graph` (built for `schema`) without changing either.
pub fn validate(graph: &Graph, schema: &Schema, job: &Job) -> Verdict {
    run(Overlay::new(graph), schema, job)
}

/// Validates `job` against `graph` plus other jobs' pending reservations seen through `bound`
/// (see [`Reservations`]). The job's own parents must not be reserved.
pub fn validate_reserved(
    graph: &Graph,
    schema: &Schema,
    job: &Job,
    pending: &Reservations,
    bound: Bound,
) -> Verdict {
    if pending.is_empty() {
        return validate(graph, schema, job);
    }
    run(
        Overlay::with_reservations(graph, pending, bound),
        schema,
        job,
    )
}

pub(super) fn run(start: Overlay<'_>, schema: &Schema, job: &Job) -> Verdict {
    let graph = start.graph;
    if !graph.is_built_for(schema) {
        return outdated(job);
    }
    let constraints: Vec<Constraints> = schema
        .relationships()
        .iter()
        .map(|f| f.constraints)
        .collect();
    let resolved: Vec<Result<Resolved, Violation>> = job
        .operations
        .iter()
        .enumerate()
        .map(|(i, op)| resolve(graph, schema, i, op))
        .collect();
    if job.atomic {
        atomic(start, &constraints, resolved)
    } else {
        sequential(start, &constraints, resolved)
    }
}

fn atomic(
    mut overlay: Overlay<'_>,
    constraints: &[Constraints],
    resolved: Vec<Result<Resolved, Violation>>,
) -> Verdict {
    let graph = overlay.graph;
    for (i, r) in resolved.iter().enumerate() {
        if let Ok(r) = r {
            overlay.apply(r.key, i, r.mode, |c| r.cascade_after(c), &r.kids);
        }
    }
    // The job's keys are not reserved, so their "before" is the graph's.
    let base = Overlay::new(graph);
    let mut keys: Vec<Key> = overlay.keys().collect();
    keys.sort_unstable();
    let changes: Vec<Change> = keys
        .into_iter()
        .map(|k| Change::capture(&base, k))
        .collect();
    let ctx = Ctx {
        view: &overlay,
        changes: &changes,
        constraints,
    };
    let findings = rules::check_all(&ctx);
    let mut violations: Vec<Violation> = Vec::new();
    let mut operations: Vec<Option<OpVerdict>> = Vec::with_capacity(resolved.len());
    for r in &resolved {
        operations.push(r.as_ref().err().map(|v| OpVerdict::Rejected(v.clone())));
        if let Err(v) = r {
            violations.push(v.clone());
        }
    }
    for finding in findings {
        let ops = blamed_ops(&overlay, &resolved, &finding.blame);
        violations.push(violation(graph, finding, ops));
    }
    violations.sort_by_key(|v| v.code);
    for v in &violations {
        for &i in &v.operations {
            if let Some(slot @ None) = operations.get_mut(i) {
                *slot = Some(OpVerdict::Rejected(v.clone()));
            }
        }
    }
    let fallback = if violations.is_empty() {
        OpVerdict::Accepted
    } else {
        OpVerdict::Blocked
    };
    Verdict {
        atomic: true,
        operations: operations
            .into_iter()
            .map(|o| o.unwrap_or_else(|| fallback.clone()))
            .collect(),
        violations,
    }
}

fn sequential(
    mut overlay: Overlay<'_>,
    constraints: &[Constraints],
    resolved: Vec<Result<Resolved, Violation>>,
) -> Verdict {
    let graph = overlay.graph;
    let mut operations = Vec::with_capacity(resolved.len());
    let mut violations = Vec::new();
    for (i, r) in resolved.into_iter().enumerate() {
        let r = match r {
            Ok(r) => r,
            Err(v) => {
                violations.push(v.clone());
                operations.push(OpVerdict::Rejected(v));
                continue;
            }
        };
        let change = Change::capture(&overlay, r.key);
        let previous = overlay.apply(r.key, i, r.mode, |c| r.cascade_after(c), &r.kids);
        let changes = [change];
        let ctx = Ctx {
            view: &overlay,
            changes: &changes,
            constraints,
        };
        let first = rules::check_first(&ctx).into_iter().next();
        match first {
            None => operations.push(OpVerdict::Accepted),
            Some(finding) => {
                overlay.restore(r.key, previous);
                let v = violation(graph, finding, vec![i]);
                violations.push(v.clone());
                operations.push(OpVerdict::Rejected(v));
            }
        }
    }
    violations.sort_by_key(|v| v.code);
    Verdict {
        atomic: false,
        operations,
        violations,
    }
}

/// The local rules of one operation, in precedence order.
fn resolve(
    graph: &Graph,
    schema: &Schema,
    i: usize,
    op: &Operation,
) -> Result<Resolved, Violation> {
    let local = |code, message: String, records: Vec<RecordId>| Violation {
        code,
        message,
        records,
        operations: vec![i],
    };
    let f = match schema.lookup(op.field.as_str()) {
        FieldLookup::Unknown => {
            let msg = format!("{} is not a field of this data store", op.field);
            return Err(local(ViolationCode::UnknownField, msg, vec![]));
        }
        FieldLookup::NotRelationship(kind) => {
            let msg = format!("{} is a {kind} field, not a relationship field", op.field);
            return Err(local(ViolationCode::NotRelationshipField, msg, vec![]));
        }
        FieldLookup::Relationship(id, _) => id.index(),
    };
    let mut missing: Vec<RecordId> = Vec::new();
    let parent = graph.ix(op.parent.as_str());
    if parent.is_none() {
        missing.push(op.parent.clone());
    }
    let mut kids = Vec::with_capacity(op.children.len());
    for c in &op.children {
        match graph.child_ix(c.as_str(), op.mode) {
            Some(ix) => kids.push(ix),
            // An id the graph never held: a no-op for a remove, whatever the graph's age.
            None if op.mode == Mode::Remove => {}
            None if missing.contains(c) => {}
            None => missing.push(c.clone()),
        }
    }
    let Some(p) = parent.filter(|_| missing.is_empty()) else {
        let list: Vec<&str> = missing.iter().map(RecordId::as_str).collect();
        let msg = format!("records not found: {}", list.join(", "));
        return Err(local(ViolationCode::RecordNotFound, msg, missing));
    };
    // By name, so an id a remove names twice counts even when the graph never held it.
    if let Some(dup) = first_duplicate(&op.children) {
        let id = dup.clone();
        let msg = format!("child {id} appears more than once in the operation");
        return Err(local(ViolationCode::DuplicateChild, msg, vec![id]));
    }
    if op.mode != Mode::Remove && kids.contains(&p) {
        let msg = format!("record {0} cannot be its own child: {0} → {0}", op.parent);
        return Err(local(
            ViolationCode::CycleDetected,
            msg,
            vec![op.parent.clone()],
        ));
    }
    Ok(Resolved {
        key: (f, p),
        kids,
        mode: op.mode,
        cascade: op.cascade,
    })
}

fn first_duplicate(children: &[RecordId]) -> Option<&RecordId> {
    let mut seen = rustc_hash::FxHashSet::default();
    children.iter().find(|c| !seen.insert(c.as_str()))
}

/// The operations behind a finding: for an edge, the last operation that put the child there; for
/// a whole entry, every operation folded into it.
fn blamed_ops(
    overlay: &Overlay<'_>,
    resolved: &[Result<Resolved, Violation>],
    blame: &[Blame],
) -> Vec<usize> {
    let mut ops = Vec::new();
    for b in blame {
        let (key, child) = match *b {
            Blame::Edge(f, p, c) => ((f, p), Some(c)),
            Blame::Key(f, p) => ((f, p), None),
        };
        let Some(entry) = overlay.entry(key) else {
            continue;
        };
        match child {
            None => ops.extend_from_slice(&entry.ops),
            Some(c) => {
                let putter = entry.ops.iter().rev().copied().find(|&i| {
                    matches!(resolved.get(i), Some(Ok(r)) if r.mode != Mode::Remove && r.kids.contains(&c))
                });
                ops.extend(putter);
            }
        }
    }
    ops.sort_unstable();
    ops.dedup();
    ops
}

fn violation(graph: &Graph, finding: Finding, operations: Vec<usize>) -> Violation {
    Violation {
        code: finding.code,
        message: finding.message,
        records: finding
            .records
            .iter()
            .map(|&ix| RecordId::new(graph.ids.resolve(ix)))
            .collect(),
        operations,
    }
}

fn outdated(job: &Job) -> Verdict {
    let v = Violation {
        code: ViolationCode::GraphOutdated,
        message: "the relationship graph was built for another schema; rebuild it".into(),
        records: vec![],
        operations: (0..job.operations.len()).collect(),
    };
    Verdict {
        atomic: job.atomic,
        operations: job
            .operations
            .iter()
            .map(|_| OpVerdict::Rejected(v.clone()))
            .collect(),
        violations: vec![v],
    }
}
