//! `cxrel validate` driven as an operator would: the real binary against a real emulator process,
//! checking exit codes, the table, the JSON document, chaining of jobs in one file, and that the
//! dry run never writes.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::helpers::emulator::EmulatorProcess;

const DS: &str = "accounts";

/// Record id number `n` as a UUID (jobs need UUID ids by default).
fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn record(n: u32, children: &[u32]) -> Value {
    let ids: Vec<String> = children.iter().map(|&c| id(c)).collect();
    json!({"id": id(n), "fields": {"name": format!("r{n}"),
        "parent_child_link": {"ids": ids, "cascade_action": "none"}}})
}

/// Records 1..=40; 1→2, and the chain 10→11→12→13→14→15 (five edges, the depth limit).
fn records() -> Value {
    let mut out = vec![record(1, &[2]), record(2, &[])];
    for n in 10..15 {
        out.push(record(n, &[n + 1]));
    }
    out.push(record(15, &[]));
    out.extend((16..=40).filter(|n| *n != 15).map(|n| record(n, &[])));
    out.extend((3..10).map(|n| record(n, &[])));
    Value::Array(out)
}

async fn emulator() -> EmulatorProcess {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore(DS, records()).await;
    emu
}

/// Settings pointing the data-store client at `base`, failing fast when it does not answer.
fn config(base: &str) -> tempfile::NamedTempFile {
    let text = format!(
        r#"
[cxone]
api_base = "{base}"

[cxone.auth]
issuer = "{base}"

[retry]
max_attempts = 1
min_backoff = "10ms"
max_backoff = "20ms"
max_elapsed = "2s"
"#
    );
    let mut file = tempfile::NamedTempFile::new().expect("temp config");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write config");
    file
}

fn validate(base: &str, file: &std::path::Path, extra: &[&str]) -> Output {
    let config = config(base);
    Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .arg("--config")
        .arg(config.path())
        .arg("validate")
        .arg(file)
        .args(extra)
        .env_remove("CXREL_ENV")
        .env_remove("RUST_LOG")
        .env("CXREL__LOG__LEVEL", "warn")
        .output()
        .expect("run cxrel")
}

fn jobs_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write jobs file");
    path
}

/// One job, one replace operation on `parent_child_link`, as one JSON line.
fn job(job_id: &str, parent: u32, children: &[u32]) -> String {
    let ids: Vec<String> = children.iter().map(|&c| id(c)).collect();
    json!({"job_id": job_id, "datastore_id": DS, "operations": [
        {"parent_id": id(parent), "relationship_field": "parent_child_link", "child_ids": ids, "mode": "add"}
    ]})
    .to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

/// The report entry of job `job_id`.
fn entry<'a>(doc: &'a Value, job_id: &str) -> &'a Value {
    doc["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job_id"] == job_id))
        .unwrap_or_else(|| panic!("no job {job_id} in {doc}"))
}

async fn assert_nothing_written(emu: &EmulatorProcess) {
    let stats = emu.stats().await;
    assert_eq!(stats["patch_count"], 0, "validate must not write: {stats}");
    let requests = stats["requests"].as_object().expect("requests map");
    assert!(
        requests
            .keys()
            .filter(|route| route.contains(" /api/"))
            .all(|route| route.starts_with("GET ")),
        "only GET requests on the record API: {stats}"
    );
}

#[tokio::test]
async fn an_all_valid_file_exits_zero_and_the_table_names_each_job() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let array = format!(
        "[{},\n{}]",
        job("attach-3", 1, &[3]),
        job("attach-5", 4, &[5, 6])
    );
    let file = jobs_file(&dir, "jobs.json", &array);

    let out = validate(&emu.base, &file, &[]);
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}{}", text(&out.stderr));
    assert!(table.starts_with("JOB"), "{table}");
    for job_id in ["attach-3", "attach-5"] {
        assert!(table.contains(job_id), "{table}");
    }
    assert!(table.contains(&id(4)), "parents are listed: {table}");
    assert!(
        table.contains("2 jobs, 2 operations: 2 would apply, 0 no-op, 0 rejected"),
        "{table}"
    );
    assert_nothing_written(&emu).await;
}

#[tokio::test]
async fn rejections_exit_one_with_their_codes_in_the_json_document() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let partial = json!({"job_id": "partial", "datastore_id": DS, "atomic": false, "operations": [
        {"parent_id": id(20), "relationship_field": "parent_child_link", "child_ids": [id(21)]},
        {"parent_id": id(22), "relationship_field": "no_such_field", "child_ids": [id(23)]}
    ]});
    let lines = [
        job("cycle", 2, &[1]),
        job("too-deep", 15, &[16]),
        job("missing", 3, &[999]),
        "{oops".to_owned(),
        partial.to_string(),
        job("already", 1, &[2]),
    ];
    let file = jobs_file(&dir, "jobs.jsonl", &(lines.join("\n") + "\n"));

    let out = validate(&emu.base, &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = json_report(&out);
    let code = |job_id: &str, op: usize| entry(&doc, job_id)["operations"][op]["code"].clone();
    let verdict =
        |job_id: &str, op: usize| entry(&doc, job_id)["operations"][op]["verdict"].clone();
    assert_eq!(code("cycle", 0), "cycle_detected");
    assert_eq!(code("too-deep", 0), "max_depth_exceeded");
    assert_eq!(code("missing", 0), "record_not_found");
    assert_eq!(verdict("partial", 0), "apply");
    assert_eq!(code("partial", 1), "unknown_field");
    assert_eq!(verdict("already", 0), "no_op", "1→2 is already stored");

    let bad = &doc["jobs"][3];
    assert_eq!(bad["line"], 4, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_job", "{bad}");
    assert_eq!(doc["summary"]["jobs"], 6);
    assert_eq!(doc["summary"]["rejected"], 4);
    assert_eq!(doc["summary"]["job_errors"], 1);
    assert_eq!(doc["summary"]["rejected_jobs"], 5);
    assert_nothing_written(&emu).await;
}

#[tokio::test]
async fn a_later_job_is_checked_against_the_effect_of_earlier_ones() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    // 30→31 makes 31→30 a cycle; alone, 31→30 is fine.
    let second = job("close-loop", 31, &[30]);
    let both = format!("{}\n{second}\n", job("open", 30, &[31]));
    let file = jobs_file(&dir, "both.jsonl", &both);
    let alone = jobs_file(&dir, "alone.jsonl", &second);

    let out = validate(&emu.base, &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let doc = json_report(&out);
    assert_eq!(entry(&doc, "open")["operations"][0]["verdict"], "apply");
    assert_eq!(
        entry(&doc, "close-loop")["operations"][0]["code"],
        "cycle_detected"
    );

    let out = validate(&emu.base, &alone, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_nothing_written(&emu).await;
}

#[tokio::test]
async fn a_later_job_can_be_valid_only_because_of_an_earlier_one() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    // 1→2 is stored, so 2→1 alone is a cycle; after a job empties 1's children it is fine.
    let reverse = job("reverse", 2, &[1]);
    let clear = json!({"job_id": "clear", "datastore_id": DS, "operations": [
        {"parent_id": id(1), "relationship_field": "parent_child_link", "child_ids": []}
    ]});
    let both = format!("{clear}\n{reverse}\n");
    let file = jobs_file(&dir, "both.jsonl", &both);
    let alone = jobs_file(&dir, "alone.jsonl", &reverse);

    let out = validate(&emu.base, &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let doc = json_report(&out);
    assert_eq!(entry(&doc, "clear")["operations"][0]["verdict"], "apply");
    assert_eq!(entry(&doc, "reverse")["operations"][0]["verdict"], "apply");

    let out = validate(&emu.base, &alone, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let doc = json_report(&out);
    assert_eq!(
        entry(&doc, "reverse")["operations"][0]["code"],
        "cycle_detected"
    );
    assert_nothing_written(&emu).await;
}

#[tokio::test]
async fn an_unknown_data_store_rejects_its_jobs() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let body = job("elsewhere", 1, &[3]).replace(DS, "no-such-store");
    let file = jobs_file(&dir, "jobs.jsonl", &body);

    let out = validate(&emu.base, &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = json_report(&out);
    let job = entry(&doc, "elsewhere");
    assert_eq!(job["error"]["code"], "not_found", "{job}");
    assert_eq!(job["operations"][0]["verdict"], "rejected");
}

#[tokio::test]
async fn an_unreachable_store_exits_two_with_a_clear_message() {
    // Bind then drop a listener: nothing answers on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = jobs_file(&dir, "jobs.jsonl", &job("j", 1, &[3]));

    let out = validate(&format!("http://127.0.0.1:{port}"), &file, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cxrel validate:"), "{stderr}");
    assert!(stderr.contains("api_base"), "says what to check: {stderr}");
    assert!(
        !stderr.contains("demo-access-key-secret"),
        "no secrets: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no partial report: {}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn a_missing_file_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate("http://127.0.0.1:9", &dir.path().join("nope.jsonl"), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot open"), "{stderr}");
}
