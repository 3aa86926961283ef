//! The worker under faults: data-store errors and throttling, a broker connection closed under it,
//! and SIGTERM in the middle of a drain. Nothing may be lost.

use std::time::Duration;

use cxrel::amqp::{Publisher, headers};
use serde_json::json;

use crate::helpers::workers::pairs::{assert_pairs_stored, completed, emulator_with, pair_jobs};
use crate::helpers::workers::{
    EventTap, QUICK_BACKOFF, WorkerProcess, millis, publish_jobs, test_config,
};
use crate::helpers::{broker, workers};

#[tokio::test]
async fn injected_5xx_and_429_are_retried_until_every_job_completes() {
    let emu = emulator_with(80).await;
    let prefix = broker::unique_prefix("faults");
    let topology = broker::topology(&prefix, &[500, 1000, 2000, 4000]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    // The client's limit is set above the store's real one, as an operator might.
    let config = test_config(&emu.base, &prefix)
        .retry_delays(&millis(&[500, 1000, 2000, 4000]))
        .rate(60, 5)
        .store_retry(4, QUICK_BACKOFF, Duration::from_secs(10));
    let worker = WorkerProcess::spawn(&config);
    emu.set_faults(json!({"error_ratio": 0.3, "rate_limit": {"requests_per_second": 40, "burst": 5}, "retry_after": false})).await;
    let jobs = pair_jobs("faulty", 40);
    publish_jobs(&publisher, &topology, &jobs).await;
    let done = tap
        .until(Duration::from_secs(90), |e| completed(e).len() == 40)
        .await;
    assert!(done, "{} of 40 completed", completed(&tap.events).len());
    emu.set_faults(json!({"error_ratio": 0.0, "rate_limit": null}))
        .await;
    assert_pairs_stored(&emu, 40).await;
    let stats = emu.stats().await;
    assert!(
        stats["injected_error_count"].as_u64().unwrap() > 0,
        "faults were injected: {stats}"
    );
    // ~60 requests at the client's 60 rps against the store's 40 rps: the store must have said 429.
    assert!(
        stats["throttled_count"].as_u64().unwrap() > 0,
        "the store throttled: {stats}"
    );
    broker::assert_no_dead_letters(&channel, &topology).await;
    drop(worker);
    broker::teardown(&channel, &topology).await;
}

#[tokio::test]
async fn with_every_request_failing_a_job_is_dead_lettered_after_the_configured_attempts() {
    let emu = emulator_with(4).await;
    let prefix = broker::unique_prefix("allfail");
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    emu.set_faults(json!({"error_ratio": 1.0})).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, &prefix));
    publish_jobs(&publisher, &topology, &pair_jobs("doomed", 1)).await;

    let dead = broker::take(&channel, &topology.dead(), 1, Duration::from_secs(60)).await;
    assert_eq!(dead.len(), 1, "the job was dead-lettered");
    let t = headers::table(&dead[0].delivery.properties);
    // Three hold-queue delays: the first attempt and three retries.
    assert_eq!(headers::get_u64(&t, headers::ATTEMPTS), Some(4));
    assert_eq!(
        headers::get_str(&t, headers::ERROR_CODE).as_deref(),
        Some("server_error")
    );
    assert!(headers::get_str(&t, headers::FIRST_FAILED_AT).is_some());
    assert!(
        tap.until(Duration::from_secs(10), |e| e
            .iter()
            .any(|e| e["type"] == "cxrel.job.dead_lettered"))
            .await
    );
    let event = tap.of_type("cxrel.job.dead_lettered").next().unwrap();
    assert_eq!(event["data"]["attempts"], 4);
    drop(worker);
    broker::teardown(&channel, &topology).await;
}

#[tokio::test]
async fn sigterm_during_a_drain_exits_zero_in_time_and_loses_no_job() {
    let emu = emulator_with(400).await;
    let prefix = broker::unique_prefix("sigterm");
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    emu.set_faults(json!({"latency_ms": 30})).await;
    let config = test_config(&emu.base, &prefix);
    let mut worker = WorkerProcess::spawn(&config);
    publish_jobs(&publisher, &topology, &pair_jobs("drain", 200)).await;
    assert!(
        tap.until(Duration::from_secs(30), |e| completed(e).len() >= 20)
            .await
    );

    worker.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = worker.wait_exit(Duration::from_secs(15));
        (code, worker)
    })
    .await
    .unwrap();
    assert_eq!(
        code.0,
        Some(0),
        "exit code 0 within shutdown_timeout (10s) + margin"
    );
    let before_restart = completed(&tap.events).len();
    assert!(
        before_restart < 200,
        "the drain stopped before the queue was empty"
    );

    let worker = WorkerProcess::spawn(&config);
    let done = tap
        .until(Duration::from_secs(90), |e| completed(e).len() == 200)
        .await;
    assert!(
        done,
        "{} of 200 completed after the restart",
        completed(&tap.events).len()
    );
    assert_pairs_stored(&emu, 200).await;
    broker::assert_no_dead_letters(&channel, &topology).await;
    drop(worker);
    broker::teardown(&channel, &topology).await;
}

#[tokio::test]
async fn a_broker_connection_closed_mid_drain_is_recovered_and_every_job_completes() {
    let emu = emulator_with(400).await;
    let prefix = broker::unique_prefix("reconnect");
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    emu.set_faults(json!({"latency_ms": 20})).await;
    let worker = WorkerProcess::spawn(&test_config(&emu.base, &prefix));
    publish_jobs(&publisher, &topology, &pair_jobs("recover", 200)).await;
    assert!(
        tap.until(Duration::from_secs(30), |e| completed(e).len() >= 20)
            .await
    );

    let closed = tokio::task::spawn_blocking({
        let name = format!("cxrel worker {prefix}");
        move || workers::close_broker_connections(&name)
    })
    .await
    .unwrap();
    assert_eq!(closed, 1, "the worker's connection was found and closed");
    let done = tap
        .until(Duration::from_secs(90), |e| completed(e).len() == 200)
        .await;
    assert!(
        done,
        "{} of 200 completed after the connection was closed",
        completed(&tap.events).len()
    );
    assert_pairs_stored(&emu, 200).await;
    drop(worker);
    broker::teardown(&channel, &topology).await;
}

#[tokio::test]
async fn a_job_whose_worker_dies_before_settling_ends_coded_in_the_dead_queue() {
    let emu = emulator_with(4).await;
    let prefix = broker::unique_prefix("poison");
    let topology = broker::topology(&prefix, &[200]).with_delivery_limit(2);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let config = test_config(&emu.base, &prefix)
        .retry_delays(&millis(&[200]))
        .delivery_limit(2);
    // Every store answer takes 5 s, so each worker is killed with the job in its hands.
    emu.set_faults(json!({"latency_ms": 5000})).await;
    publish_jobs(&publisher, &topology, &pair_jobs("poison", 1)).await;
    for round in 0..2 {
        let worker = WorkerProcess::spawn(&config);
        let mut holding = false;
        for _ in 0..100 {
            if worker.metrics().await.contains("cxrel_jobs_in_flight 1") {
                holding = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(holding, "round {round}: the worker took the job");
        worker.signal("KILL");
    }
    emu.set_faults(json!({"latency_ms": 0})).await;
    let worker = WorkerProcess::spawn(&config);
    let dead = broker::take(&channel, &topology.dead(), 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1, "the job was dead-lettered, not lost");
    let t = headers::table(&dead[0].delivery.properties);
    assert_eq!(
        headers::get_str(&t, headers::ERROR_CODE).as_deref(),
        Some("delivery_limit_exceeded")
    );
    assert_eq!(
        headers::get_str(&t, headers::STAGE).as_deref(),
        Some("settle")
    );
    assert_eq!(
        headers::get_str(&t, headers::JOB_ID).as_deref(),
        Some("poison-0")
    );
    assert!(
        tap.until(Duration::from_secs(10), |e| e
            .iter()
            .any(|e| e["type"] == "cxrel.job.dead_lettered"))
            .await
    );
    drop(worker);
    broker::teardown(&channel, &topology).await;
}

#[tokio::test]
async fn a_broker_that_keeps_refusing_the_events_ends_the_job_coded_and_announced_in_the_dead_queue_once()
 {
    let emu = emulator_with(2).await;
    let prefix = broker::unique_prefix("refused");
    let topology = broker::topology(&prefix, &[200]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    cxrel::amqp::topology::declare(&channel, &topology)
        .await
        .unwrap();
    let mut tap = EventTap::bind_key(&channel, &topology, "job.dead_lettered").await;
    // A full queue that rejects publishes, bound to the relationship events: each of those
    // publishes is nacked.
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(0),
    );
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    let refusing = format!("{prefix}.refusing");
    channel
        .queue_declare(
            refusing.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            refusing.as_str().into(),
            topology.events().into(),
            "relationship.#".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = Publisher::open(&conn).await.unwrap();
    let worker = WorkerProcess::spawn(&test_config(&emu.base, &prefix));
    publish_jobs(&publisher, &topology, &pair_jobs("refused", 1)).await;

    let dead = broker::take(&channel, &topology.dead(), 2, Duration::from_secs(30)).await;
    assert_eq!(
        dead.len(),
        1,
        "dead-lettered once, not looping or duplicated"
    );
    let t = headers::table(&dead[0].delivery.properties);
    assert_eq!(
        headers::get_str(&t, headers::ERROR_CODE).as_deref(),
        Some("settle_failed")
    );
    assert_eq!(
        headers::get_str(&t, headers::STAGE).as_deref(),
        Some("settle")
    );
    // The operator learns what the job itself came to: here it was applied.
    let message = headers::get_str(&t, headers::ERROR_MESSAGE).unwrap_or_default();
    assert!(
        message.contains("the job itself completed"),
        "message: {message}"
    );
    // Every dead letter is announced, this one too (its event is not refused).
    assert!(
        tap.until(Duration::from_secs(10), |e| e
            .iter()
            .any(|e| e["type"] == "cxrel.job.dead_lettered"))
            .await,
        "no job.dead_lettered event"
    );
    let event = tap.of_type("cxrel.job.dead_lettered").next().unwrap();
    assert_eq!(event["data"]["code"], "settle_failed");
    let stats = emu.stats().await;
    assert_eq!(stats["patch_count"], 1, "handled once: {stats}");
    let jobs = broker::take(&channel, &topology.jobs(), 1, Duration::from_millis(500)).await;
    assert!(jobs.is_empty(), "nothing left to loop on");
    drop(worker);
    let _ = channel
        .queue_delete(refusing.as_str().into(), Default::default())
        .await;
    broker::teardown(&channel, &topology).await;
}

/// After SIGTERM the drain stays observable: `/metrics` and `/healthz` answer, `/readyz` says
/// draining, until the process exits.
#[tokio::test]
async fn during_a_drain_the_health_endpoints_answer_and_readiness_says_draining() {
    let emu = emulator_with(20).await;
    let prefix = broker::unique_prefix("drainhttp");
    let topology = broker::topology(&prefix, &[200]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let mut worker = WorkerProcess::spawn(&test_config(&emu.base, &prefix));
    worker.wait_ready(Duration::from_secs(30)).await;
    // Described, and at 0 from the start: an alert on their increase sees the first one.
    let fresh = worker.metrics().await;
    assert!(fresh.contains("# HELP cxrel_jobs_total "), "{fresh}");
    assert!(
        fresh.contains("cxrel_jobs_total{outcome=\"dead_lettered\"} 0"),
        "{fresh}"
    );
    emu.set_faults(json!({"latency_ms": 3000})).await;
    publish_jobs(&publisher, &topology, &pair_jobs("slowdrain", 5)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    worker.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", worker.http))
        .send()
        .await
        .expect("/readyz answers during the drain");
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("draining"), "{body}");
    let health = client.get(format!("{}/healthz", worker.http)).send().await;
    assert_eq!(health.expect("/healthz answers").status(), 200);
    let metrics = worker.metrics().await;
    assert!(metrics.contains("cxrel_jobs_in_flight"), "{metrics}");
    let code = tokio::task::spawn_blocking(move || worker.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        tap.until(Duration::from_secs(10), |e| completed(e).len() == 5)
            .await
    );
    broker::teardown(&channel, &topology).await;
}

/// A broker address that takes TCP connections and never answers: SIGTERM still ends the worker
/// at once instead of after the 30 s connect timeout.
#[tokio::test]
async fn sigterm_while_connecting_to_a_silent_broker_ends_the_worker_at_once() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        // Accept and hold, never speaking AMQP.
        let mut kept = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            kept.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .arg("worker")
        .env_remove("CXREL_ENV")
        .env(
            "CXREL__AMQP__URL",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        )
        .env("CXREL__HTTP__LISTEN", "127.0.0.1:0")
        .env("CXREL__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(crate::helpers::listening_url(&mut child, "worker").is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(25);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    // Well under the connect timeout (30 s) that used to hold it.
    assert_eq!(code, Some(0), "exit after {:?}", signalled.elapsed());
    drop(held);
}

#[tokio::test]
async fn a_normal_stop_of_the_active_worker_and_its_standby_logs_no_error() {
    // lapin's teardown used to race the close and log "Connection error" at ERROR, most stops.
    let emu = emulator_with(40).await;
    let prefix = broker::unique_prefix("quietstop");
    let topology = broker::topology(&prefix, &[200]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&emu.base, &prefix);
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut workers: Vec<WorkerProcess> = logs
        .iter()
        .map(|log| WorkerProcess::spawn_logged(&config, log))
        .collect();
    publish_jobs(&publisher, &topology, &pair_jobs("quiet", 40)).await;
    assert!(
        tap.until(Duration::from_secs(30), |e| completed(e).len() == 40)
            .await
    );

    for worker in &mut workers {
        worker.signal("TERM");
        assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(0));
    }
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        let errors: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(r#""level":"ERROR""#))
            .collect();
        if !errors.is_empty() {
            std::fs::copy(log, "/tmp/sb/failed.log").unwrap();
        }
        assert!(errors.is_empty(), "{}: {errors:#?}", log.display());
    }
    broker::teardown(&channel, &topology).await;
}
