//! The worker's less travelled paths, each forced deterministically: a job waiting in the hold
//! queues while the store fails, a locked record (409), a record changed behind the worker's cached
//! graph (412 → re-read, revalidate, apply), webhooks that keep failing (webhook dead queue), and
//! the W3C trace context carried from a job to its events and webhooks.

use std::time::{Duration, Instant};

use cxrel::amqp::headers;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::helpers::emulator::EmulatorProcess;
use crate::helpers::workers::pairs::{
    FIELD, assert_pairs_stored, completed, emulator_with, pair_jobs,
};
use crate::helpers::workers::{
    InProcessWorker, QUICK_BACKOFF, WorkerProcess, job, millis, op, publish_jobs, queues, rid,
    test_config,
};
use crate::helpers::{broker, emulator, workers};
use cxrel::harness::config::WebhookTarget;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A counter's value in the worker's /metrics text (0 when absent).
async fn counter(worker: &WorkerProcess, series: &str) -> f64 {
    let text = worker.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `counter` until it reaches `at_least`; false after `timeout`.
async fn counter_reaches(
    worker: &WorkerProcess,
    series: &str,
    at_least: f64,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if counter(worker, series).await >= at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Hold-queue delays of the retry tests: long enough in total to outlast the faults they inject.
const HOLD_DELAYS_MS: [u64; 5] = [300, 600, 1200, 2400, 4800];

/// A worker on `q`'s prefix with the hold delays of `HOLD_DELAYS_MS`, ready to consume.
async fn ready_worker(
    emu: &emulator::EmulatorProcess,
    q: &workers::Queues,
    client_attempts: u32,
) -> WorkerProcess {
    // The same delays as the test's topology.
    let config = test_config(&emu.base, q.topology.prefix())
        .retry_delays(&millis(&HOLD_DELAYS_MS))
        .store_retry(client_attempts, QUICK_BACKOFF, Duration::from_secs(5));
    let worker = WorkerProcess::spawn(&config);
    worker.wait_ready(Duration::from_secs(30)).await;
    worker
}

const RETRIED: &str = "cxrel_jobs_total{outcome=\"retried\"}";

#[tokio::test]
async fn jobs_wait_in_the_hold_queues_while_the_store_fails_and_complete_when_it_recovers() {
    let emu = emulator_with(20).await;
    let mut q = queues("hold", &HOLD_DELAYS_MS).await;
    let worker = ready_worker(&emu, &q, 1).await;
    emu.set_faults(json!({"error_ratio": 1.0})).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("held", 10)).await;
    // Every job fails its first attempt and goes to a hold queue, not to the dead letters.
    assert!(counter_reaches(&worker, RETRIED, 10.0, Duration::from_secs(20)).await);
    emu.set_faults(json!({"error_ratio": 0.0})).await;
    let done = q
        .tap
        .until(Duration::from_secs(30), |e| completed(e).len() == 10)
        .await;
    assert!(done, "{} of 10 completed", completed(&q.tap.events).len());
    assert_pairs_stored(&emu, 10).await;
    broker::assert_no_dead_letters(&q.channel, &q.topology).await;
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_hold_queue_deleted_behind_the_worker_is_declared_again_and_the_job_retried() {
    let emu = emulator_with(4).await;
    let mut q = queues("holdgone", &HOLD_DELAYS_MS).await;
    let worker = ready_worker(&emu, &q, 1).await;
    let first_hold = q
        .topology
        .retry_queue(Duration::from_millis(HOLD_DELAYS_MS[0]));
    q.channel
        .queue_delete(first_hold.as_str().into(), Default::default())
        .await
        .unwrap();
    emu.set_faults(json!({"error_ratio": 1.0})).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("holdgone", 1)).await;
    // Before, every settle attempt found no queue and the job was dead-lettered `settle_failed`.
    assert!(counter_reaches(&worker, RETRIED, 1.0, Duration::from_secs(20)).await);
    emu.set_faults(json!({"error_ratio": 0.0})).await;
    let done = q
        .tap
        .until(Duration::from_secs(30), |e| completed(e).len() == 1)
        .await;
    assert!(done, "the retried job completed");
    assert_pairs_stored(&emu, 1).await;
    broker::assert_no_dead_letters(&q.channel, &q.topology).await;
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_locked_parent_sends_the_job_to_a_hold_queue_until_it_is_unlocked() {
    let emu = emulator_with(4).await;
    let mut q = queues("locked", &HOLD_DELAYS_MS).await;
    let worker = ready_worker(&emu, &q, 3).await;
    emu.lock_record("accounts", &rid("r", 0)).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("lock", 1)).await;
    assert!(counter_reaches(&worker, RETRIED, 1.0, Duration::from_secs(20)).await);
    emu.unlock_record("accounts", &rid("r", 0)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    assert_pairs_stored(&emu, 1).await;
    let stats = emu.stats().await;
    let patches = &stats["requests"]["PATCH /api/v2/datastores/{ds}/records/{id}"];
    assert!(patches["409"].as_u64() >= Some(1), "{stats}");
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_record_changed_behind_the_cached_graph_is_re_read_revalidated_and_applied() {
    let emu = emulator_with(4).await;
    let mut q = queues("stale", &[60_000]).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, q.topology.prefix()));
    // Warm the worker's graph with job 0, then change parent r2 behind its back.
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("warm", 1)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    let rename = emulator::client()
        .patch(emu.record_url("accounts", &rid("r", 2)))
        .bearer_auth(emu.token().await)
        .json(&json!({"fields": {"name": "renamed elsewhere"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(rename.status(), 200);

    let j = job(
        "stale-1",
        "accounts",
        true,
        vec![op(&rid("r", 2), FIELD, &[&rid("r", 3)])],
    );
    publish_jobs(&q.publisher, &q.topology, &[j]).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 2)
            .await
    );
    let (_, record) = emu.get_record("accounts", &rid("r", 2)).await;
    assert_eq!(
        record["fields"]["name"], "renamed elsewhere",
        "the other write survives"
    );
    assert_eq!(workers::stored_ids(&record, FIELD), vec![rid("r", 3)]);
    let stats = emu.stats().await;
    let patches = &stats["requests"]["PATCH /api/v2/datastores/{ds}/records/{id}"];
    assert_eq!(
        patches["412"], 1,
        "one stale If-Match, then re-read: {stats}"
    );
    assert_eq!(
        counter(&worker, RETRIED).await,
        0.0,
        "settled within the same delivery"
    );
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn webhooks_that_keep_failing_are_parked_and_never_change_the_job_outcome() {
    let emu = emulator_with(2).await;
    let mut q = queues("hookdead", &[200]).await;
    let hook = emu
        .configure_webhook_receiver("down", json!({"secret": SECRET, "status": 503}))
        .await;
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook_retries(2, Duration::from_millis(50)..=Duration::from_millis(100))
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let worker = WorkerProcess::spawn(&config);
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("hooked", 1)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    assert_pairs_stored(&emu, 1).await;
    // Two events (applied, job.completed), each tried twice, then parked.
    let parked = broker::take(
        &q.channel,
        &q.topology.webhooks_dead(),
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(parked.len(), 2);
    let deliveries = emu.webhook_deliveries("down").await;
    assert_eq!(deliveries.len(), 4, "2 events × 2 attempts");
    let dead = "cxrel_webhook_deliveries_total{outcome=\"dead\"}";
    assert!(counter_reaches(&worker, dead, 2.0, Duration::from_secs(5)).await);
    broker::teardown(&q.channel, &q.topology).await;
}

/// A 410 Gone says the endpoint will never take events: parked after one attempt, not retried.
#[tokio::test]
async fn a_webhook_endpoint_that_answers_gone_is_not_retried() {
    let emu = emulator_with(2).await;
    let q = queues("hookgone", &[200]).await;
    let hook = emu
        .configure_webhook_receiver("gone", json!({"secret": SECRET, "status": 410}))
        .await;
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook_retries(3, Duration::from_millis(50)..=Duration::from_millis(100))
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let _worker = WorkerProcess::spawn(&config);
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("gone", 1)).await;
    let parked = broker::take(
        &q.channel,
        &q.topology.webhooks_dead(),
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(parked.len(), 2);
    let deliveries = emu.webhook_deliveries("gone").await;
    assert_eq!(deliveries.len(), 2, "2 events × 1 attempt");
    let agent = deliveries[0]["headers"]["user-agent"]
        .as_str()
        .unwrap_or("");
    assert!(
        agent.starts_with("cxrel/"),
        "a User-Agent names the sender: {agent:?}"
    );
    broker::teardown(&q.channel, &q.topology).await;
}

/// Two endpoints, one answering each delivery only after 1.5 s, one delivery in flight per
/// endpoint: the quick endpoint has every event while the slow one is still on its first.
#[tokio::test]
async fn a_slow_webhook_endpoint_does_not_delay_the_others() {
    const JOBS: usize = 3;
    let emu = emulator_with(2 * JOBS).await;
    let mut q = queues("hookslow", &[200]).await;
    let slow = emu
        .configure_webhook_receiver("slow", json!({"secret": SECRET, "delay_ms": 1500}))
        .await;
    let quick = emu.webhook_receiver("quick", SECRET).await;
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook_concurrency(1)
        .webhook(WebhookTarget::all_events(&slow, SECRET))
        .webhook(WebhookTarget::all_events(&quick, SECRET));
    let _worker = WorkerProcess::spawn(&config);
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("slowhook", JOBS)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == JOBS)
            .await
    );
    // Each job: one relationship.applied and one job.completed.
    let events = 2 * JOBS;
    let mut quick_count = 0;
    for _ in 0..300 {
        quick_count = emu.webhook_deliveries("quick").await.len();
        if quick_count == events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(quick_count, events, "the quick endpoint got every event");
    let slow_count = emu.webhook_deliveries("slow").await.len();
    assert!(
        slow_count < events,
        "the quick endpoint did not wait for the slow one ({slow_count} of {events} there)"
    );
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_of_a_job_continues_into_its_events_and_webhooks() {
    let emu = emulator_with(2).await;
    let mut q = queues("trace", &[200]).await;
    let hook = emu.webhook_receiver("traced", SECRET).await;
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let _worker = InProcessWorker::start(&config).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut table = FieldTable::default();
    headers::set_str(
        &mut table,
        headers::TRACEPARENT,
        format!("00-{trace_id}-00f067aa0ba902b7-01"),
    );
    let body = pair_jobs("traced", 1)[0].to_string();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id("traced-0".into())
        .with_headers(table);
    q.publisher
        .to_queue(&q.topology.jobs(), body.as_bytes(), props)
        .await
        .unwrap();
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    for event in &q.tap.events {
        let tp = event["traceparent"].as_str().unwrap_or_default();
        assert!(tp.starts_with(&format!("00-{trace_id}-")), "{event}");
        assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
    }
    let deliveries = emu.webhook_deliveries_at_least("traced", 2).await;
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        let tp = d["headers"]["traceparent"].as_str().unwrap_or_default();
        assert!(tp.starts_with(&format!("00-{trace_id}-")), "{d}");
    }
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_job_takes_only_its_share_of_the_webhook_queue_and_parks_the_rest() {
    let emu = emulator_with(22).await;
    let mut q = queues("hookshare", &[200]).await;
    let hook = emu.webhook_receiver("share", SECRET).await;
    // Capacity 8: one job may queue 2 of its events and its last (job.completed, how it ended);
    // the other 8 of 11 are parked at once.
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook_queue_capacity(8)
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let _worker = InProcessWorker::start(&config).await;
    let ops = (0..10)
        .map(|i| op(&rid("r", 2 * i), FIELD, &[&rid("r", 2 * i + 1)]))
        .collect();
    publish_jobs(
        &q.publisher,
        &q.topology,
        &[job("big", "accounts", true, ops)],
    )
    .await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    let parked = broker::take(
        &q.channel,
        &q.topology.webhooks_dead(),
        20,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(parked.len(), 8, "10 applied + 1 completed, 3 queued");
    let t = headers::table(&parked[0].delivery.properties);
    let why = headers::get_str(&t, headers::ERROR_MESSAGE).unwrap_or_default();
    assert!(why.contains("share"), "{why}");
    let deliveries = emu.webhook_deliveries_at_least("share", 3).await;
    assert_eq!(
        deliveries.len(),
        3,
        "the job's share and its end were delivered"
    );
    let types: Vec<String> = deliveries.iter().map(delivered_type).collect();
    assert!(
        types.iter().any(|t| t == "cxrel.job.completed"),
        "{types:?}"
    );
    broker::teardown(&q.channel, &q.topology).await;
}

fn delivered_type(delivery: &Value) -> String {
    let body = delivery["body"].as_str().unwrap_or_default();
    let event: Value = serde_json::from_str(body).unwrap_or_default();
    event["type"].as_str().unwrap_or_default().to_owned()
}

/// The job's share counts only events some endpoint wants: an endpoint that filters for
/// `job.completed` gets it however many operations the job had, alone or beside an endpoint that
/// wants everything, even in a queue of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_filtering_for_completed_jobs_gets_them_from_large_jobs() {
    for (capacity, with_unfiltered) in [(8, false), (1, true)] {
        let emu = emulator_with(22).await;
        let mut q = queues("hookfilter", &[200]).await;
        let hook = emu.webhook_receiver("ends", SECRET).await;
        let all = emu.webhook_receiver("all", SECRET).await;
        let only_ends = WebhookTarget {
            events: vec!["cxrel.job.completed".to_owned()],
            ..WebhookTarget::all_events(&hook, SECRET)
        };
        let mut config = test_config(&emu.base, q.topology.prefix())
            .webhook_queue_capacity(capacity)
            .webhook(only_ends);
        if with_unfiltered {
            config = config.webhook(WebhookTarget::all_events(&all, SECRET));
        }
        let _worker = InProcessWorker::start(&config).await;
        let ops = (0..10)
            .map(|i| op(&rid("r", 2 * i), FIELD, &[&rid("r", 2 * i + 1)]))
            .collect();
        publish_jobs(
            &q.publisher,
            &q.topology,
            &[job("big", "accounts", true, ops)],
        )
        .await;
        assert!(
            q.tap
                .until(Duration::from_secs(30), |e| completed(e).len() == 1)
                .await
        );
        let deliveries = emu.webhook_deliveries_at_least("ends", 1).await;
        let types: Vec<String> = deliveries.iter().map(delivered_type).collect();
        assert_eq!(types, ["cxrel.job.completed"], "capacity {capacity}");
        let parked = broker::take(
            &q.channel,
            &q.topology.webhooks_dead(),
            20,
            Duration::from_secs(2),
        )
        .await;
        // Alone: nothing anyone wanted was refused. Beside the unfiltered endpoint in a queue of
        // one: its 10 applied events are parked, the job's end goes to both.
        let expected = if with_unfiltered { 10 } else { 0 };
        assert_eq!(parked.len(), expected, "capacity {capacity}");
        broker::teardown(&q.channel, &q.topology).await;
    }
}

/// A subscriber answering 429 with Retry-After is left alone that long before the next attempt
/// (the configured backoff alone would retry within 100 ms).
#[tokio::test]
async fn a_webhook_endpoint_s_retry_after_is_honoured() {
    let emu = emulator_with(2).await;
    let mut q = queues("hookwait", &[200]).await;
    let hook = emu
        .configure_webhook_receiver(
            "busy",
            json!({"secret": SECRET, "status": 429, "retry_after": 2}),
        )
        .await;
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook_retries(2, Duration::from_millis(50)..=Duration::from_millis(100))
        .webhook(WebhookTarget {
            events: vec!["cxrel.job.completed".to_owned()],
            ..WebhookTarget::all_events(&hook, SECRET)
        });
    let _worker = InProcessWorker::start(&config).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("busy", 1)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    let deliveries = emu.webhook_deliveries_at_least("busy", 2).await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    let at = |d: &Value| {
        humantime::parse_rfc3339(d["received_at"].as_str().unwrap_or_default()).unwrap()
    };
    let gap = at(&deliveries[1])
        .duration_since(at(&deliveries[0]))
        .unwrap();
    // Retry-After is whole seconds; the timestamps are the receiver's, so allow their rounding.
    assert!(
        gap >= Duration::from_millis(1900),
        "second attempt after {gap:?}"
    );
    broker::teardown(&q.channel, &q.topology).await;
}

/// SIGTERM while an endpoint keeps failing: the deliveries waiting to retry are parked on the
/// webhook dead queue (naming their endpoint), not dropped with the process.
#[tokio::test]
async fn webhooks_still_failing_at_sigterm_are_parked_not_lost() {
    let emu = emulator_with(2).await;
    let mut q = queues("hookterm", &[200]).await;
    let hook = emu
        .configure_webhook_receiver("failing", json!({"secret": SECRET, "status": 500}))
        .await;
    let config = test_config(&emu.base, q.topology.prefix())
        .webhook_retries(5, Duration::from_secs(20)..=Duration::from_secs(30))
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let mut worker = WorkerProcess::spawn(&config);
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("termhook", 1)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    emu.webhook_deliveries_at_least("failing", 2).await;
    // Both events failed once and wait 20 s or more for their next attempt.
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(30)), Some(0));
    let parked = broker::take(
        &q.channel,
        &q.topology.webhooks_dead(),
        4,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(parked.len(), 2, "applied + completed, both parked");
    for message in &parked {
        let t = headers::table(&message.delivery.properties);
        let why = headers::get_str(&t, headers::ERROR_MESSAGE).unwrap_or_default();
        assert!(why.contains("shutdown"), "{why}");
        assert_eq!(headers::get_u64(&t, "x-cxrel-webhook-number"), Some(1));
        assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), Some(1));
    }
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_patch_whose_answer_is_lost_is_read_back_and_counted_applied_at_once() {
    let emu = emulator_with(2).await;
    let mut q = queues("readback", &[200]).await;
    // The default client retries: a PATCH of unknown outcome is read back, not sent again.
    let worker = WorkerProcess::spawn(&test_config(&emu.base, q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    emu.set_faults(json!({"lose_patch_answers": true})).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("lost", 1)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    let applied: Vec<_> = q.tap.of_type("cxrel.relationship.applied").collect();
    assert_eq!(applied.len(), 1, "reported applied");
    assert_pairs_stored(&emu, 1).await;
    let stats = emu.stats().await;
    assert_eq!(stats["patch_count"], 1, "written once: {stats}");
    assert_eq!(counter(&worker, RETRIED).await, 0.0, "no hold-queue round");
    assert!(counter(&worker, "cxrel_patch_read_backs_total").await >= 1.0);
    broker::assert_no_dead_letters(&q.channel, &q.topology).await;
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_patch_answered_200_that_stored_nothing_is_never_reported_applied() {
    let emu = emulator_with(2).await;
    let mut q = queues("dropped", &[200]).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    emu.set_faults(json!({"drop_patches": true})).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("dropped", 1)).await;
    let dead = |e: &[Value]| e.iter().any(|e| e["type"] == "cxrel.job.dead_lettered");
    let ended = q.tap.until(Duration::from_secs(60), dead).await;
    assert!(ended, "{:#?}", q.tap.events);
    assert_eq!(
        q.tap.count("cxrel.relationship.applied"),
        0,
        "never applied"
    );
    let failed: Vec<_> = q.tap.of_type("cxrel.relationship.failed").collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|e| e["data"]["code"] == "not_stored"),
        "{failed:?}"
    );
    let (_, parent) = emu.get_record("accounts", &rid("r", 0)).await;
    assert!(workers::stored_ids(&parent, FIELD).is_empty(), "{parent}");
    let letters = broker::take(&q.channel, &q.topology.dead(), 1, Duration::from_secs(5)).await;
    let table = headers::table(&letters[0].delivery.properties);
    assert_eq!(
        headers::get_str(&table, headers::ERROR_CODE).as_deref(),
        Some("not_stored")
    );
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_write_undone_after_a_412_and_then_rejected_is_reported_rolled_back() {
    let emu = EmulatorProcess::spawn();
    let fields = json!([{"name": "name", "type": "string"},
                        {"name": "kids", "type": "relationship",
                         "constraints": {"max_children": 2, "acyclic": true}}]);
    let records: Vec<Value> = (0..6)
        .map(|n| emulator::named_record(&rid("k", n), "x"))
        .collect();
    emu.create_datastore("limited", fields, Value::Array(records))
        .await;
    let mut q = queues("undone", &[200]).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    // The graph is loaded by a first job (k0 -> k1) ...
    let warm = job(
        "undone-warm",
        "limited",
        true,
        vec![op(&rid("k", 0), "kids", &[&rid("k", 1)])],
    );
    publish_jobs(&q.publisher, &q.topology, &[warm]).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    // ... then another client fills k2's two places behind the worker.
    let token = emu.token().await;
    let filled = emulator::client()
        .patch(emu.record_url("limited", &rid("k", 2)))
        .bearer_auth(&token)
        .header("If-Match", "\"1\"")
        .json(&json!({"fields": {"kids": {"ids": [rid("k", 3), rid("k", 4)]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(filled.status(), 200);
    // k1 -> k5 is written; adding a third child to k2 answers 412, so k1 is restored, k2 read
    // again, and the job rejected: k1's write happened and was undone.
    let add = json!({"parent_id": rid("k", 2), "relationship_field": "kids",
                     "child_ids": [rid("k", 5)], "mode": "add"});
    let j = job(
        "undone",
        "limited",
        true,
        vec![op(&rid("k", 1), "kids", &[&rid("k", 5)]), add],
    );
    publish_jobs(&q.publisher, &q.topology, &[j]).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 2)
            .await
    );
    let last = q
        .tap
        .of_type("cxrel.job.completed")
        .find(|e| e["data"]["job_id"] == "undone")
        .unwrap()
        .clone();
    let ops = &last["data"]["operations"];
    assert_eq!(ops[1]["code"], "max_children_exceeded", "{last}");
    assert_eq!(ops[0]["status"], "rolled_back", "{last}");
    assert_eq!(q.tap.count("cxrel.relationship.rolled_back"), 1);
    let (_, k1) = emu.get_record("limited", &rid("k", 1)).await;
    assert!(workers::stored_ids(&k1, "kids").is_empty(), "{k1}");
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_store_spelling_its_uuids_in_upper_case_is_written_as_it_spells_them() {
    let emu = EmulatorProcess::spawn();
    // The emulator, like many stores, matches ids exactly: "…ABC" is not "…abc".
    let upper: Vec<String> = (0..2).map(|n| rid("u", n).to_ascii_uppercase()).collect();
    let records: Vec<Value> = upper
        .iter()
        .map(|id| emulator::named_record(id, "x"))
        .collect();
    emu.create_datastore("upper", emulator::test_schema(), Value::Array(records))
        .await;
    let mut q = queues("upper", &[200]).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    link_in_lower_case(&emu, &mut q, "u", 1).await;

    // Records created behind the running worker, spelled in upper case: the job still names them
    // in lower case, and the worker must find them before calling them missing (SPEC §10).
    let late = (0..2).map(|n| emulator::named_record(&rid("late", n).to_ascii_uppercase(), "late"));
    emu.add_records("upper", Value::Array(late.collect())).await;
    link_in_lower_case(&emu, &mut q, "late", 2).await;
    broker::assert_no_dead_letters(&q.channel, &q.topology).await;
    broker::teardown(&q.channel, &q.topology).await;
}

/// Links records `{tag}` 0 → 1 of data store "upper" with a job naming them in lower case (UUIDs
/// are case-insensitive), then checks the store holds the child as it spells it, in upper case.
async fn link_in_lower_case(
    emu: &EmulatorProcess,
    q: &mut workers::Queues,
    tag: &str,
    nth_job: usize,
) {
    let (p, c) = (rid(tag, 0), rid(tag, 1));
    let j = job(tag, "upper", true, vec![op(&p, FIELD, &[&c])]);
    publish_jobs(&q.publisher, &q.topology, &[j]).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == nth_job)
            .await
    );
    assert_eq!(
        q.tap.count("cxrel.relationship.applied"),
        nth_job,
        "{:#?}",
        q.tap.events
    );
    let (status, parent) = emu.get_record("upper", &p.to_ascii_uppercase()).await;
    assert_eq!(status, 200);
    assert_eq!(
        workers::stored_ids(&parent, FIELD),
        vec![c.to_ascii_uppercase()]
    );
}

#[tokio::test]
async fn an_atomic_job_whose_first_answer_is_lost_and_second_parent_locked_restores_the_first() {
    let emu = emulator_with(4).await;
    let mut q = queues("lostlocked", &[200, 400]).await;
    let config = test_config(&emu.base, q.topology.prefix()).retry_delays(&millis(&[200, 400]));
    let worker = WorkerProcess::spawn(&config);
    worker.wait_ready(Duration::from_secs(30)).await;
    // Every PATCH lands but its answer is lost; r2 answers 409 throughout.
    emu.set_faults(json!({"lose_patch_answers": true})).await;
    emu.lock_record("accounts", &rid("r", 2)).await;
    let (p, c) = (rid("r", 0), rid("r", 1));
    let j = job(
        "lostlocked",
        "accounts",
        true,
        vec![
            op(&p, FIELD, &[&c]),
            op(&rid("r", 2), FIELD, &[&rid("r", 3)]),
        ],
    );
    publish_jobs(&q.publisher, &q.topology, &[j]).await;
    let dead = |e: &[Value]| e.iter().any(|e| e["type"] == "cxrel.job.dead_lettered");
    assert!(q.tap.until(Duration::from_secs(60), dead).await);
    let (_, first) = emu.get_record("accounts", &p).await;
    assert!(
        workers::stored_ids(&first, FIELD).is_empty(),
        "nothing of the atomic job stays written: {first}"
    );
    let dead: Vec<_> = q.tap.of_type("cxrel.job.dead_lettered").collect();
    assert_eq!(dead[0]["data"]["code"], "record_locked", "{}", dead[0]);
    let last = q.tap.of_type("cxrel.job.completed").last().unwrap().clone();
    let ops = &last["data"]["operations"];
    assert_eq!(ops[0]["status"], "rolled_back", "{last}");
    assert_eq!(ops[1]["status"], "failed", "{last}");
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn a_value_the_stale_graph_shows_as_stored_is_checked_against_the_store_and_written() {
    let emu = emulator_with(4).await;
    let mut q = queues("stalesame", &[60_000]).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    let (p, c) = (rid("r", 0), rid("r", 1));
    let link = |id: &str| job(id, "accounts", true, vec![op(&p, FIELD, &[&c])]);
    publish_jobs(&q.publisher, &q.topology, &[link("warm")]).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    // Another writer relinks r0 behind the worker's graph, which still shows r0 → r1.
    let relink = emulator::client()
        .patch(emu.record_url("accounts", &p))
        .bearer_auth(emu.token().await)
        .json(&json!({"fields": {FIELD: {"ids": [rid("r", 3)], "cascade_action": "none"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(relink.status(), 200);
    publish_jobs(&q.publisher, &q.topology, &[link("again")]).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 2)
            .await
    );
    let (_, record) = emu.get_record("accounts", &p).await;
    assert_eq!(workers::stored_ids(&record, FIELD), vec![c], "{record}");
    let applied: Vec<_> = q.tap.of_type("cxrel.relationship.applied").collect();
    assert_eq!(
        applied.last().unwrap()["data"]["version"],
        record["_version"]
    );
    broker::teardown(&q.channel, &q.topology).await;
}

#[tokio::test]
async fn the_graph_of_a_data_store_deleted_behind_the_worker_is_dropped() {
    let emu = emulator_with(4).await;
    let mut q = queues("gone-ds", &[200]).await;
    let config = test_config(&emu.base, q.topology.prefix()).schema_ttl(Duration::from_millis(200));
    let worker = WorkerProcess::spawn(&config);
    worker.wait_ready(Duration::from_secs(30)).await;
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("before", 1)).await;
    assert!(
        q.tap
            .until(Duration::from_secs(30), |e| completed(e).len() == 1)
            .await
    );
    const GRAPH: &str = "cxrel_graph_records{datastore=\"accounts\"}";
    assert_eq!(counter(&worker, GRAPH).await, 4.0, "the graph is loaded");

    emu.delete_datastore("accounts").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past the schema's TTL
    publish_jobs(&q.publisher, &q.topology, &pair_jobs("after", 1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&worker, GRAPH).await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counter(&worker, GRAPH).await, 0.0, "the graph is dropped");
    broker::teardown(&q.channel, &q.topology).await;
}
