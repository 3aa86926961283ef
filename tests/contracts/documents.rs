//! The committed contracts of `deploy/contracts`: they are what the code generates, the AsyncAPI
//! document is valid against the official AsyncAPI 3.0 schema, and the job schema agrees with the
//! parser on the demo and bench jobs, on structurally bad jobs and on mutations of a valid one.

use std::process::Command;

use cxrel::contracts::{self, Document, Format};
use cxrel::job::{Job, ParseContext};
use serde_json::{Value, json};

use crate::support;
use crate::support::{assert_valid, committed, default_settings, errors, repo_path, validator};

const P: &str = "550e8400-e29b-41d4-a716-446655440000";
const C: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

#[test]
fn the_committed_documents_are_what_the_code_generates() {
    let settings = default_settings();
    let bless = std::env::var_os("CXREL_BLESS_CONTRACTS").is_some();
    let mut stale = Vec::new();
    for document in Document::ALL {
        let generated = contracts::generate(document, &settings).unwrap();
        let path = repo_path(contracts::COMMITTED_DIR).join(document.file_name());
        let current = std::fs::read_to_string(&path).ok();
        let format = document.committed_format();
        let same = current.as_deref().map(|t| support::parse(t, format)) == Some(generated.clone());
        if same {
            continue;
        }
        if bless {
            std::fs::write(&path, contracts::render(&generated, format).unwrap()).unwrap();
        } else {
            stale.push(format!(
                "cargo run -- schema {} --format {} > {}",
                cli_name(document),
                if format == Format::Yaml {
                    "yaml"
                } else {
                    "json"
                },
                path.strip_prefix(repo_path("")).unwrap_or(&path).display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "the committed contracts differ from what the code generates; review the change, then \
         regenerate (or run this test with CXREL_BLESS_CONTRACTS=1):\n{}",
        stale.join("\n")
    );
}

fn cli_name(document: Document) -> &'static str {
    match document {
        Document::Job => "job",
        Document::Event => "event",
        Document::DeadLetter => "dead-letter",
        Document::Asyncapi => "asyncapi",
    }
}

#[test]
fn the_cli_prints_the_committed_documents_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    for document in Document::ALL {
        for (flag, format) in [("json", Format::Json), ("yaml", Format::Yaml)] {
            let output = Command::new(env!("CARGO_BIN_EXE_cxrel"))
                .args(["schema", cli_name(document), "--format", flag])
                .env_clear()
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let printed = support::parse(&String::from_utf8_lossy(&output.stdout), format);
            assert_eq!(
                printed,
                committed(document),
                "cxrel schema {} --format {flag}",
                cli_name(document)
            );
        }
    }
}

/// One way to damage a document.
type Breakage = fn(&mut Value);

fn official_asyncapi_validator() -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(repo_path("tests/vendor/asyncapi-3.0.0.schema.json")).unwrap();
    let official: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .build(&official)
        .expect("the official schema compiles offline")
}

#[test]
fn the_asyncapi_document_is_valid_against_the_official_asyncapi_3_schema() {
    let validator = official_asyncapi_validator();
    assert_valid(
        &validator,
        &committed(Document::Asyncapi),
        "deploy/contracts/asyncapi.yaml",
    );
}

#[test]
fn the_official_schema_refuses_broken_bindings_and_messages() {
    let validator = official_asyncapi_validator();
    let broken: [(&str, Breakage); 4] = [
        ("a queue channel of an unknown kind", |d| {
            d["channels"]["jobs"]["bindings"]["amqp"]["is"] = json!("stream")
        }),
        ("an unknown binding key", |d| {
            d["channels"]["dead"]["bindings"]["amqp"]["ttl"] = json!(1)
        }),
        ("an AMQP delivery mode 3", |d| {
            d["operations"]["deadLetter"]["bindings"]["amqp"]["deliveryMode"] = json!(3)
        }),
        ("a message with an unknown key", |d| {
            d["components"]["messages"]["job"]["routingKey"] = json!("x")
        }),
    ];
    for (why, breakage) in broken {
        let mut document = committed(Document::Asyncapi);
        breakage(&mut document);
        assert!(!validator.is_valid(&document), "accepted {why}");
    }
}

#[test]
fn every_reference_in_the_asyncapi_document_resolves() {
    let document = committed(Document::Asyncapi);
    let references = contracts::references(&document);
    assert!(references.len() > 50, "{} references", references.len());
    for reference in references {
        let pointer = reference.strip_prefix('#').expect("local reference");
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    let channels = document["channels"].as_object().unwrap();
    let addresses: Vec<&str> = channels
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    for queue in [
        "cxrel.jobs",
        "cxrel.dead",
        "cxrel.webhooks.dead",
        "cxrel.retry.1s",
        "cxrel.retry.10m",
    ] {
        assert!(
            addresses.contains(&queue),
            "{queue} missing from {addresses:?}"
        );
    }
    assert!(
        document["info"]["description"]
            .as_str()
            .unwrap()
            .contains("application/cloudevents+json")
    );
}

#[test]
fn the_json_schemas_are_valid_json_schema_documents() {
    for document in [Document::Job, Document::Event, Document::DeadLetter] {
        let schema = committed(document);
        if let Err(error) = jsonschema::meta::validate(&schema) {
            panic!("{}: {error}", document.file_name());
        }
    }
}

fn parse_context() -> ParseContext {
    ParseContext::from_settings(&default_settings()).with_message_id(Some("msg-1"))
}

fn parses(job: &Value) -> bool {
    Job::parse(job.to_string().as_bytes(), &parse_context()).is_ok()
}

#[test]
fn the_demo_and_bench_jobs_pass_the_job_schema_and_the_parser() {
    let schema = validator(&committed(Document::Job));
    let seed: Value = serde_json::from_str(cxrel::harness::sample::SEED_JSON).unwrap();
    let batch = cxrel::harness::sample::batch(&seed["datastores"][0]).expect("demo batch");
    let mut checked = 0;
    for sample in &batch {
        let Ok(body) = serde_json::from_slice::<Value>(&sample.body) else {
            // The demo's deliberately broken body: not JSON, so no schema applies.
            assert_eq!(sample.expect, cxrel::harness::sample::Expect::Unparseable);
            continue;
        };
        assert_valid(&schema, &body, &sample.id);
        assert!(parses(&body), "{} parses", sample.id);
        checked += 1;
    }
    let shape = cxrel::bench::scenario::Shape {
        jobs: 3,
        ops_per_job: 4,
    };
    for j in 0..shape.jobs {
        let body: Value =
            serde_json::from_slice(&cxrel::bench::scenario::job_body(shape, j)).unwrap();
        assert_valid(&schema, &body, &format!("bench job {j}"));
        checked += 1;
    }
    assert_eq!(checked, 13, "10 demo jobs and 3 bench jobs");
}

/// Jobs the parser refuses for structure, each with why.
fn bad_jobs() -> Vec<(&'static str, Value)> {
    let op = json!({"parent_id": P, "relationship_field": "f", "child_ids": [C]});
    let with_op = |key: &str, value: Value| {
        let mut op = op.clone();
        op[key] = value;
        json!({"datastore_id": "ds", "operations": [op]})
    };
    let with_job = |key: &str, value: Value| {
        let mut job = json!({"datastore_id": "ds", "operations": [op.clone()]});
        job[key] = value;
        job
    };
    let tutorial =
        json!({"datastoreId": "ds", "parentId": P, "childIds": [C], "relationshipField": "f"});
    let tutorial_with = |key: &str, value: Value| {
        let mut t = tutorial.clone();
        t[key] = value;
        t
    };
    vec![
        ("not an object", json!([op.clone()])),
        ("a number", json!(42)),
        ("no operations", json!({"datastore_id": "ds"})),
        (
            "empty operations",
            json!({"datastore_id": "ds", "operations": []}),
        ),
        ("operations not a list", with_job("operations", json!({}))),
        ("unknown job key", with_job("priority", json!(1))),
        (
            "no data store and no default",
            json!({"operations": [op.clone()]}),
        ),
        (
            "null data store and no default",
            with_job("datastore_id", Value::Null),
        ),
        (
            "data store that is a dot segment",
            with_job("datastore_id", json!("..")),
        ),
        (
            "data store that is a dot",
            with_job("datastore_id", json!(".")),
        ),
        (
            "data store with a slash",
            with_job("datastore_id", json!("a/b")),
        ),
        (
            "data store with a space",
            with_job("datastore_id", json!("a b")),
        ),
        ("empty data store", with_job("datastore_id", json!(""))),
        ("empty job id", with_job("job_id", json!(""))),
        (
            "job id of 129 characters",
            with_job("job_id", json!("j".repeat(129))),
        ),
        ("job id with a newline", with_job("job_id", json!("a\nb"))),
        ("atomic as a string", with_job("atomic", json!("yes"))),
        ("unknown operation key", with_op("depth", json!(3))),
        ("unknown mode", with_op("mode", json!("merge"))),
        (
            "unknown cascade action",
            with_op("cascade_action", json!("cascade")),
        ),
        ("parent not a UUID", with_op("parent_id", json!("acct-1"))),
        (
            "braced UUID",
            with_op("parent_id", json!(format!("{{{P}}}"))),
        ),
        (
            "UUID without hyphens",
            with_op("parent_id", json!(P.replace('-', ""))),
        ),
        ("child not a UUID", with_op("child_ids", json!([C, "x"]))),
        ("child ids not a list", with_op("child_ids", json!(C))),
        ("1001 children", with_op("child_ids", json!(vec![C; 1001]))),
        ("empty field name", with_op("relationship_field", json!(""))),
        (
            "field name with a tab",
            with_op("relationship_field", json!("a\tb")),
        ),
        (
            "missing child ids",
            json!({"datastore_id": "ds", "operations": [{"parent_id": P, "relationship_field": "f"}]}),
        ),
        (
            "10001 operations",
            json!({"datastore_id": "ds", "operations": vec![op.clone(); 10_001]}),
        ),
        (
            "tutorial with a job id",
            tutorial_with("job_id", json!("j")),
        ),
        (
            "tutorial with operations",
            tutorial_with("operations", json!([op.clone()])),
        ),
        ("tutorial with a mode", tutorial_with("mode", json!("add"))),
        (
            "tutorial without child ids",
            json!({"datastoreId": "ds", "parentId": P, "relationshipField": "f"}),
        ),
        (
            "tutorial with a bad child",
            tutorial_with("childIds", json!(["x"])),
        ),
        (
            "tutorial mixed with snake_case keys",
            tutorial_with("datastore_id", json!("ds")),
        ),
    ]
}

#[test]
fn structurally_bad_jobs_are_refused_by_the_schema_and_the_parser() {
    let schema = validator(&committed(Document::Job));
    let cases = bad_jobs();
    for (why, job) in &cases {
        assert!(!parses(job), "the parser accepts a job with {why}");
        assert!(!schema.is_valid(job), "the schema accepts a job with {why}");
    }
    assert_eq!(cases.len(), 36);
}

#[test]
fn edge_cases_the_parser_accepts_pass_the_schema() {
    let schema = validator(&committed(Document::Job));
    let op = json!({"parent_id": P.to_uppercase(), "relationship_field": "f", "child_ids": [],
        "mode": null, "cascade_action": null});
    let good = [
        json!({"job_id": "j".repeat(128), "datastore_id": "ds", "atomic": null, "operations": [op]}),
        json!({"job_id": null, "datastore_id": "äccounts-€", "operations": [op]}),
        json!({"datastoreId": "ds", "parentId": P, "childIds": [], "relationshipField": "f", "cascadeAction": "delete"}),
    ];
    for job in good {
        assert!(parses(&job), "{job}");
        assert_valid(&schema, &job, "an edge-case job");
    }
}

/// Every key of a valid job (and of its operation) removed, or set to each JSON type in turn: the
/// schema and the parser must agree on every variant.
#[test]
fn mutations_of_a_valid_job_are_judged_alike_by_schema_and_parser() {
    let schema = validator(&committed(Document::Job));
    let base = json!({"job_id": "j", "datastore_id": "ds", "atomic": true, "operations": [
        {"parent_id": P, "relationship_field": "f", "child_ids": [C], "mode": "add", "cascade_action": "none"}]});
    let tutorial = json!({"datastoreId": "ds", "parentId": P, "childIds": [C], "relationshipField": "f", "cascadeAction": "update"});
    let values = [
        Value::Null,
        json!(true),
        json!(0),
        json!("x"),
        json!(P),
        json!([]),
        json!([C]),
        json!({}),
        json!("replace"),
    ];
    let mut variants = Vec::new();
    for (root, pointer) in [(&base, ""), (&base, "/operations/0"), (&tutorial, "")] {
        let keys: Vec<String> = root
            .pointer(pointer)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for key in keys.iter().chain([&"extra".to_owned()]) {
            let mut removed = root.clone();
            removed
                .pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            variants.push(removed);
            for value in &values {
                let mut changed = root.clone();
                changed.pointer_mut(pointer).unwrap()[key.as_str()] = value.clone();
                variants.push(changed);
            }
        }
    }
    let mut disagreements = Vec::new();
    for job in &variants {
        let (by_schema, by_parser) = (schema.is_valid(job), parses(job));
        if by_schema != by_parser {
            let why = errors(&schema, job).join("; ");
            disagreements.push(format!(
                "schema {by_schema}, parser {by_parser}: {job} {why}"
            ));
        }
    }
    assert_eq!(variants.len(), 170, "keys × (removed + 9 values)");
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn the_asyncapi_document_follows_the_settings_and_never_prints_the_password() {
    let output = Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args(["schema", "asyncapi", "--format", "yaml"])
        .env_clear()
        .env("CXREL__AMQP__PREFIX", "acme")
        .env(
            "CXREL__AMQP__URL",
            "amqps://svc:hunter2@mq.example:5671/prod",
        )
        .env("CXREL__AMQP__RETRY_DELAYS", "2s,1m")
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("hunter2"), "the password leaked:\n{text}");
    let document = support::parse(&text, Format::Yaml);
    assert_valid(
        &official_asyncapi_validator(),
        &document,
        "the acme AsyncAPI document",
    );
    let broker = &document["servers"]["broker"];
    assert_eq!(
        (broker["host"].as_str(), broker["protocol"].as_str()),
        (Some("mq.example:5671"), Some("amqps"))
    );
    let channels = &document["channels"];
    assert_eq!(channels["jobs"]["address"], "acme.jobs");
    assert_eq!(
        channels["retry.1m"]["bindings"]["amqp"]["x-queue-arguments"]["x-message-ttl"],
        60_000
    );
    assert_eq!(
        channels["retry.2s"]["bindings"]["amqp"]["queue"]["vhost"],
        "prod"
    );
    assert_eq!(
        channels["job.completed"]["bindings"]["amqp"]["exchange"]["name"],
        "acme.events"
    );
    assert!(
        channels.get("retry.1s").is_none(),
        "only the configured delays"
    );
}
