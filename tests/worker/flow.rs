//! `cxrel worker` end to end: a real worker (a process, or built in the test's process where the
//! test needs no process of its own), the emulator over HTTP and the local RabbitMQ. Jobs go in
//! through the jobs queue; the tests read events, dead letters, webhooks and the store.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cxrel::amqp::{Publisher, headers};
use serde_json::{Value, json};

use crate::helpers::emulator::{EmulatorProcess, named_record};
use crate::helpers::workers::{
    EventTap, InProcessWorker, WorkerProcess, job, op, publish_jobs, rid, stored_ids, test_config,
};
use crate::helpers::{broker, emulator, workers};
use cxrel::harness::config::WebhookTarget;

const FIELD: &str = "parent_child_link";
const OWNER: &str = "owner_link";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Setup {
    emu: EmulatorProcess,
    q: workers::Queues,
}

/// An emulator with `datastore` holding `records` ids of set "r", a declared topology with an event
/// tap, and a publisher.
async fn setup(test: &str, datastore: &str, records: usize) -> Setup {
    let emu = EmulatorProcess::spawn();
    let list: Vec<Value> = (0..records)
        .map(|n| named_record(&rid("r", n), &format!("r{n}")))
        .collect();
    emu.create_test_datastore(datastore, Value::Array(list))
        .await;
    let q = workers::queues(test, &[200, 400, 800]).await;
    Setup { emu, q }
}

fn completed_jobs(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e["type"] == "cxrel.job.completed")
        .filter_map(|e| e["data"]["job_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn many_jobs_apply_exactly_with_one_event_per_operation_and_signed_webhooks() {
    let mut s = setup("happy", "accounts", 200).await;
    let hook = s.emu.webhook_receiver("happy", SECRET).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix())
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let worker = WorkerProcess::spawn(&config);

    // 50 jobs × 2 operations: parent 2k gets child 2k+1 in both fields → 100 PATCHes.
    let jobs: Vec<Value> = (0..50)
        .map(|j| {
            let (p, c) = (rid("r", 4 * j), rid("r", 4 * j + 1));
            let (p2, c2) = (rid("r", 4 * j + 2), rid("r", 4 * j + 3));
            job(
                &format!("happy-{j}"),
                "accounts",
                true,
                vec![op(&p, FIELD, &[&c]), op(&p2, OWNER, &[&c2])],
            )
        })
        .collect();
    publish_jobs(&s.q.publisher, &s.q.topology, &jobs).await;
    let all_done =
        s.q.tap
            .until(Duration::from_secs(60), |e| completed_jobs(e).len() == 50)
            .await;
    assert!(
        all_done,
        "only {} of 50 jobs completed",
        completed_jobs(&s.q.tap.events).len()
    );

    assert_eq!(
        s.q.tap.count("cxrel.relationship.applied"),
        100,
        "one applied event per operation"
    );
    assert_eq!(s.q.tap.count("cxrel.job.completed"), 50);
    for j in 0..50 {
        let (_, record) = s.emu.get_record("accounts", &rid("r", 4 * j)).await;
        assert_eq!(stored_ids(&record, FIELD), vec![rid("r", 4 * j + 1)]);
        let (_, record) = s.emu.get_record("accounts", &rid("r", 4 * j + 2)).await;
        assert_eq!(stored_ids(&record, OWNER), vec![rid("r", 4 * j + 3)]);
    }
    let applied =
        s.q.tap
            .of_type("cxrel.relationship.applied")
            .next()
            .unwrap()
            .clone();
    assert_eq!(applied["specversion"], "1.0");
    assert!(applied["data"]["version"].as_u64().is_some());
    assert!(
        applied["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-"))
    );

    // Webhooks: every published event arrives, signed (150 events; delivery is asynchronous).
    let mut deliveries = Value::Null;
    for _ in 0..100 {
        deliveries = emulator::fetch_json(emulator::client().get(&hook)).await;
        if deliveries["count"].as_u64() >= Some(150) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(deliveries["count"], 150, "one webhook per event");
    let list = deliveries["deliveries"].as_array().unwrap();
    assert!(
        list.iter().all(|d| d["verified"] == true),
        "every signature verifies"
    );
    assert_operator_endpoints(&worker).await;
    drop(worker);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// What an operator's probes and Prometheus see after the happy path.
async fn assert_operator_endpoints(worker: &WorkerProcess) {
    let client = emulator::client();
    let health = client
        .get(format!("{}/healthz", worker.http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = client
        .get(format!("{}/readyz", worker.http))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["broker"]["ready"], true, "{ready}");
    assert_eq!(ready["checks"]["token"]["ready"], true, "{ready}");
    let metrics = worker.metrics().await;
    for line in [
        "cxrel_jobs_total{outcome=\"completed\"} 50",
        "cxrel_jobs_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    for name in [
        "cxrel_operations_total{",
        "cxrel_store_requests_total{",
        "cxrel_store_request_duration_seconds",
        "cxrel_store_limiter_wait_seconds",
        "cxrel_job_duration_seconds",
        "cxrel_webhook_deliveries_total{",
        "cxrel_graph_records",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

/// The rejection codes of SPEC §2, each with a job that triggers it against data store `rules`.
fn rejection_cases() -> Vec<(&'static str, Value)> {
    let r = |n| rid("r", n);
    let ghost = rid("ghost", 0);
    vec![
        (
            "unknown_field",
            job(
                "rej-unknown",
                "rules",
                true,
                vec![op(&r(0), "no_such_field", &[&r(1)])],
            ),
        ),
        (
            "not_relationship_field",
            job(
                "rej-notrel",
                "rules",
                true,
                vec![op(&r(0), "name", &[&r(1)])],
            ),
        ),
        (
            "record_not_found",
            job(
                "rej-missing",
                "rules",
                true,
                vec![op(&r(0), FIELD, &[&ghost])],
            ),
        ),
        (
            "duplicate_child",
            job(
                "rej-dup",
                "rules",
                true,
                vec![op(&r(0), FIELD, &[&r(1), &r(1)])],
            ),
        ),
        (
            "cycle_detected",
            job("rej-self", "rules", true, vec![op(&r(2), FIELD, &[&r(2)])]),
        ),
        // A cycle only the two operations together make, across two fields.
        (
            "cycle_detected",
            job(
                "rej-cycle",
                "rules",
                true,
                vec![op(&r(3), FIELD, &[&r(4)]), op(&r(4), OWNER, &[&r(3)])],
            ),
        ),
        // Depth 6 > max_depth 5: a chain r10 → … → r16 in one job.
        (
            "max_depth_exceeded",
            job(
                "rej-depth",
                "rules",
                true,
                (10..16).map(|n| op(&r(n), FIELD, &[&r(n + 1)])).collect(),
            ),
        ),
        (
            "max_children_exceeded",
            job(
                "rej-children",
                "rules",
                true,
                vec![op(&r(20), "team_link", &[&r(21), &r(22), &r(23)])],
            ),
        ),
        (
            "parent_conflict",
            job(
                "rej-parent",
                "rules",
                true,
                vec![op(&r(30), OWNER, &[&r(32)]), op(&r(31), OWNER, &[&r(32)])],
            ),
        ),
        (
            "ownership_conflict",
            job(
                "rej-owner",
                "rules",
                true,
                vec![
                    json!({"parent_id": r(40), "relationship_field": FIELD, "child_ids": [r(42)], "cascade_action": "delete"}),
                    op(&r(41), OWNER, &[&r(42)]),
                ],
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_code_ends_as_a_coded_dead_letter_and_rejected_events_with_nothing_written()
{
    let emu = EmulatorProcess::spawn();
    let mut fields = emulator::test_schema();
    fields.as_array_mut().unwrap().push(
        json!({"name": "team_link", "type": "relationship", "constraints": {"max_children": 2}}),
    );
    let records: Vec<Value> = (0..50).map(|n| named_record(&rid("r", n), "x")).collect();
    emu.create_datastore("rules", fields, Value::Array(records))
        .await;
    let prefix = broker::unique_prefix("rejections");
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let worker = InProcessWorker::start(&test_config(&emu.base, &prefix)).await;

    let cases = rejection_cases();
    let jobs: Vec<Value> = cases.iter().map(|(_, j)| j.clone()).collect();
    publish_jobs(&publisher, &topology, &jobs).await;
    let n = cases.len();
    assert!(
        tap.until(Duration::from_secs(60), |e| completed_jobs(e).len() == n)
            .await
    );

    let dead = broker::take(&channel, &topology.dead(), n, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), n, "one dead letter per rejected job");
    let codes: HashMap<String, String> = dead
        .iter()
        .map(|m| {
            let t = headers::table(&m.delivery.properties);
            assert_eq!(
                headers::get_str(&t, headers::STAGE).as_deref(),
                Some("validate")
            );
            assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), Some(1));
            assert_eq!(
                headers::get_str(&t, headers::DATASTORE_ID).as_deref(),
                Some("rules")
            );
            (
                headers::get_str(&t, headers::JOB_ID).unwrap(),
                headers::get_str(&t, headers::ERROR_CODE).unwrap(),
            )
        })
        .collect();
    for (code, job) in &cases {
        let id = job["job_id"].as_str().unwrap();
        assert_eq!(codes.get(id).map(String::as_str), Some(*code), "job {id}");
        let rejected: Vec<_> = tap
            .of_type("cxrel.relationship.rejected")
            .filter(|e| e["data"]["job_id"] == id)
            .collect();
        assert!(!rejected.is_empty(), "job {id} has a rejected event");
        assert!(
            rejected.iter().any(|e| e["data"]["code"] == *code),
            "job {id}: {rejected:?}"
        );
    }
    let cycle = tap
        .of_type("cxrel.relationship.rejected")
        .find(|e| e["data"]["job_id"] == "rej-cycle")
        .unwrap();
    let message = cycle["data"]["message"].as_str().unwrap();
    assert!(
        message.contains(&rid("r", 3)) && message.contains(&rid("r", 4)),
        "the path is named: {message}"
    );
    assert_eq!(tap.count("cxrel.relationship.applied"), 0);
    assert_eq!(
        emu.stats().await["patch_count"],
        0,
        "nothing written for atomic jobs"
    );
    worker.stop().await;
    broker::teardown(&channel, &topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_job_failing_part_way_restores_the_earlier_parents_with_rolled_back_events() {
    let mut s = setup("rollback", "accounts", 10).await;
    // parallel_patches = 1 sends the PATCHes in job order, so the first parent is written first.
    let config = test_config(&s.emu.base, s.q.topology.prefix()).parallel_patches(1);
    let worker = InProcessWorker::start(&config).await;
    let (a, b, c) = (rid("r", 0), rid("r", 1), rid("r", 2));
    // Load the worker's graph first, then delete a parent behind its back: its PATCH answers 404.
    publish_jobs(
        &s.q.publisher,
        &s.q.topology,
        &[job(
            "warm-up",
            "accounts",
            true,
            vec![op(&rid("r", 5), FIELD, &[&rid("r", 6)])],
        )],
    )
    .await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed_jobs(e)
                .contains("warm-up"))
            .await
    );
    assert_eq!(s.emu.delete_record("accounts", &b).await, 204);

    publish_jobs(
        &s.q.publisher,
        &s.q.topology,
        &[job(
            "atomic-fail",
            "accounts",
            true,
            vec![op(&a, FIELD, &[&c]), op(&b, FIELD, &[&c])],
        )],
    )
    .await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed_jobs(e)
                .contains("atomic-fail"))
            .await
    );

    let (_, record) = s.emu.get_record("accounts", &a).await;
    assert!(
        stored_ids(&record, FIELD).is_empty(),
        "the first parent is restored: {record}"
    );
    let rolled: Vec<_> = s.q.tap.of_type("cxrel.relationship.rolled_back").collect();
    assert_eq!(rolled.len(), 1);
    assert_eq!(rolled[0]["data"]["parent_id"], a.as_str());
    assert_eq!(rolled[0]["data"]["code"], "record_not_found");
    let failed: Vec<_> = s.q.tap.of_type("cxrel.relationship.failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["data"]["parent_id"], b.as_str());
    let dead = broker::take(
        &s.q.channel,
        &s.q.topology.dead(),
        1,
        Duration::from_secs(10),
    )
    .await;
    let t = headers::table(&dead[0].delivery.properties);
    assert_eq!(
        headers::get_str(&t, headers::STAGE).as_deref(),
        Some("apply")
    );
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_twice_reaches_the_same_state_with_the_same_event_ids() {
    let mut s = setup("redeliver", "accounts", 10).await;
    let worker = InProcessWorker::start(&test_config(&s.emu.base, s.q.topology.prefix())).await;
    let j = job(
        "twice",
        "accounts",
        true,
        vec![op(&rid("r", 0), FIELD, &[&rid("r", 1), &rid("r", 2)])],
    );
    publish_jobs(&s.q.publisher, &s.q.topology, std::slice::from_ref(&j)).await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed_jobs(e)
                .contains("twice"))
            .await
    );
    publish_jobs(&s.q.publisher, &s.q.topology, &[j]).await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| e
                .iter()
                .filter(|e| e["type"] == "cxrel.job.completed")
                .count()
                == 2)
            .await
    );

    let (_, record) = s.emu.get_record("accounts", &rid("r", 0)).await;
    assert_eq!(stored_ids(&record, FIELD), vec![rid("r", 1), rid("r", 2)]);
    let ids: Vec<_> =
        s.q.tap
            .events
            .iter()
            .map(|e| (e["type"].clone(), e["id"].clone()))
            .collect();
    assert_eq!(ids.len(), 4, "applied + completed, twice: {ids:?}");
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[1], ids[3]);
    assert_eq!(
        s.emu.stats().await["patch_count"],
        1,
        "the second delivery found the value stored"
    );
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

#[tokio::test]
async fn a_remove_clears_a_reference_to_a_record_deleted_behind_the_worker() {
    let mut s = setup("dangling", "accounts", 4).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix());
    let (p, gone, kept) = (rid("r", 0), rid("r", 1), rid("r", 2));
    let worker = InProcessWorker::start(&config).await;
    let link = job(
        "link",
        "accounts",
        true,
        vec![op(&p, FIELD, &[&gone, &kept])],
    );
    publish_jobs(&s.q.publisher, &s.q.topology, &[link]).await;
    let linked = s.q.tap.until(Duration::from_secs(30), |e| {
        completed_jobs(e).contains("link")
    });
    assert!(linked.await);
    worker.stop().await;
    // Deleted while no worker runs: the next one loads a graph where p lists an id that is no
    // record (the emulator, like many stores, keeps dangling ids).
    assert_eq!(s.emu.delete_record("accounts", &gone).await, 204);

    let worker = InProcessWorker::start(&config).await;
    let mut remove = op(&p, FIELD, &[&gone]);
    remove["mode"] = json!("remove");
    let clean = job("clean", "accounts", true, vec![remove]);
    publish_jobs(&s.q.publisher, &s.q.topology, &[clean]).await;
    let cleaned = s.q.tap.until(Duration::from_secs(30), |e| {
        completed_jobs(e).contains("clean")
    });
    assert!(cleaned.await);
    let applied: Vec<_> = s.q.tap.of_type("cxrel.relationship.applied").collect();
    assert!(
        applied.iter().any(|e| e["data"]["job_id"] == "clean"),
        "the remove is applied, not rejected as record_not_found"
    );
    let (_, record) = s.emu.get_record("accounts", &p).await;
    assert_eq!(stored_ids(&record, FIELD), vec![kept.clone()]);
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

#[tokio::test]
async fn an_operation_left_unprocessed_carries_the_job_s_failure_code_in_job_completed() {
    let mut s = setup("unprocessed-code", "accounts", 2).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix());
    let worker = InProcessWorker::start(&config).await;
    let j = job(
        "no-store",
        "no-such-store",
        true,
        vec![op(&rid("r", 0), FIELD, &[&rid("r", 1)])],
    );
    publish_jobs(&s.q.publisher, &s.q.topology, &[j]).await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed_jobs(e)
                .contains("no-store"))
            .await
    );
    let completed = s.q.tap.of_type("cxrel.job.completed").next().unwrap();
    let operation = &completed["data"]["operations"][0];
    assert_eq!(operation["status"], "unprocessed", "{completed}");
    assert_eq!(operation["code"], "not_found", "{completed}");
    assert!(operation["message"].is_string(), "{completed}");
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_token_endpoint_refuses_retry_the_job_before_dead_lettering_it() {
    let s = setup("refused-login", "accounts", 2).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix());
    let env = HashMap::from([(
        "CXREL__CXONE__AUTH__ACCESS_KEY_SECRET".to_owned(),
        "a-rotated-away-secret".to_owned(),
    )]);
    let worker = InProcessWorker::start_with_env(&config, env).await;
    let j = job(
        "refused-login",
        "accounts",
        true,
        vec![op(&rid("r", 0), FIELD, &[&rid("r", 1)])],
    );
    publish_jobs(&s.q.publisher, &s.q.topology, &[j]).await;
    let dead = broker::take(
        &s.q.channel,
        &s.q.topology.dead(),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(dead.len(), 1, "dead-lettered once the retries ran out");
    let t = headers::table(&dead[0].delivery.properties);
    assert_eq!(
        headers::get_str(&t, headers::ERROR_CODE).as_deref(),
        Some("unauthorized")
    );
    // Not at the first attempt: the worker could not log in, the job was not wrong, so it went
    // through every hold queue (three here) first.
    assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), Some(4));
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// Job statuses by job id, from `job.completed`.
fn job_statuses(events: &[Value], job_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "cxrel.job.completed" && e["data"]["job_id"] == job_id)
        .flat_map(|e| {
            e["data"]["operations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|o| o["status"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_job_that_only_sets_an_empty_field_s_cascade_writes_it_and_later_adds_keep_it() {
    let mut s = setup("empty-cascade", "accounts", 4).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix());
    let worker = InProcessWorker::start(&config).await;
    let (owner, other, child) = (rid("r", 0), rid("r", 1), rid("r", 2));
    let set = |id: &str, ops: Vec<Value>| job(id, "accounts", true, ops);
    let steps = [
        // The field is absent: empty, but with no cascade of `delete` yet.
        set(
            "cascade-only",
            vec![
                json!({"parent_id": owner, "relationship_field": FIELD, "child_ids": [],
                        "cascade_action": "delete"}),
            ],
        ),
        // No cascade given: the field's current one (`delete`) is kept…
        set(
            "add-keeps",
            vec![
                json!({"parent_id": owner, "relationship_field": FIELD, "child_ids": [child],
                        "mode": "add"}),
            ],
        ),
        // …so the child is owned, and a second parent is an ownership conflict.
        set("second-parent", vec![op(&other, OWNER, &[&child])]),
    ];
    for step in &steps {
        let id = step["job_id"].as_str().unwrap().to_owned();
        publish_jobs(&s.q.publisher, &s.q.topology, std::slice::from_ref(step)).await;
        assert!(
            s.q.tap
                .until(Duration::from_secs(30), |e| completed_jobs(e).contains(&id))
                .await,
            "{id} did not complete"
        );
    }
    let events = &s.q.tap.events;
    assert_eq!(job_statuses(events, "cascade-only"), ["applied"]);
    assert_eq!(job_statuses(events, "add-keeps"), ["applied"]);
    assert_eq!(job_statuses(events, "second-parent"), ["rejected"]);
    let (_, record) = s.emu.get_record("accounts", &owner).await;
    assert_eq!(
        record["fields"][FIELD]["cascade_action"], "delete",
        "{record}"
    );
    assert_eq!(stored_ids(&record, FIELD), [child]);
    let rejected =
        s.q.tap
            .of_type("cxrel.relationship.rejected")
            .next()
            .unwrap();
    assert_eq!(rejected["data"]["code"], "ownership_conflict", "{rejected}");
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}
