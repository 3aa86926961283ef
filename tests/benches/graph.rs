//! Validation engine benchmark on a 1,000,000-record graph (a forest, one edge per record):
//! build time, bytes per record, and validate + plan for a 1-operation and a 1,000-operation job.
//!
//! Bytes per record are `Graph::heap_bytes() / record_count()`: the capacity of every vector and
//! hash table the graph owns (id arena, offsets, id table, versions, children spans and pool,
//! parent slots and side table), i.e. what the allocator was asked for, without allocator slack.
//! Run with `cargo bench --bench graph`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use cxrel::graph::{Graph, GraphBuilder, plan, validate};
use cxrel::job::{CascadeAction, FieldName, Job, Mode, Operation, RecordId};
use cxrel::schema::{Schema, SchemaWire};

const RECORDS: usize = 1_000_000;
/// Roots of the forest; every other record i has parent (i - ROOTS) / 10: a 10-ary forest of
/// depth 3 with RECORDS - ROOTS edges.
const ROOTS: usize = 1_000;
const FIELD: &str = "parent_child_link";

fn id(i: usize) -> String {
    uuid::Uuid::from_u128(0x5500_0000_0000_4000_8000_0000_0000_0000 | i as u128).to_string()
}

fn schema(extra_field: bool) -> Schema {
    let json = if extra_field {
        r#"{"fields":[{"name":"parent_child_link","type":"relationship"},{"name":"owner","type":"relationship"}]}"#
    } else {
        r#"{"fields":[{"name":"parent_child_link","type":"relationship"}]}"#
    };
    let wire: SchemaWire = serde_json::from_str(json).expect("schema");
    Schema::try_from(wire).expect("schema")
}

/// The record list as the data store would page it: id, version, children.
struct Records {
    ids: Vec<String>,
    children: Vec<Vec<usize>>,
}

fn records() -> Records {
    let ids: Vec<String> = (0..RECORDS).map(id).collect();
    let mut children = vec![Vec::new(); RECORDS];
    for i in ROOTS..RECORDS {
        children[(i - ROOTS) / 10].push(i);
    }
    Records { ids, children }
}

fn build(schema: &Schema, r: &Records) -> Graph {
    let mut b = GraphBuilder::with_capacity(schema, RECORDS);
    for (i, id) in r.ids.iter().enumerate() {
        b.add_record(id, 1).expect("record");
        if !r.children[i].is_empty() {
            let kids: Vec<&str> = r.children[i].iter().map(|&c| r.ids[c].as_str()).collect();
            b.set_children(id, FIELD, &kids, CascadeAction::None)
                .expect("edges");
        }
    }
    b.build().expect("graph")
}

/// Depth-2 records (parents of leaves) and leaves (depth 3).
fn depth2(i: usize) -> usize {
    ROOTS + 10 * ROOTS + (i * 7_919) % (100 * ROOTS)
}

fn leaf(i: usize) -> usize {
    ROOTS + 110 * ROOTS + (i * 104_729) % (RECORDS - 111 * ROOTS)
}

/// `n` operations, each adding one leaf of another tree under a distinct depth-2 record.
fn job(r: &Records, n: usize) -> Job {
    let operations = (0..n)
        .map(|i| Operation {
            parent: RecordId::new(&r.ids[depth2(i)]),
            field: FieldName::new(FIELD),
            children: vec![RecordId::new(&r.ids[leaf(i + 17)])],
            mode: Mode::Add,
            cascade: Some(CascadeAction::Update),
        })
        .collect();
    Job {
        job_id: "bench".into(),
        datastore_id: "accounts".into(),
        atomic: true,
        operations,
    }
}

fn bench(c: &mut Criterion) {
    let r = records();
    for extra in [false, true] {
        let s = schema(extra);
        let started = Instant::now();
        let g = build(&s, &r);
        let took = started.elapsed();
        println!(
            "graph with {} relationship field(s): {} records built in {took:.2?}, {} heap bytes = {:.1} bytes/record",
            s.relationship_count(),
            g.record_count(),
            g.heap_bytes(),
            g.heap_bytes() as f64 / g.record_count() as f64
        );
    }
    let s = schema(false);
    let mut group = c.benchmark_group("graph_1m");
    group.sample_size(10);
    group.bench_function("build", |b| b.iter(|| black_box(build(&s, &r))));
    group.finish();

    let g = build(&s, &r);
    let one = job(&r, 1);
    let thousand = job(&r, 1_000);
    for j in [&one, &thousand] {
        let v = validate(&g, &s, j);
        assert_eq!(v.outcome(), cxrel::graph::JobOutcome::Accepted, "{v:?}");
        assert_eq!(plan(&g, j, &v).patches.len(), j.operations.len());
    }
    let mut group = c.benchmark_group("validate_plan");
    group.bench_function("1_op", |b| {
        b.iter(|| {
            let v = validate(&g, &s, black_box(&one));
            black_box(plan(&g, &one, &v))
        })
    });
    group.bench_function("1000_ops", |b| {
        b.iter(|| {
            let v = validate(&g, &s, black_box(&thousand));
            black_box(plan(&g, &thousand, &v))
        })
    });
    let mut non_atomic = thousand.clone();
    non_atomic.atomic = false;
    group.bench_function("1000_ops_non_atomic", |b| {
        b.iter(|| {
            let v = validate(&g, &s, black_box(&non_atomic));
            black_box(plan(&g, &non_atomic, &v))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
