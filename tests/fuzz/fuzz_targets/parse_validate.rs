//! Arbitrary bytes through Job::parse, validate and plan: nothing may panic.
#![no_main]

use cxrel::graph::{GraphBuilder, plan, validate};
use cxrel::job::{CascadeAction, Job, JobLimits, ParseContext};
use cxrel::schema::{Schema, SchemaWire};
use cxrel::settings::IdFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wire: SchemaWire = match serde_json::from_str(
        r#"{"fields":[{"name":"parent_child_link","type":"relationship","constraints":{"max_depth":2}},
        {"name":"owner","type":"relationship","constraints":{"unique_parent":true}},
        {"name":"title","type":"string"}]}"#,
    ) {
        Ok(w) => w,
        Err(_) => return,
    };
    let Ok(schema) = Schema::try_from(wire) else { return };
    let mut b = GraphBuilder::new(&schema);
    for (i, id) in ["a", "b", "c", "550e8400-e29b-41d4-a716-446655440000"].iter().enumerate() {
        let _ = b.add_record(id, i as u64);
    }
    let _ = b.set_children("a", "parent_child_link", &["b"], CascadeAction::Delete);
    let Ok(graph) = b.build() else { return };
    for id_format in [IdFormat::Uuid, IdFormat::Any] {
        let ctx = ParseContext {
            limits: JobLimits::default(),
            id_format,
            default_datastore: Some("ds".into()),
            message_id: None,
        };
        if let Ok(job) = Job::parse(data, &ctx) {
            let verdict = validate(&graph, &schema, &job);
            let _ = plan(&graph, &job, &verdict);
        }
    }
});
