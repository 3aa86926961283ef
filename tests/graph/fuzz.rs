//! Fuzzing the boundary in `cargo test`: arbitrary bytes and job-shaped JSON with arbitrary values go
//! through parse + validate + plan, which must never panic (the cargo-fuzz target under fuzz/ does
//! the same, unbounded).

use cxrel::graph::{Graph, GraphBuilder, plan, validate};
use cxrel::job::{CascadeAction, Job, JobLimits, ParseContext};
use cxrel::schema::{Schema, SchemaWire};
use cxrel::settings::IdFormat;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const IDS: [&str; 4] = [
    "550e8400-e29b-41d4-a716-446655440000",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "00000000-0000-0000-0000-000000000001",
    "a",
];

fn schema() -> Schema {
    let wire: SchemaWire = serde_json::from_value(json!({"fields":[
        {"name":"parent_child_link","type":"relationship","constraints":{"max_depth":2,"max_children":3}},
        {"name":"owner","type":"relationship","constraints":{"unique_parent":true}},
        {"name":"loose","type":"relationship","constraints":{"acyclic":false}},
        {"name":"title","type":"string"}]}))
    .expect("schema");
    Schema::try_from(wire).expect("schema")
}

fn graph(schema: &Schema) -> Graph {
    let mut b = GraphBuilder::new(schema);
    for (i, id) in IDS.iter().enumerate() {
        b.add_record(id, i as u64).expect("record");
    }
    b.set_children(
        IDS[0],
        "parent_child_link",
        &[IDS[1]],
        CascadeAction::Delete,
    )
    .expect("edge");
    b.set_children(IDS[1], "owner", &[IDS[2]], CascadeAction::None)
        .expect("edge");
    b.build().expect("graph")
}

fn contexts() -> [ParseContext; 2] {
    let small = JobLimits {
        max_body_bytes: 4096,
        max_operations: 6,
        max_children: 4,
    };
    [IdFormat::Uuid, IdFormat::Any].map(|id_format| ParseContext {
        limits: small,
        id_format,
        default_datastore: Some("ds".into()),
        message_id: Some("m".into()),
    })
}

/// Parse, and when that works validate and plan; only "does not panic" is asserted.
fn exercise(body: &[u8], schema: &Schema, graph: &Graph) {
    for ctx in contexts() {
        if let Ok(job) = Job::parse(body, &ctx) {
            let verdict = validate(graph, schema, &job);
            let _ = plan(graph, &job, &verdict);
            let mut atomic = job.clone();
            atomic.atomic = !job.atomic;
            let verdict = validate(graph, schema, &atomic);
            let _ = plan(graph, &atomic, &verdict);
        }
    }
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(IDS.to_vec()).prop_map(Value::from),
        prop::sample::select(vec![
            "replace",
            "add",
            "remove",
            "none",
            "update",
            "delete",
            "parent_child_link",
            "owner",
            "loose",
            "title",
            "",
            "x/y",
        ])
        .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "job_id",
        "datastore_id",
        "atomic",
        "operations",
        "parent_id",
        "relationship_field",
        "child_ids",
        "mode",
        "cascade_action",
        "parentId",
        "childIds",
        "relationshipField",
        "cascadeAction",
        "datastoreId",
        "depth",
    ])
    .prop_map(str::to_owned)
}

fn operation() -> impl Strategy<Value = Value> {
    (
        json_value(),
        prop::sample::select(IDS.to_vec()),
        prop::sample::select(vec!["parent_child_link", "owner", "loose", "title", "nope"]),
        prop::collection::vec(prop::sample::select(IDS.to_vec()), 0..5),
        prop::sample::select(vec!["replace", "add", "remove"]),
        prop::sample::select(vec!["none", "update", "delete"]),
        any::<u8>(),
    )
        .prop_map(|(noise, parent, field, kids, mode, cascade, drop)| {
            let mut op = json!({"parent_id": parent, "relationship_field": field,
                "child_ids": kids, "mode": mode, "cascade_action": cascade});
            // Occasionally replace one value by noise or drop a key.
            if let Value::Object(m) = &mut op {
                match drop % 8 {
                    0 => {
                        m.insert("child_ids".into(), noise);
                    }
                    1 => {
                        m.remove("mode");
                    }
                    2 => {
                        m.insert("depth".into(), noise);
                    }
                    _ => {}
                }
            }
            op
        })
}

fn job_json() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(operation(), 0..8),
        any::<bool>(),
        json_value(),
    )
        .prop_map(|(ops, atomic, noise)| {
            let mut job = json!({"atomic": atomic, "operations": ops});
            if noise.is_object() {
                job["job_id"] = Value::from("j");
            }
            job
        })
}

proptest! {
    #![proptest_config(crate::proptest_config(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser_or_validator(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let s = schema();
        exercise(&bytes, &s, &graph(&s));
    }

    #[test]
    fn arbitrary_json_values_never_panic_the_parser_or_validator(value in json_value()) {
        let s = schema();
        let body = serde_json::to_vec(&value).unwrap_or_default();
        exercise(&body, &s, &graph(&s));
    }

    #[test]
    fn job_shaped_json_never_panics_the_parser_or_validator(value in job_json()) {
        let s = schema();
        let body = serde_json::to_vec(&value).unwrap_or_default();
        exercise(&body, &s, &graph(&s));
    }
}
