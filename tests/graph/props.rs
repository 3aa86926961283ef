//! Property tests of the validation engine: on random small graphs and random jobs, the engine's
//! verdict equals a naive reference that copies the graph, applies the job and recomputes every
//! rule from scratch; and the plan, applied to the graph, gives the reference's final state.

use std::collections::{BTreeMap, BTreeSet};

use cxrel::graph::{GraphBuilder, JobOutcome, OpVerdict, plan, validate};
use cxrel::job::{CascadeAction, FieldName, Job, Mode, Operation, RecordId};
use cxrel::schema::{ConstraintsWire, FieldWire, Schema, SchemaWire};
use proptest::prelude::*;

/// The engine's precedence order of codes (documented in `graph::validate`).
const ORDER: [&str; 9] = [
    "unknown_field",
    "not_relationship_field",
    "record_not_found",
    "duplicate_child",
    "cycle_detected",
    "max_children_exceeded",
    "parent_conflict",
    "ownership_conflict",
    "max_depth_exceeded",
];

const FIELDS: [&str; 2] = ["f0", "f1"];

#[derive(Debug, Clone, Copy)]
struct FieldSpec {
    max_depth: u32,
    max_children: Option<u32>,
    unique_parent: bool,
    acyclic: bool,
}

#[derive(Debug, Clone)]
struct OpSpec {
    parent: usize,
    field: usize,
    kids: Vec<usize>,
    mode: usize,
    cascade: usize,
}

#[derive(Debug, Clone)]
struct Case {
    fields: [FieldSpec; 2],
    n: usize,
    edges: Vec<(usize, usize, usize, usize)>,
    ops: Vec<OpSpec>,
    atomic: bool,
}

fn field_spec() -> impl Strategy<Value = FieldSpec> {
    (
        1u32..=4,
        prop::option::of(1u32..=4),
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(max_depth, max_children, unique_parent, acyclic)| FieldSpec {
                max_depth,
                max_children,
                unique_parent,
                acyclic,
            },
        )
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    (
        0usize..64,
        0usize..20,
        prop::collection::vec(0usize..64, 0..4),
        0usize..3,
        0usize..4,
    )
        .prop_map(|(parent, field, kids, mode, cascade)| OpSpec {
            parent,
            field,
            kids,
            mode,
            cascade,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        field_spec(),
        field_spec(),
        2usize..=30,
        prop::collection::vec((0usize..2, 0usize..64, 0usize..64, 0usize..3), 0..80),
        prop::collection::vec(op_spec(), 1..8),
        any::<bool>(),
    )
        .prop_map(|(a, b, n, edges, ops, atomic)| Case {
            fields: [a, b],
            n,
            edges,
            ops,
            atomic,
        })
}

fn cascade(i: usize) -> CascadeAction {
    match i {
        0 => CascadeAction::None,
        1 => CascadeAction::Update,
        _ => CascadeAction::Delete,
    }
}

fn id(case: &Case, i: usize) -> String {
    // One value in (n + 1) is a record that does not exist.
    let i = i % (case.n + 1);
    if i == case.n {
        "missing".to_owned()
    } else {
        format!("r{i}")
    }
}

fn schema(case: &Case) -> Schema {
    let mut fields: Vec<FieldWire> = FIELDS
        .iter()
        .zip(case.fields.iter())
        .map(|(name, s)| FieldWire {
            name: (*name).to_owned(),
            kind: "relationship".into(),
            constraints: ConstraintsWire {
                max_depth: Some(s.max_depth),
                max_children: s.max_children,
                unique_parent: Some(s.unique_parent),
                acyclic: Some(s.acyclic),
            },
        })
        .collect();
    fields.push(FieldWire {
        name: "label".into(),
        kind: "string".into(),
        constraints: ConstraintsWire::default(),
    });
    Schema::try_from(SchemaWire { fields }).expect("schema")
}

/// The naive model: (field, parent) → (children in order, cascade).
type State = BTreeMap<(usize, String), (Vec<String>, CascadeAction)>;

fn value(state: &State, f: usize, p: &str) -> (Vec<String>, CascadeAction) {
    state
        .get(&(f, p.to_owned()))
        .cloned()
        .unwrap_or((Vec::new(), CascadeAction::None))
}

fn parents_of(state: &State, f: usize, c: &str) -> Vec<String> {
    state
        .iter()
        .filter(|((g, _), (kids, _))| *g == f && kids.iter().any(|k| k == c))
        .map(|((_, p), _)| p.clone())
        .collect()
}

/// Every rule broken anywhere in `state`, recomputed from scratch.
fn broken(case: &Case, state: &State) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    let nodes: Vec<String> = (0..case.n).map(|i| format!("r{i}")).collect();
    if has_cycle(case, state, &nodes) {
        out.insert("cycle_detected");
    }
    for ((f, _), (kids, _)) in state {
        if let Some(m) = case.fields[*f].max_children
            && kids.len() > m as usize
        {
            out.insert("max_children_exceeded");
        }
    }
    for c in &nodes {
        for f in 0..2 {
            if case.fields[f].unique_parent && parents_of(state, f, c).len() > 1 {
                out.insert("parent_conflict");
            }
        }
        let mut all: BTreeSet<String> = BTreeSet::new();
        let mut held = false;
        for f in 0..2 {
            for p in parents_of(state, f, c) {
                held |= value(state, f, &p).1 == CascadeAction::Delete;
                all.insert(p);
            }
        }
        if held && all.len() > 1 {
            out.insert("ownership_conflict");
        }
    }
    for f in 0..2 {
        if case.fields[f].acyclic
            && longest_walk_exceeds(state, f, &nodes, case.fields[f].max_depth)
        {
            out.insert("max_depth_exceeded");
        }
    }
    out
}

/// Is there a walk of max_depth + 1 edges along field f? W_k = nodes starting a walk of k edges.
fn longest_walk_exceeds(state: &State, f: usize, nodes: &[String], max_depth: u32) -> bool {
    let mut w: BTreeSet<String> = nodes.iter().cloned().collect();
    for _ in 0..=max_depth {
        w = nodes
            .iter()
            .filter(|v| value(state, f, v).0.iter().any(|c| w.contains(c)))
            .cloned()
            .collect();
    }
    !w.is_empty()
}

fn has_cycle(case: &Case, state: &State, nodes: &[String]) -> bool {
    // Repeatedly strip nodes without children in the acyclic union; a cycle is what remains.
    let mut alive: BTreeSet<String> = nodes.iter().cloned().collect();
    loop {
        let leaf = alive.iter().find(|v| {
            (0..2)
                .filter(|&f| case.fields[f].acyclic)
                .all(|f| value(state, f, v).0.iter().all(|c| !alive.contains(c)))
        });
        match leaf.cloned() {
            Some(v) => {
                alive.remove(&v);
            }
            None => return !alive.is_empty(),
        }
    }
}

fn operation(case: &Case, o: &OpSpec) -> Operation {
    let field = match o.field {
        0..=8 => "f0",
        9..=17 => "f1",
        18 => "label",
        _ => "nope",
    };
    Operation {
        parent: RecordId::new(&id(case, o.parent)),
        field: FieldName::new(field),
        children: o
            .kids
            .iter()
            .map(|&k| RecordId::new(&id(case, k)))
            .collect(),
        mode: [Mode::Replace, Mode::Add, Mode::Remove][o.mode],
        cascade: (o.cascade < 3).then(|| cascade(o.cascade)),
    }
}

fn local_code(op: &Operation) -> Option<&'static str> {
    match op.field.as_str() {
        "f0" | "f1" => {}
        "label" => return Some("not_relationship_field"),
        _ => return Some("unknown_field"),
    }
    let exists = |r: &RecordId| r.as_str() != "missing";
    // The children of a remove need not exist: after the job they are no children.
    let children_exist = op.mode == Mode::Remove || op.children.iter().all(exists);
    if !exists(&op.parent) || !children_exist {
        return Some("record_not_found");
    }
    let distinct: BTreeSet<&RecordId> = op.children.iter().collect();
    if distinct.len() != op.children.len() {
        return Some("duplicate_child");
    }
    if op.mode != Mode::Remove && op.children.contains(&op.parent) {
        return Some("cycle_detected");
    }
    None
}

fn field_index(op: &Operation) -> usize {
    usize::from(op.field.as_str() == "f1")
}

fn apply(state: &mut State, op: &Operation) {
    let f = field_index(op);
    let p = op.parent.as_str();
    let (current, cur_cascade) = value(state, f, p);
    let kids: Vec<String> = op.children.iter().map(|c| c.as_str().to_owned()).collect();
    let new = match op.mode {
        Mode::Replace => kids,
        Mode::Add => {
            let mut v = current.clone();
            v.extend(kids.into_iter().filter(|k| !current.contains(k)));
            v
        }
        Mode::Remove => current.into_iter().filter(|c| !kids.contains(c)).collect(),
    };
    state.insert((f, p.to_owned()), (new, op.cascade_after(cur_cascade)));
}

/// A base graph that breaks no rule: candidate edges are kept only when the graph stays valid.
fn base_state(case: &Case) -> State {
    let mut state = State::new();
    for &(f, p, c, k) in &case.edges {
        let (p, c) = (format!("r{}", p % case.n), format!("r{}", c % case.n));
        if p == c {
            continue;
        }
        let mut next = state.clone();
        let (mut kids, old) = value(&next, f, &p);
        if kids.contains(&c) {
            continue;
        }
        kids.push(c);
        let cascade = if kids.len() == 1 { cascade(k) } else { old };
        next.insert((f, p), (kids, cascade));
        if broken(case, &next).is_empty() {
            state = next;
        }
    }
    state
}

struct Reference {
    codes: Vec<Option<&'static str>>,
    job_codes: BTreeSet<&'static str>,
    accepted: bool,
    final_state: State,
}

fn rank(code: &str) -> usize {
    ORDER.iter().position(|c| *c == code).unwrap_or(usize::MAX)
}

fn reference(case: &Case, base: &State, ops: &[Operation]) -> Reference {
    let mut state = base.clone();
    let mut codes = Vec::new();
    let mut job_codes = BTreeSet::new();
    for op in ops {
        let local = local_code(op);
        if let Some(code) = local {
            job_codes.insert(code);
            codes.push(Some(code));
            continue;
        }
        let mut next = state.clone();
        apply(&mut next, op);
        if case.atomic {
            state = next;
            codes.push(None);
            continue;
        }
        let broken = broken(case, &next);
        match broken.iter().min_by_key(|c| rank(c)) {
            None => {
                state = next;
                codes.push(None);
            }
            Some(code) => {
                job_codes.insert(*code);
                codes.push(Some(*code));
            }
        }
    }
    if case.atomic {
        job_codes.extend(broken(case, &state));
    }
    let accepted = if case.atomic {
        job_codes.is_empty()
    } else {
        codes.iter().any(Option::is_none)
    };
    Reference {
        codes,
        job_codes,
        accepted,
        final_state: state,
    }
}

fn build_graph(case: &Case, schema: &Schema, base: &State) -> cxrel::graph::Graph {
    let mut b = GraphBuilder::new(schema);
    for i in 0..case.n {
        b.add_record(&format!("r{i}"), i as u64).expect("record");
    }
    for ((f, p), (kids, c)) in base {
        b.set_children(p, FIELDS[*f], kids, *c).expect("edges");
    }
    b.build().expect("graph")
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let schema = schema(case);
    let base = base_state(case);
    let graph = build_graph(case, &schema, &base);
    let ops: Vec<Operation> = case.ops.iter().map(|o| operation(case, o)).collect();
    let job = make_job(case, ops.clone());
    let (verdict, want) = compare(case, &schema, &graph, &base, &job)?;
    if verdict.outcome() == JobOutcome::Rejected {
        return Ok(());
    }
    check_plan(&graph, &job, &verdict, &base, &want.final_state)?;
    // Apply the plan in place, as the worker does after each PATCH, and check the updated graph
    // the same way with the job's operations in reverse order.
    let mut updated = graph.clone();
    for patch in &plan(&graph, &job, &verdict).patches {
        for fv in &patch.fields {
            let version = patch.expected_version + 1;
            updated
                .apply_patch(
                    patch.parent.as_str(),
                    fv.field.as_str(),
                    &fv.ids,
                    fv.cascade,
                    version,
                )
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    for ((f, p), (kids, c)) in &want.final_state {
        let (got, cascade) = updated.children(p, FIELDS[*f]).unwrap_or_default();
        prop_assert_eq!(
            &got,
            kids,
            "children of {} in {} after apply_patch",
            p,
            FIELDS[*f]
        );
        prop_assert_eq!(cascade, *c);
    }
    let reversed = make_job(case, ops.into_iter().rev().collect());
    compare(case, &schema, &updated, &want.final_state, &reversed)?;
    Ok(())
}

fn make_job(case: &Case, operations: Vec<Operation>) -> Job {
    Job {
        job_id: "j".into(),
        datastore_id: "ds".into(),
        atomic: case.atomic,
        operations,
    }
}

/// Validates `job` on `graph` and compares with the reference on `base` (the same state).
fn compare(
    case: &Case,
    schema: &Schema,
    graph: &cxrel::graph::Graph,
    base: &State,
    job: &Job,
) -> Result<(cxrel::graph::Verdict, Reference), TestCaseError> {
    let ops = &job.operations;
    let verdict = validate(graph, schema, job);
    let want = reference(case, base, ops);
    let engine_codes: BTreeSet<&'static str> =
        verdict.violations.iter().map(|v| v.code.code()).collect();
    prop_assert_eq!(&engine_codes, &want.job_codes, "job-level codes");
    let accepted = verdict.outcome() != JobOutcome::Rejected;
    prop_assert_eq!(accepted, want.accepted, "job accepted");
    for (i, (got, expected)) in verdict.operations.iter().zip(&want.codes).enumerate() {
        let got_code = got.code().map(|c| c.code());
        if case.atomic {
            // Locally invalid operations carry their own code; the rest are blamed or blocked.
            if let Some(local) = local_code(&ops[i]) {
                prop_assert_eq!(got_code, Some(local), "op {}", i);
            } else if want.accepted {
                prop_assert_eq!(got, &OpVerdict::Accepted, "op {}", i);
            }
        } else {
            prop_assert_eq!(got_code, *expected, "op {}", i);
        }
    }
    Ok((verdict, want))
}

/// The plan, applied to the base state, gives the reference's final state, one PATCH per parent.
fn check_plan(
    graph: &cxrel::graph::Graph,
    job: &Job,
    verdict: &cxrel::graph::Verdict,
    base: &State,
    want: &State,
) -> Result<(), TestCaseError> {
    let plan = plan(graph, job, verdict);
    let mut state = base.clone();
    let mut parents = BTreeSet::new();
    for patch in &plan.patches {
        prop_assert!(parents.insert(patch.parent.clone()), "one PATCH per parent");
        let idx: usize = patch.parent.as_str()[1..].parse().unwrap_or(0);
        prop_assert_eq!(patch.expected_version, idx as u64);
        for fv in &patch.fields {
            let f = usize::from(fv.field.as_str() == "f1");
            let ids = fv.ids.iter().map(|i| i.as_str().to_owned()).collect();
            state.insert((f, patch.parent.as_str().to_owned()), (ids, fv.cascade));
        }
    }
    let norm = |s: &State| -> State {
        s.iter()
            .filter(|(_, (kids, c))| !kids.is_empty() || *c != CascadeAction::None)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    prop_assert_eq!(norm(&state), norm(want));
    Ok(())
}

/// A batch of jobs over one small graph and a schedule interleaving them: each step moves one job
/// (checked → reserved or waiting; reserved → written or failed).
#[derive(Debug, Clone)]
struct Batch {
    case: Case,
    jobs: Vec<(Vec<OpSpec>, bool)>,
    schedule: Vec<(usize, bool)>,
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        case(),
        prop::collection::vec(
            (prop::collection::vec(op_spec(), 1..4), any::<bool>()),
            2..7,
        ),
        prop::collection::vec((0usize..7, prop::bool::weighted(0.2)), 0..30),
    )
        .prop_map(|(mut case, jobs, schedule)| {
            case.n = case.n.min(8);
            Batch {
                case,
                jobs,
                schedule,
            }
        })
}

enum Step {
    Todo,
    Reserved(
        cxrel::graph::Plan,
        cxrel::pipeline::datastore::Reservation,
        usize,
    ),
    Done,
}

/// Runs the batch against a `LiveDataStore` (the worker's type) in the schedule's interleaving;
/// returns the final graph and the written jobs in the order they were checked, with what each
/// wrote. A job whose write "fails" releases its reservation without writing.
fn interleave(
    batch: &Batch,
    schema: &Schema,
    graph: cxrel::graph::Graph,
) -> (
    std::sync::Arc<cxrel::pipeline::datastore::LiveDataStore>,
    Vec<(usize, Vec<Operation>)>,
) {
    use cxrel::pipeline::datastore::{Check, LiveDataStore};
    let live = LiveDataStore::new("ds", std::sync::Arc::new(schema.clone()), graph);
    let jobs: Vec<Job> = batch
        .jobs
        .iter()
        .map(|(ops, atomic)| Job {
            job_id: "j".into(),
            datastore_id: "ds".into(),
            atomic: *atomic,
            operations: ops.iter().map(|o| operation(&batch.case, o)).collect(),
        })
        .collect();
    let mut steps: Vec<Step> = jobs.iter().map(|_| Step::Todo).collect();
    let mut checked = 0;
    let mut written = Vec::new();
    // The schedule, then every job driven to its end (round robin; each round moves one at least).
    let tail = (0..jobs.len() * jobs.len() * 4).map(|i| (i % jobs.len(), false));
    for (pick, fail) in batch.schedule.iter().copied().chain(tail) {
        let j = pick % jobs.len();
        steps[j] = match std::mem::replace(&mut steps[j], Step::Done) {
            Step::Todo => match live.check(&jobs[j]) {
                Check::Ready {
                    verdict,
                    plan,
                    reservation,
                } => {
                    checked += 1;
                    let ops: Vec<Operation> = verdict
                        .accepted()
                        .map(|i| jobs[j].operations[i].clone())
                        .collect();
                    written.push((checked, ops));
                    Step::Reserved(plan, reservation, written.len() - 1)
                }
                Check::Wait(_) => Step::Todo,
                Check::Outdated => unreachable!("the schema never changes here"),
            },
            Step::Reserved(plan, reservation, slot) => {
                if fail {
                    written[slot].1.clear();
                } else {
                    live.with_graph(|g| write(g, &plan));
                }
                drop(reservation);
                Step::Done
            }
            Step::Done => Step::Done,
        };
    }
    let stuck: Vec<usize> = (0..steps.len())
        .filter(|&j| !matches!(steps[j], Step::Done))
        .collect();
    assert!(
        stuck.is_empty(),
        "every job ends; stuck: {stuck:?} of {:?}",
        jobs
    );
    written.retain(|(_, ops)| !ops.is_empty());
    (live, written)
}

fn write(graph: &mut cxrel::graph::Graph, plan: &cxrel::graph::Plan) {
    for patch in &plan.patches {
        for fv in &patch.fields {
            graph
                .apply_patch(
                    patch.parent.as_str(),
                    fv.field.as_str(),
                    &fv.ids,
                    fv.cascade,
                    patch.expected_version + 1,
                )
                .expect("planned write");
        }
    }
}

/// The final state breaks no rule and equals applying the written jobs one by one in the order
/// they were checked, each valid at its turn.
fn run_batch(batch: &Batch) -> Result<(), TestCaseError> {
    let case = &batch.case;
    let schema = schema(case);
    let base = base_state(case);
    let (live, written) = interleave(batch, &schema, build_graph(case, &schema, &base));
    let mut state = base.clone();
    for (turn, ops) in &written {
        for op in ops {
            apply(&mut state, op);
        }
        prop_assert!(
            broken(case, &state).is_empty(),
            "job checked {} is valid at its turn",
            turn
        );
    }
    let norm = |kids: Vec<String>, c: CascadeAction| {
        if kids.is_empty() {
            (kids, CascadeAction::None)
        } else {
            (kids, c)
        }
    };
    for (f, field) in FIELDS.iter().enumerate() {
        for i in 0..case.n {
            let p = format!("r{i}");
            let got = live.with_graph(|g| {
                g.children(&p, field)
                    .map(|(k, c)| (k.into_iter().map(str::to_owned).collect::<Vec<_>>(), c))
                    .unwrap_or_default()
            });
            let (kids, c) = value(&state, f, &p);
            prop_assert_eq!(norm(got.0, got.1), norm(kids, c), "{} in {}", p, field);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_config(768))]

    #[test]
    fn concurrent_jobs_end_as_if_applied_one_by_one_each_valid_at_its_turn(batch in batch()) {
        run_batch(&batch)?;
    }

    #[test]
    fn the_engine_agrees_with_a_naive_reference_that_recomputes_everything(case in case()) {
        run(&case)?;
    }
}
