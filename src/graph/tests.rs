//! Unit tests of the validator and planner, one per rule of SPEC §2.

use super::*;
use crate::job::{FieldName, Job, JobLimits, Mode, Operation, ParseContext, RecordId};
use crate::schema::SchemaWire;
use crate::settings::IdFormat;

const SCHEMA: &str = r#"{"fields":[
  {"name":"a","type":"relationship"},
  {"name":"b","type":"relationship"},
  {"name":"u","type":"relationship","constraints":{"unique_parent":true}},
  {"name":"m","type":"relationship","constraints":{"max_children":2}},
  {"name":"d","type":"relationship","constraints":{"max_depth":2}},
  {"name":"n","type":"relationship","constraints":{"acyclic":false,"max_depth":1}},
  {"name":"title","type":"string"}]}"#;

fn schema() -> Schema {
    let wire: SchemaWire = serde_json::from_str(SCHEMA).unwrap();
    Schema::try_from(wire).unwrap()
}

/// A graph of records `ids` (version 1 each) and edges (parent, field, children, cascade).
fn graph(ids: &[&str], edges: &[(&str, &str, &[&str], CascadeAction)]) -> Graph {
    let mut b = GraphBuilder::new(&schema());
    for id in ids {
        b.add_record(id, 1).unwrap();
    }
    for (p, f, kids, c) in edges {
        b.set_children(p, f, kids, *c).unwrap();
    }
    b.build().unwrap()
}

fn op(parent: &str, field: &str, kids: &[&str], mode: Mode) -> Operation {
    Operation {
        parent: RecordId::new(parent),
        field: FieldName::new(field),
        children: kids.iter().map(|k| RecordId::new(k)).collect(),
        mode,
        cascade: None,
    }
}

fn with_cascade(mut o: Operation, c: CascadeAction) -> Operation {
    o.cascade = Some(c);
    o
}

fn job(atomic: bool, operations: Vec<Operation>) -> Job {
    Job {
        job_id: "j".into(),
        datastore_id: "ds".into(),
        atomic,
        operations,
    }
}

fn codes(v: &Verdict) -> Vec<Option<&'static str>> {
    v.operations
        .iter()
        .map(|o| o.code().map(|c| c.code()))
        .collect()
}

fn check(g: &Graph, j: &Job) -> Verdict {
    validate(g, &schema(), j)
}

const NONE: CascadeAction = CascadeAction::None;
const DELETE: CascadeAction = CascadeAction::Delete;

#[test]
fn the_tutorials_example_is_accepted_and_planned_as_one_patch() {
    let p = "550e8400-e29b-41d4-a716-446655440000";
    let c = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
    let wire: SchemaWire =
        serde_json::from_str(r#"{"fields":[{"name":"parent_child_link","type":"relationship"}]}"#)
            .unwrap();
    let schema = Schema::try_from(wire).unwrap();
    let mut b = GraphBuilder::new(&schema);
    b.add_record(p, 3).unwrap();
    b.add_record(c, 1).unwrap();
    let g = b.build().unwrap();
    let body = format!(
        r#"{{"parentId":"{p}","childIds":["{c}"],"relationshipField":"parent_child_link","cascadeAction":"update"}}"#
    );
    let ctx = ParseContext {
        limits: JobLimits::default(),
        id_format: IdFormat::Uuid,
        default_datastore: Some("accounts".into()),
        message_id: None,
    };
    let j = Job::parse(body.as_bytes(), &ctx).unwrap();
    let v = validate(&g, &schema, &j);
    assert_eq!(v.outcome(), JobOutcome::Accepted);
    let plan = plan(&g, &j, &v);
    assert_eq!(plan.patches.len(), 1);
    let patch = &plan.patches[0];
    assert_eq!((patch.parent.as_str(), patch.expected_version), (p, 3));
    assert_eq!(patch.fields[0].ids, vec![RecordId::new(c)]);
    assert_eq!(patch.fields[0].cascade, CascadeAction::Update);
    assert!(patch.previous[0].ids.is_empty());
}

#[test]
fn the_number_of_children_is_not_the_depth() {
    // The tutorial compared childIds.length with max_depth; five siblings are depth 1.
    let g = graph(&["p", "1", "2", "3", "4", "5"], &[]);
    let v = check(
        &g,
        &job(
            true,
            vec![op("p", "d", &["1", "2", "3", "4", "5"], Mode::Replace)],
        ),
    );
    assert_eq!(v.outcome(), JobOutcome::Accepted);
}

#[test]
fn an_unknown_field_is_rejected() {
    let g = graph(&["p", "c"], &[]);
    let v = check(&g, &job(true, vec![op("p", "nope", &["c"], Mode::Add)]));
    assert_eq!(codes(&v), vec![Some("unknown_field")]);
    assert_eq!(v.outcome(), JobOutcome::Rejected);
}

#[test]
fn a_field_that_is_not_a_relationship_is_rejected() {
    let g = graph(&["p", "c"], &[]);
    let v = check(&g, &job(true, vec![op("p", "title", &["c"], Mode::Add)]));
    assert_eq!(codes(&v), vec![Some("not_relationship_field")]);
}

#[test]
fn missing_records_are_all_listed_in_record_not_found() {
    let g = graph(&["p"], &[]);
    let v = check(
        &g,
        &job(true, vec![op("x", "a", &["p", "y", "y"], Mode::Add)]),
    );
    let viol = v.first_violation().unwrap();
    assert_eq!(viol.code.code(), "record_not_found");
    assert_eq!(viol.records, vec![RecordId::new("x"), RecordId::new("y")]);
    assert!(viol.message.contains("x, y"), "{}", viol.message);
}

#[test]
fn a_remove_may_name_ids_that_are_no_records_and_clears_a_dangling_reference() {
    // "gone" was deleted behind the worker and p still lists it; "never" was never a record.
    let g = graph(&["p", "1"], &[("p", "m", &["1", "gone"], NONE)]);
    let j = job(true, vec![op("p", "m", &["gone", "never"], Mode::Remove)]);
    let v = check(&g, &j);
    assert_eq!(v.outcome(), JobOutcome::Accepted);
    let plan = plan(&g, &j, &v);
    assert_eq!(plan.patches[0].fields[0].ids, vec![RecordId::new("1")]);
    // Named twice, an id that is no record is still a duplicate.
    let v = check(
        &g,
        &job(true, vec![op("p", "m", &["never", "never"], Mode::Remove)]),
    );
    assert_eq!(codes(&v), vec![Some("duplicate_child")]);
    // An add still needs its children to exist.
    let v = check(&g, &job(true, vec![op("p", "m", &["gone"], Mode::Add)]));
    assert_eq!(codes(&v), vec![Some("record_not_found")]);
}

#[test]
fn a_duplicate_child_in_one_operation_is_rejected() {
    let g = graph(&["p", "c"], &[]);
    let v = check(
        &g,
        &job(true, vec![op("p", "a", &["c", "c"], Mode::Replace)]),
    );
    assert_eq!(codes(&v), vec![Some("duplicate_child")]);
}

#[test]
fn a_record_cannot_be_its_own_child_even_in_a_field_that_allows_cycles() {
    let g = graph(&["p"], &[]);
    let v = check(&g, &job(true, vec![op("p", "n", &["p"], Mode::Add)]));
    assert_eq!(codes(&v), vec![Some("cycle_detected")]);
}

#[test]
fn a_cycle_with_the_existing_graph_is_rejected_and_names_its_path() {
    let g = graph(
        &["x", "y", "z"],
        &[("x", "a", &["y"], NONE), ("y", "a", &["z"], NONE)],
    );
    let v = check(&g, &job(true, vec![op("z", "a", &["x"], Mode::Add)]));
    let viol = v.first_violation().unwrap();
    assert_eq!(viol.code.code(), "cycle_detected");
    assert!(viol.message.contains("z → x → y → z"), "{}", viol.message);
    assert_eq!(viol.operations, vec![0]);
}

#[test]
fn a_cycle_across_two_fields_formed_by_two_operations_is_rejected() {
    let g = graph(&["x", "y", "w"], &[]);
    let ops = vec![
        op("x", "a", &["y"], Mode::Add),
        op("w", "a", &["x"], Mode::Add),
        op("y", "b", &["x"], Mode::Add),
    ];
    // Each operation alone is fine.
    for o in &ops {
        assert_eq!(
            check(&g, &job(true, vec![o.clone()])).outcome(),
            JobOutcome::Accepted
        );
    }
    let v = check(&g, &job(true, ops));
    assert_eq!(v.outcome(), JobOutcome::Rejected);
    let viol = v.first_violation().unwrap();
    assert_eq!(viol.code.code(), "cycle_detected");
    assert!(
        viol.message.contains("x → y → x") || viol.message.contains("y → x → y"),
        "{}",
        viol.message
    );
    assert_eq!(viol.operations, vec![0, 2]);
    assert_eq!(v.operations[1], OpVerdict::Blocked);
}

#[test]
fn fields_that_allow_cycles_take_no_part_in_the_cycle_check() {
    let g = graph(&["x", "y"], &[("x", "n", &["y"], NONE)]);
    let v = check(&g, &job(true, vec![op("y", "a", &["x"], Mode::Add)]));
    assert_eq!(v.outcome(), JobOutcome::Accepted);
}

#[test]
fn depth_counts_edges_along_one_field_after_the_change() {
    let g = graph(&["p", "q", "r", "s"], &[("p", "d", &["q"], NONE)]);
    let ok = check(&g, &job(true, vec![op("q", "d", &["r"], Mode::Add)]));
    assert_eq!(ok.outcome(), JobOutcome::Accepted);
    let deep = check(
        &g,
        &job(
            true,
            vec![
                op("q", "d", &["r"], Mode::Add),
                op("r", "d", &["s"], Mode::Add),
            ],
        ),
    );
    let viol = deep.first_violation().unwrap();
    assert_eq!(viol.code.code(), "max_depth_exceeded");
    assert!(viol.message.contains("would reach 3"), "{}", viol.message);
}

#[test]
fn attaching_a_deep_subtree_under_a_deep_parent_exceeds_the_depth() {
    // p → q (depth 1) and r → s (depth 1); q → r makes p → q → r → s: 3 > 2.
    let g = graph(
        &["p", "q", "r", "s"],
        &[("p", "d", &["q"], NONE), ("r", "d", &["s"], NONE)],
    );
    let v = check(&g, &job(true, vec![op("q", "d", &["r"], Mode::Add)]));
    assert_eq!(codes(&v), vec![Some("max_depth_exceeded")]);
    // The message names the whole walk, not only the new link.
    let message = &v.first_violation().unwrap().message;
    assert!(message.contains("along p → q → r → s"), "{message}");
    assert!(message.contains("new link q → r"), "{message}");
}

#[test]
fn depth_along_two_fields_is_not_added_up() {
    let g = graph(
        &["p", "q", "r", "s"],
        &[("p", "d", &["q"], NONE), ("q", "d", &["r"], NONE)],
    );
    let v = check(&g, &job(true, vec![op("r", "a", &["s"], Mode::Add)]));
    assert_eq!(v.outcome(), JobOutcome::Accepted);
}

#[test]
fn more_children_than_max_children_is_rejected() {
    let g = graph(&["p", "1", "2", "3"], &[("p", "m", &["1", "2"], NONE)]);
    let v = check(&g, &job(true, vec![op("p", "m", &["3"], Mode::Add)]));
    assert_eq!(codes(&v), vec![Some("max_children_exceeded")]);
}

#[test]
fn an_excess_fixed_by_a_later_operation_of_an_atomic_job_is_accepted() {
    let g = graph(&["p", "1", "2", "3"], &[("p", "m", &["1", "2"], NONE)]);
    let ops = vec![
        op("p", "m", &["3"], Mode::Add),
        op("p", "m", &["1"], Mode::Remove),
    ];
    let v = check(&g, &job(true, ops.clone()));
    assert_eq!(v.outcome(), JobOutcome::Accepted);
    // Considered one by one, the first operation overflows.
    let v = check(&g, &job(false, ops));
    assert_eq!(codes(&v), vec![Some("max_children_exceeded"), None]);
}

#[test]
fn a_second_parent_in_a_unique_parent_field_is_a_parent_conflict() {
    let g = graph(&["p", "q", "c"], &[("p", "u", &["c"], NONE)]);
    let v = check(&g, &job(true, vec![op("q", "u", &["c"], Mode::Add)]));
    let viol = v.first_violation().unwrap();
    assert_eq!(viol.code.code(), "parent_conflict");
    assert_eq!(viol.records[0], RecordId::new("c"));
}

#[test]
fn moving_a_child_between_parents_in_one_atomic_job_is_not_a_conflict() {
    let g = graph(&["p", "q", "c"], &[("p", "u", &["c"], NONE)]);
    let ops = vec![
        op("q", "u", &["c"], Mode::Add),
        op("p", "u", &["c"], Mode::Remove),
    ];
    assert_eq!(check(&g, &job(true, ops)).outcome(), JobOutcome::Accepted);
}

#[test]
fn a_child_held_under_cascade_delete_cannot_gain_another_parent() {
    let g = graph(&["p", "q", "c"], &[("p", "a", &["c"], DELETE)]);
    let v = check(&g, &job(true, vec![op("q", "b", &["c"], Mode::Add)]));
    let viol = v.first_violation().unwrap();
    assert_eq!(viol.code.code(), "ownership_conflict");
    assert_eq!(viol.operations, vec![0]);
}

#[test]
fn switching_a_field_to_cascade_delete_checks_its_existing_children() {
    let g = graph(
        &["p", "q", "c"],
        &[("p", "a", &["c"], NONE), ("q", "b", &["c"], NONE)],
    );
    let o = with_cascade(op("p", "a", &[], Mode::Add), DELETE);
    let v = check(&g, &job(true, vec![o]));
    assert_eq!(codes(&v), vec![Some("ownership_conflict")]);
}

#[test]
fn a_failing_operation_rejects_the_whole_atomic_job_and_nothing_is_planned() {
    let g = graph(&["p", "c"], &[]);
    let ops = vec![
        op("p", "a", &["c"], Mode::Add),
        op("p", "nope", &["c"], Mode::Add),
    ];
    let j = job(true, ops);
    let v = check(&g, &j);
    assert_eq!(v.outcome(), JobOutcome::Rejected);
    assert_eq!(v.operations[0], OpVerdict::Blocked);
    assert_eq!(codes(&v)[1], Some("unknown_field"));
    assert!(plan(&g, &j, &v).is_empty());
}

#[test]
fn a_non_atomic_job_applies_what_is_valid_given_the_operations_before_it() {
    let g = graph(&["x", "y", "z"], &[]);
    let j = job(
        false,
        vec![
            op("x", "a", &["y"], Mode::Add),
            op("y", "a", &["x"], Mode::Add),
            op("y", "a", &["z"], Mode::Add),
            op("x", "nope", &["z"], Mode::Add),
        ],
    );
    let v = check(&g, &j);
    assert_eq!(
        codes(&v),
        vec![None, Some("cycle_detected"), None, Some("unknown_field")]
    );
    assert_eq!(v.outcome(), JobOutcome::Partial);
    let plan = plan(&g, &j, &v);
    let parents: Vec<&str> = plan.patches.iter().map(|p| p.parent.as_str()).collect();
    assert_eq!(parents, vec!["x", "y"]);
    assert_eq!(plan.patches[1].operation_indexes, vec![2]);
}

#[test]
fn operations_on_one_parent_fold_into_one_patch_with_the_previous_values() {
    let g = graph(&["p", "1", "2", "3"], &[("p", "a", &["1", "2"], DELETE)]);
    let j = job(
        true,
        vec![
            op("p", "a", &["3"], Mode::Add),
            op("p", "b", &["1"], Mode::Replace),
            op("p", "a", &["1"], Mode::Remove),
        ],
    );
    let v = check(&g, &j);
    assert_eq!(v.outcome(), JobOutcome::Accepted, "{v:?}");
    let plan = plan(&g, &j, &v);
    assert_eq!(plan.patches.len(), 1);
    let patch = &plan.patches[0];
    assert_eq!(patch.operation_indexes, vec![0, 1, 2]);
    let ids = |f: &FieldValue| {
        f.ids
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(patch.fields[0].field.as_str(), "a");
    assert_eq!(ids(&patch.fields[0]), vec!["2", "3"]);
    // Add and remove without a cascade keep the field's delete cascade.
    assert_eq!(patch.fields[0].cascade, DELETE);
    assert_eq!(ids(&patch.previous[0]), vec!["1", "2"]);
    assert_eq!(ids(&patch.fields[1]), vec!["1"]);
    assert_eq!(patch.previous[1].ids.len(), 0);
}

#[test]
fn a_graph_built_for_another_schema_is_outdated_and_transient() {
    let g = graph(&["p"], &[]);
    let other: SchemaWire =
        serde_json::from_str(r#"{"fields":[{"name":"a","type":"relationship"}]}"#).unwrap();
    let v = validate(
        &g,
        &Schema::try_from(other).unwrap(),
        &job(true, vec![op("p", "a", &[], Mode::Add)]),
    );
    let viol = v.first_violation().unwrap();
    assert_eq!(viol.code.code(), "graph_outdated");
    assert_eq!(viol.code.class(), crate::error::ErrorClass::Transient);
}

#[test]
fn validation_after_apply_patch_sees_the_new_edges() {
    let mut g = graph(&["x", "y"], &[]);
    let j = job(true, vec![op("x", "a", &["y"], Mode::Add)]);
    let v = check(&g, &j);
    for patch in &plan(&g, &j, &v).patches {
        for f in &patch.fields {
            g.apply_patch(
                patch.parent.as_str(),
                f.field.as_str(),
                &f.ids,
                f.cascade,
                2,
            )
            .unwrap();
        }
    }
    let back = check(&g, &job(true, vec![op("y", "a", &["x"], Mode::Add)]));
    assert_eq!(codes(&back), vec![Some("cycle_detected")]);
    assert_eq!(g.version("x"), Some(2));
}

#[test]
fn removing_a_record_from_its_own_children_is_harmless() {
    let g = graph(&["p", "c"], &[("p", "a", &["c"], NONE)]);
    let v = check(&g, &job(true, vec![op("p", "a", &["p"], Mode::Remove)]));
    assert_eq!(v.outcome(), JobOutcome::Accepted);
}

#[test]
fn a_non_atomic_operation_may_rely_on_an_earlier_accepted_one() {
    let g = graph(&["p", "q", "c"], &[("p", "u", &["c"], NONE)]);
    let free_first = job(
        false,
        vec![
            op("p", "u", &["c"], Mode::Remove),
            op("q", "u", &["c"], Mode::Add),
        ],
    );
    assert_eq!(codes(&check(&g, &free_first)), vec![None, None]);
    let free_last = job(
        false,
        vec![
            op("q", "u", &["c"], Mode::Add),
            op("p", "u", &["c"], Mode::Remove),
        ],
    );
    assert_eq!(
        codes(&check(&g, &free_last)),
        vec![Some("parent_conflict"), None]
    );
}

#[test]
fn a_replace_without_a_cascade_resets_it_to_none() {
    let g = graph(&["p", "c"], &[("p", "a", &["c"], DELETE)]);
    let j = job(true, vec![op("p", "a", &["c"], Mode::Replace)]);
    let v = check(&g, &j);
    let patch = &plan(&g, &j, &v).patches[0];
    assert_eq!(patch.fields[0].cascade, NONE);
    assert_eq!(patch.previous[0].cascade, DELETE);
}

/// The graph after the PATCHes of `plan` that `written` marks landed.
fn written(g: &mut Graph, plan: &Plan, written: &[bool]) {
    for (patch, _) in plan.patches.iter().zip(written).filter(|(_, w)| **w) {
        for value in &patch.fields {
            let ids: Vec<&str> = value.ids.iter().map(RecordId::as_str).collect();
            g.apply_patch(
                patch.parent.as_str(),
                value.field.as_str(),
                &ids,
                value.cascade,
                2,
            )
            .unwrap();
        }
    }
}

fn unsupported(g: &Graph, j: &Job, landed: &[bool]) -> Vec<usize> {
    let v = check(g, j);
    let plan = plan(g, j, &v);
    let mut after = g.clone();
    written(&mut after, &plan, landed);
    unsupported_writes(&after, &schema(), j, &plan, landed).patches
}

#[test]
fn a_swap_whose_remove_did_not_land_must_undo_its_add() {
    let g = graph(&["p", "q"], &[("p", "a", &["q"], NONE)]);
    let swap = job(
        false,
        vec![
            op("p", "a", &["q"], Mode::Remove),
            op("q", "a", &["p"], Mode::Add),
        ],
    );
    assert_eq!(codes(&check(&g, &swap)), vec![None, None]);
    assert_eq!(unsupported(&g, &swap, &[false, true]), vec![1]);
    assert_eq!(unsupported(&g, &swap, &[true, false]), Vec::<usize>::new());
    assert_eq!(unsupported(&g, &swap, &[true, true]), Vec::<usize>::new());
}

#[test]
fn a_move_whose_release_did_not_land_must_undo_its_claim() {
    let g = graph(&["p", "q", "c"], &[("p", "u", &["c"], NONE)]);
    let a_move = job(
        false,
        vec![
            op("p", "u", &["c"], Mode::Remove),
            op("q", "u", &["c"], Mode::Add),
        ],
    );
    assert_eq!(unsupported(&g, &a_move, &[false, true]), vec![1]);
}

#[test]
fn an_independent_operation_on_the_same_parent_is_undone_with_the_one_that_relied_on_another() {
    let g = graph(&["p", "q", "c", "d"], &[("p", "u", &["c"], NONE)]);
    let j = job(
        false,
        vec![
            op("p", "u", &["c"], Mode::Remove),
            op("q", "u", &["c"], Mode::Add),
            op("q", "a", &["d"], Mode::Add),
        ],
    );
    let v = check(&g, &j);
    let plan = plan(&g, &j, &v);
    let mut after = g.clone();
    written(&mut after, &plan, &[false, true]);
    let undo = unsupported_writes(&after, &schema(), &j, &plan, &[false, true]);
    assert_eq!(undo.patches, vec![1]);
    assert_eq!(undo.refused, vec![1], "operation 2 holds on its own");
}

#[test]
fn operations_that_hold_on_their_own_stay_when_another_did_not_land() {
    let g = graph(&["p", "q", "c", "d"], &[]);
    let two = job(
        false,
        vec![
            op("p", "a", &["c"], Mode::Add),
            op("q", "a", &["d"], Mode::Add),
        ],
    );
    assert_eq!(unsupported(&g, &two, &[false, true]), Vec::<usize>::new());
}
