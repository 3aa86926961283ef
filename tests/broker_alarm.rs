//! A broker that blocks publishers (a memory alarm): the worker's confirms time out instead of
//! hanging, `/readyz` reports `broker_publishing` not ready while it lasts, and the job completes
//! once the alarm clears. Alone in its own test binary: the alarm blocks every publisher of the
//! broker, and cargo runs test binaries one after another.

mod helpers;

use std::process::Command;
use std::time::{Duration, Instant};

use cxrel::amqp::Publisher;
use helpers::broker;
use helpers::workers::pairs::{completed, emulator_with, pair_jobs};
use helpers::workers::{EventTap, WorkerProcess, millis, publish_jobs, test_config};
use serde_json::{Value, json};

/// Raises the broker's memory alarm; lowers it again when dropped, whatever the test did.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> Self {
        set_watermark("0.000001");
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        set_watermark("0.4");
    }
}

fn set_watermark(value: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["set_vm_memory_high_watermark", value])
        .status()
        .expect("rabbitmqctl set_vm_memory_high_watermark");
    assert!(status.success(), "set watermark {value}");
}

async fn readyz(worker: &WorkerProcess) -> (u16, Value) {
    let response = reqwest::get(format!("{}/readyz", worker.http))
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn confirms_time_out_under_a_memory_alarm_and_the_job_completes_after_it() {
    let emu = emulator_with(2).await;
    let prefix = broker::unique_prefix("alarm");
    let topology = broker::topology(&prefix, &[200]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut tap = EventTap::bind(&channel, &topology).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let config = test_config(&emu.base, &prefix)
        .retry_delays(&millis(&[200]))
        .confirm_timeout(Duration::from_secs(1));
    let worker = WorkerProcess::spawn(&config);
    worker.wait_ready(Duration::from_secs(30)).await;
    // The store answers after 2 s, so the job is in the worker's hands when the alarm starts.
    emu.set_faults(json!({"latency_ms": 2000})).await;
    publish_jobs(&publisher, &topology, &pair_jobs("alarm", 1)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let alarm = MemoryAlarm::raise();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_blocked = false;
    while Instant::now() < deadline && !seen_blocked {
        let (status, body) = readyz(&worker).await;
        seen_blocked = status == 503 && body["checks"]["broker_publishing"]["ready"] == false;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_blocked, "/readyz reported the blocked publisher");
    assert!(
        completed(&tap.events).is_empty(),
        "nothing settles while the broker blocks publishing"
    );
    drop(alarm);
    emu.set_faults(json!({"latency_ms": 0})).await;

    let done = tap
        .until(Duration::from_secs(60), |e| completed(e).len() == 1)
        .await;
    assert!(done, "the job completes once the alarm clears");
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&worker).await.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readyz(&worker).await.0, 200, "ready again");
    drop(worker);
    broker::teardown(&channel, &topology).await;
}
