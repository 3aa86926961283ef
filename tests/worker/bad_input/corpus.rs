//! The bad-input corpus of `bad_input.rs`: job bodies no producer should send, each with the
//! code it must be dead-lettered with, and odd AMQP properties/headers around valid jobs.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Value, json};

/// A body and the `x-cxrel-error-code` it must end with in `{prefix}.dead`.
pub struct BadBody {
    pub name: String,
    pub body: Vec<u8>,
    pub code: &'static str,
}

/// Record ids the corpus refers to: `parent` and `child` exist in data store `ds`, `ghost` does not.
pub struct Ids {
    pub parent: String,
    pub child: String,
    pub ghost: String,
}

fn bad(name: &str, body: impl Into<Vec<u8>>, code: &'static str) -> BadBody {
    BadBody {
        name: name.to_owned(),
        body: body.into(),
        code,
    }
}

/// A valid job on `ds` with `op` as its one operation; `extra` keys are merged in at the top.
fn job_with(op: Value, extra: Value) -> Vec<u8> {
    let mut job = json!({"job_id": "corpus", "datastore_id": "ds", "operations": [op]});
    if let (Some(job), Some(extra)) = (job.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            job.insert(k.clone(), v.clone());
        }
    }
    job.to_string().into_bytes()
}

impl Ids {
    /// A valid operation, then `changes` applied to it (a `null` change removes the key).
    fn op(&self, changes: Value) -> Value {
        let mut op = json!({
            "parent_id": self.parent, "relationship_field": "parent_child_link",
            "child_ids": [self.child],
        });
        let fields = op.as_object_mut().expect("an object");
        for (k, v) in changes.as_object().into_iter().flatten() {
            if v.is_null() {
                fields.remove(k);
            } else {
                fields.insert(k.clone(), v.clone());
            }
        }
        op
    }

    fn job(&self, op_changes: Value, extra: Value) -> Vec<u8> {
        job_with(self.op(op_changes), extra)
    }

    /// The whole corpus: not JSON, wrong shapes, bad ids, limits, and jobs the graph refuses.
    pub fn bad_bodies(&self) -> Vec<BadBody> {
        let mut all = not_json(self);
        all.extend(wrong_shapes(self));
        all.extend(bad_ids(self));
        all.extend(over_limits(self));
        all.extend(refused_by_the_graph(self));
        all
    }
}

/// Bodies that are not one JSON object: `invalid_job` at `$`.
fn not_json(ids: &Ids) -> Vec<BadBody> {
    let valid = ids.job(json!({}), json!({}));
    let text = String::from_utf8(valid.clone()).unwrap();
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend(&valid);
    let c = "invalid_job";
    vec![
        bad("empty", "", c),
        bad("whitespace", " \n\t ", c),
        bad("open brace", "{", c),
        bad("close brace", "}", c),
        bad("truncated literal", "nul", c),
        bad("null", "null", c),
        bad("true", "true", c),
        bad("number", "42", c),
        bad("string", "\"a job\"", c),
        bad("empty array", "[]", c),
        bad("array of a job", format!("[{text}]"), c),
        bad("binary", vec![0xff, 0xfe, 0x00, 0x01, 0x80], c),
        bad("utf-16", utf16, c),
        bad("utf-8 bom", bom, c),
        bad("trailing garbage", format!("{text}xyz"), c),
        bad(
            "a key twice",
            format!(r#"{{"datastore_id":"elsewhere",{}"#, &text[1..]),
            c,
        ),
        bad("two jobs", format!("{text}{text}"), c),
        bad("NaN", "NaN", c),
        bad("comment", format!("// job\n{text}"), c),
        bad("single quotes", "{'operations':[]}", c),
        bad("deep arrays", "[".repeat(100_000), c),
        bad(
            "deep operations",
            format!(r#"{{"operations":{}}}"#, "[".repeat(50_000)),
            c,
        ),
        bad(
            "invalid utf-8 in a string",
            b"{\"job_id\":\"\xff\xfe\"}".to_vec(),
            c,
        ),
        bad(
            "lone surrogate",
            r#"{"job_id":"\ud800","operations":[]}"#,
            c,
        ),
        bad(
            "number out of range",
            r#"{"atomic":1e999,"operations":[]}"#,
            c,
        ),
    ]
}

/// JSON objects of the wrong shape: `invalid_job` with a path.
fn wrong_shapes(ids: &Ids) -> Vec<BadBody> {
    let c = "invalid_job";
    let long = "n".repeat(200);
    let ops = |ops: Value| json!({"datastore_id": "ds", "operations": ops}).to_string();
    vec![
        bad("empty object", "{}", c),
        bad("operations null", ops(Value::Null), c),
        bad("operations object", ops(json!({})), c),
        bad("operations string", ops(json!("x")), c),
        bad("no operations", ops(json!([])), c),
        bad("operation number", ops(json!([1])), c),
        bad("operation null", ops(json!([null])), c),
        bad("operation empty", ops(json!([{}])), c),
        bad(
            "no parent",
            ids.job(json!({"parent_id": null}), json!({})),
            c,
        ),
        bad(
            "no field",
            ids.job(json!({"relationship_field": null}), json!({})),
            c,
        ),
        bad(
            "no children",
            ids.job(json!({"child_ids": null}), json!({})),
            c,
        ),
        bad(
            "children string",
            ids.job(json!({"child_ids": "x"}), json!({})),
            c,
        ),
        bad(
            "child number",
            ids.job(json!({"child_ids": [1]}), json!({})),
            c,
        ),
        bad(
            "child null",
            ids.job(json!({"child_ids": [null]}), json!({})),
            c,
        ),
        bad(
            "parent number",
            ids.job(json!({"parent_id": 5}), json!({})),
            c,
        ),
        bad(
            "mode unknown",
            ids.job(json!({"mode": "merge"}), json!({})),
            c,
        ),
        bad("mode number", ids.job(json!({"mode": 1}), json!({})), c),
        bad(
            "cascade unknown",
            ids.job(json!({"cascade_action": "explode"}), json!({})),
            c,
        ),
        bad(
            "atomic string",
            ids.job(json!({}), json!({"atomic": "yes"})),
            c,
        ),
        bad("unknown key", ids.job(json!({}), json!({"priority": 1})), c),
        bad("unknown op key", ids.job(json!({"depth": 2}), json!({})), c),
        bad("job id empty", ids.job(json!({}), json!({"job_id": ""})), c),
        bad(
            "job id long",
            ids.job(json!({}), json!({"job_id": long})),
            c,
        ),
        bad(
            "job id control",
            ids.job(json!({}), json!({"job_id": "a\nb"})),
            c,
        ),
        bad("job id number", ids.job(json!({}), json!({"job_id": 7})), c),
        bad(
            "field empty",
            ids.job(json!({"relationship_field": ""}), json!({})),
            c,
        ),
        bad(
            "field long",
            ids.job(json!({"relationship_field": long}), json!({})),
            c,
        ),
        bad(
            "field control",
            ids.job(json!({"relationship_field": "a\u{7}b"}), json!({})),
            c,
        ),
        bad("data store missing", missing_datastore(ids), c),
        bad(
            "data store null",
            ids.job(json!({}), json!({"datastore_id": null})),
            c,
        ),
        bad(
            "data store number",
            ids.job(json!({}), json!({"datastore_id": 5})),
            c,
        ),
        bad("tutorial mixed with operations", tutorial_mixed(ids), c),
        bad(
            "tutorial without children",
            json!({"parentId": ids.parent, "relationshipField": "parent_child_link",
                   "datastoreId": "ds"})
            .to_string(),
            c,
        ),
    ]
}

fn missing_datastore(ids: &Ids) -> String {
    json!({"job_id": "corpus", "operations": [ids.op(json!({}))]}).to_string()
}

fn tutorial_mixed(ids: &Ids) -> String {
    json!({"parentId": ids.parent, "childIds": [ids.child], "relationshipField": "parent_child_link",
           "datastoreId": "ds", "operations": []})
    .to_string()
}

/// Ids that are not UUIDs, or would change the record API's URL: `invalid_id`.
fn bad_ids(ids: &Ids) -> Vec<BadBody> {
    let c = "invalid_id";
    let simple = ids.parent.replace('-', "");
    let datastore = |d: &str| ids.job(json!({}), json!({"datastore_id": d}));
    vec![
        bad(
            "parent not a uuid",
            ids.job(json!({"parent_id": "p-1"}), json!({})),
            c,
        ),
        bad(
            "child without hyphens",
            ids.job(json!({"child_ids": [simple]}), json!({})),
            c,
        ),
        bad(
            "braced parent",
            ids.job(
                json!({"parent_id": format!("{{{}}}", ids.parent)}),
                json!({}),
            ),
            c,
        ),
        bad(
            "urn parent",
            ids.job(
                json!({"parent_id": format!("urn:uuid:{}", ids.parent)}),
                json!({}),
            ),
            c,
        ),
        bad(
            "parent dot dot",
            ids.job(json!({"parent_id": ".."}), json!({})),
            c,
        ),
        bad(
            "child empty",
            ids.job(json!({"child_ids": [""]}), json!({})),
            c,
        ),
        bad("data store dot dot", datastore(".."), c),
        bad("data store dot", datastore("."), c),
        bad("data store encoded dot dot", datastore("%2e%2e"), c),
        bad("data store slash", datastore("a/b"), c),
        bad("data store query", datastore("a?b"), c),
        bad("data store fragment", datastore("a#b"), c),
        bad("data store space", datastore("a b"), c),
        bad("data store nul", datastore("ds\u{0}"), c),
        bad("data store long", datastore(&"d".repeat(200)), c),
        bad(
            "tutorial parent dot dot",
            json!({"parentId": "..", "childIds": [ids.child],
                   "relationshipField": "parent_child_link", "datastoreId": "ds"})
            .to_string(),
            c,
        ),
    ]
}

/// Bodies over the `[limits]`.
fn over_limits(ids: &Ids) -> Vec<BadBody> {
    let mut padded = ids.job(json!({}), json!({}));
    padded.extend(std::iter::repeat_n(b' ', 1 << 20));
    let many_ops = format!(
        r#"{{"datastore_id":"ds","operations":[{}]}}"#,
        vec!["{}"; 10_001].join(",")
    );
    let children: Vec<String> = (0..1001)
        .map(|n| uuid::Uuid::from_u128(n).to_string())
        .collect();
    vec![
        bad("over one mebibyte", padded, "payload_too_large"),
        bad("too many operations", many_ops, "too_many_operations"),
        bad(
            "too many children",
            ids.job(json!({"child_ids": children}), json!({})),
            "too_many_children",
        ),
    ]
}

/// Well-formed jobs the data store's schema or graph refuses: read, never written.
fn refused_by_the_graph(ids: &Ids) -> Vec<BadBody> {
    vec![
        bad(
            "missing child",
            ids.job(json!({"child_ids": [ids.ghost]}), json!({})),
            "record_not_found",
        ),
        bad(
            "unknown field",
            ids.job(json!({"relationship_field": "nope"}), json!({})),
            "unknown_field",
        ),
        bad(
            "scalar field",
            ids.job(json!({"relationship_field": "name"}), json!({})),
            "not_relationship_field",
        ),
        bad(
            "own child",
            ids.job(json!({"child_ids": [ids.parent]}), json!({})),
            "cycle_detected",
        ),
        bad(
            "duplicate child",
            ids.job(json!({"child_ids": [ids.child, ids.child]}), json!({})),
            "duplicate_child",
        ),
    ]
}

/// Odd properties and headers around a job, named.
pub struct OddMetadata {
    pub name: &'static str,
    pub properties: BasicProperties,
}

fn with_header(name: &'static str, key: &str, value: AMQPValue) -> OddMetadata {
    let mut table = FieldTable::default();
    table.insert(ShortString::from(key), value);
    OddMetadata {
        name,
        properties: BasicProperties::default().with_headers(table),
    }
}

fn long_string(text: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.into()))
}

/// Header bytes just under RabbitMQ's 128 KiB frame: the dead-letter copy with its failure headers
/// added would not fit, and publishing it closed the worker's connection, again and again.
const HEADERS_AT_FRAME_LIMIT: usize = 130_800;

/// An `x-junk` header of `bytes` bytes.
fn junk_header(name: &'static str, bytes: usize) -> OddMetadata {
    with_header(name, "x-junk", long_string("x".repeat(bytes)))
}

/// Properties and headers no producer should send, none of which may stop a valid job.
pub fn odd_metadata() -> Vec<OddMetadata> {
    let attempts = cxrel::amqp::headers::ATTEMPTS;
    let trace = cxrel::amqp::headers::TRACEPARENT;
    let mut many = FieldTable::default();
    for n in 0..200 {
        many.insert(ShortString::from(format!("x-h{n}")), AMQPValue::LongInt(n));
    }
    let mut forged_death = FieldTable::default();
    forged_death.insert(
        ShortString::from("count"),
        AMQPValue::LongString("many".into()),
    );
    vec![
        with_header(
            "attempts u64::MAX",
            attempts,
            long_string("18446744073709551615"),
        ),
        with_header("attempts huge", attempts, long_string("9".repeat(40))),
        with_header("attempts word", attempts, long_string("lots")),
        with_header("attempts negative", attempts, AMQPValue::LongInt(-3)),
        with_header("attempts float", attempts, AMQPValue::Double(2.5)),
        with_header(
            "attempts table",
            attempts,
            AMQPValue::FieldTable(many.clone()),
        ),
        with_header("traceparent garbage", trace, long_string("00-zz-yy-01")),
        with_header(
            "traceparent huge",
            trace,
            long_string("0".repeat(64 * 1024)),
        ),
        with_header("traceparent number", trace, AMQPValue::LongInt(7)),
        with_header("traceparent not utf-8", trace, long_string(vec![0xff; 55])),
        with_header(
            "job id header huge",
            cxrel::amqp::headers::JOB_ID,
            long_string("j".repeat(4096)),
        ),
        with_header(
            "forged x-death",
            "x-death",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(forged_death)])),
        ),
        // A publisher forwarding from its own quorum queue: the count is not this worker's.
        with_header(
            "forwarded x-delivery-count",
            "x-delivery-count",
            AMQPValue::LongInt(999),
        ),
        junk_header("huge junk header", 60 * 1024),
        junk_header("headers at the frame limit", HEADERS_AT_FRAME_LIMIT),
        with_header(
            "first failed at garbage",
            cxrel::amqp::headers::FIRST_FAILED_AT,
            AMQPValue::Boolean(true),
        ),
        OddMetadata {
            name: "two hundred headers",
            properties: BasicProperties::default().with_headers(many),
        },
        OddMetadata {
            name: "wrong content type and encoding",
            properties: BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into()),
        },
        OddMetadata {
            name: "odd delivery properties",
            properties: BasicProperties::default()
                .with_delivery_mode(1)
                .with_priority(255)
                .with_type("x".repeat(255).into())
                .with_timestamp(u64::MAX)
                .with_expiration("600000".into())
                .with_app_id("\u{0}".into()),
        },
    ]
}

/// Odd headers around a bad body: the dead letter must still carry the right code.
pub fn odd_metadata_for_bad_bodies() -> Vec<OddMetadata> {
    let attempts = cxrel::amqp::headers::ATTEMPTS;
    vec![
        with_header(
            "bad body, attempts u64::MAX",
            attempts,
            long_string("18446744073709551615"),
        ),
        junk_header("bad body, huge header", 100 * 1024),
        junk_header(
            "bad body, headers at the frame limit",
            HEADERS_AT_FRAME_LIMIT,
        ),
        with_header(
            "bad body, forged error code",
            cxrel::amqp::headers::ERROR_CODE,
            long_string("applied"),
        ),
        // A producer's own first-failed-at says nothing about cxrel's failures.
        with_header(
            "bad body, forged first failed at",
            cxrel::amqp::headers::FIRST_FAILED_AT,
            long_string(FORGED_FIRST_FAILED_AT),
        ),
        // The test waits past the TTL: the dead letter must not expire with it.
        OddMetadata {
            name: "bad body, publisher TTL of 1.5 s",
            properties: BasicProperties::default().with_expiration("1500".into()),
        },
    ]
}

/// The `x-cxrel-first-failed-at` of the "forged first failed at" case.
pub const FORGED_FIRST_FAILED_AT: &str = "2000-01-01T00:00:00.000Z";
