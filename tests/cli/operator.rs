//! `cxrel enqueue` and `cxrel dlq` driven as an operator would: the real binary against the local
//! RabbitMQ, each test under its own prefix.

use std::process::{Command, Output};
use std::time::Duration;

use cxrel::amqp::{Publisher, Topology, headers, topology};
use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::helpers::broker;

fn cxrel(prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args(args)
        .env("CXREL__AMQP__PREFIX", prefix)
        .env("CXREL__LOG__LEVEL", "warn")
        // Export ledgers (purge's check) stay out of the home directory.
        .env("XDG_STATE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run cxrel")
}

/// `cxrel enqueue FILE [options]` with FILE, named `file_name`, holding `text`.
fn enqueue(prefix: &str, file_name: &str, text: &str, options: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(file_name);
    std::fs::write(&file, text).unwrap();
    let mut args = vec!["enqueue", file.to_str().unwrap()];
    args.extend_from_slice(options);
    cxrel(prefix, &args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn declared(test: &str) -> (Topology, lapin::Connection, lapin::Channel) {
    let prefix = broker::unique_prefix(test);
    let topo = Topology::new(
        prefix,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
            Duration::from_secs(120),
            Duration::from_secs(600),
        ],
    );
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    topology::declare(&channel, &topo).await.unwrap();
    (topo, connection, channel)
}

#[tokio::test]
async fn enqueue_skips_a_bad_json_line_and_reports_its_number() {
    let (topo, _conn, channel) = declared("enqueue-skip").await;
    let out = enqueue(
        topo.prefix(),
        "jobs.jsonl",
        "{\"job_id\":\"a\"}\n{not json\n\n{\"job_id\":\"b\"}\n",
        &["--on-error", "skip"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a skipped line makes the exit code 1"
    );
    let text = stdout(&out);
    assert!(text.contains("published 2 jobs"), "{text}");
    assert!(text.contains("skipped line 2"), "{text}");

    let jobs = broker::take(&channel, &topo.jobs(), 2, Duration::from_secs(5)).await;
    let ids: Vec<_> = jobs
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids,
        vec!["a", "b"],
        "message ids follow job ids, in file order"
    );
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn enqueue_refuses_a_job_above_the_body_limit_instead_of_publishing_it() {
    let (topo, _conn, channel) = declared("enqueue-big").await;
    // Above the default [limits].max_body_bytes (1 MiB): the worker would only dead-letter it.
    let big = format!(
        "{{\"job_id\":\"big\",\"pad\":\"{}\"}}",
        "x".repeat(1_100_000)
    );
    let text = format!("{{\"job_id\":\"a\"}}\n{big}\n{{\"job_id\":\"b\"}}\n");
    let out = enqueue(topo.prefix(), "jobs.jsonl", &text, &["--on-error", "skip"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("published 2 jobs"), "{text}");
    assert!(text.contains("skipped line 2"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    let left = cxrel::dlq::depth(&channel, &topo.jobs()).await.unwrap();
    assert_eq!(left, 2, "only the two small jobs were published");
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn enqueue_aborts_at_a_bad_line_by_default() {
    let (topo, _conn, channel) = declared("enqueue-abort").await;
    let out = enqueue(
        topo.prefix(),
        "jobs.jsonl",
        "{\"job_id\":\"a\"}\n[1\n{\"job_id\":\"b\"}\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("aborted at line 2"),
        "{}",
        stdout(&out)
    );
    let jobs = broker::take(&channel, &topo.jobs(), 2, Duration::from_secs(2)).await;
    assert_eq!(jobs.len(), 1);
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn enqueue_reads_a_json_array() {
    let (topo, _conn, channel) = declared("enqueue-array").await;
    let out = enqueue(
        topo.prefix(),
        "jobs.json",
        "[{\"job_id\":\"x\"},\n {\"job_id\":\"y\"}, {\"job_id\":\"z\"}]",
        &["--rate", "100"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let jobs = broker::take(&channel, &topo.jobs(), 3, Duration::from_secs(5)).await;
    assert_eq!(jobs.len(), 3);
    broker::teardown(&channel, &topo).await;
}

/// Puts a dead letter on the dead queue as the worker would.
async fn dead_letter(publisher: &Publisher, topo: &Topology, job: &str, code: &str, age_secs: u64) {
    let mut t = FieldTable::default();
    headers::set_str(&mut t, headers::ERROR_CODE, code);
    headers::set_str(&mut t, headers::ERROR_MESSAGE, format!("{code} in {job}"));
    headers::set_str(&mut t, headers::STAGE, "validate");
    headers::set_str(&mut t, headers::JOB_ID, job);
    headers::set_u64(&mut t, headers::ATTEMPTS, 2);
    let at = std::time::SystemTime::now() - Duration::from_secs(age_secs);
    headers::set_str(
        &mut t,
        headers::LAST_FAILED_AT,
        humantime::format_rfc3339_millis(at).to_string(),
    );
    let props = BasicProperties::default()
        .with_message_id(job.into())
        .with_content_type("application/json".into())
        .with_headers(t);
    let body = format!("{{\"job_id\":\"{job}\"}}");
    publisher
        .to_queue(&topo.dead(), body.as_bytes(), props)
        .await
        .unwrap();
}

async fn seeded_dead_queue(test: &str) -> (Topology, lapin::Connection, lapin::Channel) {
    let (topo, conn, channel) = declared(test).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    dead_letter(&publisher, &topo, "j1", "cycle_detected", 7200).await;
    dead_letter(&publisher, &topo, "j2", "cycle_detected", 10).await;
    dead_letter(&publisher, &topo, "j3", "server_error", 7200).await;
    dead_letter(&publisher, &topo, "j4", "record_not_found", 7200).await;
    (topo, conn, channel)
}

#[tokio::test]
async fn dlq_list_counts_by_code_and_show_prints_headers_and_body() {
    let (topo, _conn, channel) = seeded_dead_queue("dlq-list").await;
    let out = cxrel(topo.prefix(), &["dlq", "list"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("4 dead letters"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("cycle_detected") && l.split_whitespace().nth(1) == Some("2")),
        "{text}"
    );
    assert!(text.contains("j2 code=cycle_detected"), "{text}");

    let out = cxrel(topo.prefix(), &["dlq", "show", "j3"]);
    assert_eq!(out.status.code(), Some(0));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["headers"]["x-cxrel-error-code"], "server_error");
    assert_eq!(shown["body"]["job_id"], "j3");
    assert_eq!(
        cxrel(topo.prefix(), &["dlq", "show", "nope"]).status.code(),
        Some(1)
    );

    // Browsing removed nothing.
    let left = cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap();
    assert_eq!(left, 4);
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn dlq_list_into_a_closed_pipe_ends_quietly_instead_of_panicking() {
    let (topo, _conn, channel) = seeded_dead_queue("dlq-pipe").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args(["dlq", "list"])
        .env("CXREL__AMQP__PREFIX", topo.prefix())
        .env("CXREL__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is written, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn dlq_replay_dry_run_changes_nothing_and_filters_select_what_moves() {
    let (topo, _conn, channel) = seeded_dead_queue("dlq-replay").await;
    let out = cxrel(
        topo.prefix(),
        &["dlq", "replay", "--code", "cycle_detected", "--dry-run"],
    );
    let text = stdout(&out);
    assert!(
        text.contains("2 of 4 dead letters would be replayed"),
        "{text}"
    );
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 4);

    let out = cxrel(
        topo.prefix(),
        &[
            "dlq",
            "replay",
            "--code",
            "cycle_detected",
            "--older-than",
            "1h",
        ],
    );
    assert!(stdout(&out).contains("replayed 1 of"), "{}", stdout(&out));
    let out = cxrel(
        topo.prefix(),
        &[
            "dlq", "replay", "--job-id", "j4", "--reason", "j4 fixed", "--rate", "5",
        ],
    );
    assert!(stdout(&out).contains("replayed j4"), "{}", stdout(&out));

    let jobs = broker::take(&channel, &topo.jobs(), 3, Duration::from_secs(5)).await;
    let ids: Vec<_> = jobs
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, vec!["j1", "j4"]);
    let t = headers::table(&jobs[0].delivery.properties);
    assert_eq!(
        headers::get_u64(&t, headers::ATTEMPTS),
        None,
        "attempts reset"
    );
    assert!(t.contains_key(headers::REPLAYED), "replay history added");
    let reason = |m: &lapin::message::BasicGetMessage| {
        let t = headers::table(&m.delivery.properties);
        headers::get_str(&t, "x-cxrel-replay-reason").unwrap_or_default()
    };
    assert_eq!(
        reason(&jobs[0]),
        "replayed with cxrel dlq",
        "the default reason"
    );
    assert_eq!(reason(&jobs[1]), "j4 fixed");
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 2);

    let out = cxrel(topo.prefix(), &["dlq", "replay", "--limit", "1"]);
    assert!(stdout(&out).contains("replayed 1 of 1"), "{}", stdout(&out));
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 1);
    broker::teardown(&channel, &topo).await;
}

/// Letters another consumer holds unacked are invisible to a replay: it says so instead of
/// reporting a clean run.
#[tokio::test]
async fn a_replay_says_when_another_consumer_holds_dead_letters_it_could_not_see() {
    let (topo, conn, channel) = seeded_dead_queue("dlq-held").await;
    let (holder, _consumer) = hold_dead_letters(&conn, &topo, 2).await;
    let out = cxrel(topo.prefix(), &["dlq", "replay"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(stdout(&out).contains("replayed 2 of 2"), "{}", stdout(&out));
    assert!(
        err.contains("1 other consumer(s) are attached"),
        "the replay names what it could not see: {err}"
    );
    let _ = holder.close(200, "done".into()).await;
    broker::teardown(&channel, &topo).await;
}

/// Ctrl-C (SIGINT) during a replay ends it after the message in hand, and it says what it did:
/// the ids replayed so far, "interrupted", exit 130; nothing is lost.
#[tokio::test]
async fn an_interrupted_replay_lists_what_it_replayed_and_exits_130() {
    let (topo, _conn, channel) = seeded_dead_queue("dlq-interrupt").await;
    let child = Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args(["dlq", "replay", "--rate", "1", "--reason", "slowly"])
        .env("CXREL__AMQP__PREFIX", topo.prefix())
        .env("CXREL__LOG__LEVEL", "warn")
        .env("XDG_STATE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cxrel");
    // At 1 per second, four letters take about 3 s: interrupt once the first has moved.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while cxrel::dlq::depth(&channel, &topo.jobs()).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        stdout(&out),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let replayed = stdout
        .lines()
        .filter(|l| l.starts_with("replayed j"))
        .count() as u32;
    assert!((1..4).contains(&replayed), "{stdout}");
    let dead = cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap();
    let jobs = cxrel::dlq::depth(&channel, &topo.jobs()).await.unwrap();
    assert_eq!((dead, jobs), (4 - replayed, replayed), "{stdout}");
    broker::teardown(&channel, &topo).await;
}

/// Two replays or purges of one dead queue at once would each miss what the other holds and
/// still report success: the second is refused while the first runs, and works after.
#[tokio::test]
async fn a_second_replay_while_one_runs_is_refused_and_says_why() {
    let (topo, conn, channel) = seeded_dead_queue("dlq-busy").await;
    // What a running scan holds: the exclusive lock queue, on another connection.
    let lock = conn.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let name = format!("{}.scan-lock", topo.dead());
    lock.queue_declare(name.as_str().into(), options, Default::default())
        .await
        .unwrap();
    let depth = cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap();
    let out = cxrel(topo.prefix(), &["dlq", "replay", "--reason", "busy"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("another replay or purge is running"), "{err}");
    assert_eq!(
        cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(),
        depth
    );
    lock.queue_delete(name.as_str().into(), Default::default())
        .await
        .unwrap();
    let out = cxrel(topo.prefix(), &["dlq", "replay", "--reason", "free"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 0);
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn dlq_export_writes_json_lines_and_purge_needs_yes() {
    let (topo, _conn, channel) = seeded_dead_queue("dlq-export").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dead.jsonl");
    let out = cxrel(
        topo.prefix(),
        &["dlq", "export", "--output", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["headers"]["x-cxrel-job-id"], "j1");

    assert_eq!(
        cxrel(topo.prefix(), &["dlq", "purge"]).status.code(),
        Some(2)
    );
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 4);
    let out = cxrel(topo.prefix(), &["dlq", "purge", "--yes"]);
    assert!(stdout(&out).contains("purged 4"), "{}", stdout(&out));
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 0);
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn dlq_export_fails_with_what_it_missed_and_purge_needs_a_covering_export() {
    let (topo, conn, channel) = seeded_dead_queue("dlq-export-all").await;
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cxrel"))
            .args(args)
            .env("CXREL__AMQP__PREFIX", topo.prefix())
            .env("CXREL__LOG__LEVEL", "warn")
            .env("XDG_STATE_HOME", state.path())
            .output()
            .expect("run cxrel")
    };
    let file = state.path().join("dead.jsonl");
    let file = file.to_str().unwrap();

    // Another reader holds one dead letter unacked: export cannot see it and must fail.
    let (holder, _consumer) = hold_dead_letters(&conn, &topo, 1).await;
    let out = run(&["dlq", "export", "-o", file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("1 other reader"), "{err}");
    holder.close(200, "done".into()).await.unwrap();

    // No complete export yet: a purge is refused, and removes nothing.
    let out = run(&["dlq", "purge", "--code", "cycle_detected", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("export first"), "{err}");
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 4);

    // A complete export of one code covers a purge of that code, not of everything.
    let out = run(&["dlq", "export", "--code", "cycle_detected", "-o", file]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 2"));
    let out = run(&["dlq", "purge", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "4 would go, 2 were exported");
    let out = run(&["dlq", "purge", "--code", "cycle_detected", "--yes"]);
    assert!(stdout(&out).contains("purged 2"), "{}", stdout(&out));
    let out = run(&[
        "dlq",
        "purge",
        "--code",
        "nope",
        "--yes",
        "--without-export",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("matched nothing"), "{err}");
    let out = run(&["dlq", "purge", "--yes", "--without-export"]);
    assert!(stdout(&out).contains("purged 2"), "{}", stdout(&out));
    broker::teardown(&channel, &topo).await;
}

#[test]
fn a_misspelt_stage_filter_is_refused_with_the_stages_there_are() {
    let out = cxrel(
        &broker::unique_prefix("stage"),
        &["dlq", "replay", "--stage", "parsee", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parse, validate, apply"), "stderr: {err}");
}

/// Another reader holding `n` dead letters unacked, and attached, until its channel closes.
async fn hold_dead_letters(
    conn: &lapin::Connection,
    topo: &Topology,
    n: u16,
) -> (lapin::Channel, lapin::Consumer) {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let holder = conn.create_channel().await.unwrap();
    holder
        .basic_qos(n, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = holder
        .basic_consume(
            topo.dead().as_str().into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        consumer.next().await.unwrap().unwrap();
    }
    (holder, consumer)
}
