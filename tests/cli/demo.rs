//! `cxrel demo` end to end, as a new user runs it: the real binary, the local RabbitMQ, its own
//! emulator and worker. It must settle every sample job as expected, verify webhook signatures,
//! exit 0 and leave no queues behind.

use std::process::Command;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::helpers::broker;

#[tokio::test]
async fn the_demo_settles_every_sample_job_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .arg("demo")
        .env_remove("CXREL_ENV")
        .env("CXREL__LOG__LEVEL", "warn")
        .output()
        .expect("run cxrel demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    assert!(!stdout.contains("unexpected"), "{stdout}");
    for code in [
        "cycle_detected",
        "max_depth_exceeded",
        "record_not_found",
        "unknown_field",
        "parent_conflict",
        "invalid_job",
    ] {
        assert!(
            stdout.contains(&format!("dead-lettered {code}")),
            "{code} missing:\n{stdout}"
        );
    }
    let hooks = stdout
        .lines()
        .find_map(|l| l.strip_prefix("webhooks: "))
        .expect("webhook line");
    let (delivered, rest) = hooks.split_once(" delivered, ").expect("delivered count");
    let verified = rest.split_whitespace().next().unwrap();
    assert!(delivered.parse::<u32>().unwrap() > 0, "{hooks}");
    assert_eq!(
        delivered, verified,
        "every webhook signature verifies: {hooks}"
    );
    assert!(stdout.contains("dead-letter queue: 7 messages"), "{stdout}");

    let prefix = stdout
        .split("queues ")
        .nth(1)
        .and_then(|s| s.split(".*").next())
        .expect("prefix in the first line");
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let gone = channel
        .queue_declare(
            format!("{prefix}.jobs").as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "the demo deletes its queues");
}
