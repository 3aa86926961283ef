//! The console page in a real headless Chromium, against a dead queue filled by `cxrel demo
//! --keep`: the counts shown match the queue, logging in unlocks the actions, replaying one code
//! (reason, dry-run count, confirm) makes its count drop on the open page. Leaves a screenshot of
//! the overview in `$CARGO_TARGET_TMPDIR/console.png` (the README's image is one of these).

use std::process::Command;
use std::time::Duration;

use cxrel::amqp::headers;

use crate::chromium::Browser;
use crate::helpers::broker;
use crate::support::ConsoleProcess;

const TOKEN: &str = "browser-test-token-51c0";

/// Runs the demo with `--keep`; returns the prefix of the queues it left.
fn demo_prefix() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args(["demo", "--keep"])
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env_remove("CXREL_ENV")
        .env("CXREL__LOG__LEVEL", "warn")
        .output()
        .expect("run cxrel demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    stdout
        .split("CXREL__AMQP__PREFIX=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the demo names its kept prefix: {stdout}"))
        .to_owned()
}

/// Deletes the demo's queues when the test ends, passed or not.
struct Cleanup(cxrel::amqp::Topology);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let topo = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let connection = broker::connect().await;
                let channel = connection.create_channel().await.unwrap();
                broker::teardown(&channel, &topo).await;
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_replays_one_code_and_sees_its_count_drop() {
    let prefix = demo_prefix();
    let topo = broker::topology(&prefix, &[500]);
    let _cleanup = Cleanup(topo.clone());
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let dead_before = cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap();
    assert_eq!(dead_before, 7, "the demo dead-letters seven jobs");
    let console = ConsoleProcess::spawn(&prefix, TOKEN, &[]);

    let base = console.base.clone();
    let shot = tokio::task::spawn_blocking(move || drive(&base))
        .await
        .expect("the browser session");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::write(&path, shot).unwrap();

    // The two cycle_detected jobs went back to the jobs queue, stamped with the page's reason.
    let jobs = broker::take(&channel, &topo.jobs(), 3, Duration::from_secs(5)).await;
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        let t = headers::table(&job.delivery.properties);
        assert_eq!(
            headers::get_str(&t, "x-cxrel-replay-reason").as_deref(),
            Some("cycle fixed upstream")
        );
    }
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 5);
    let log = console.log_text();
    assert!(log.contains("\"action\":\"replay\""), "{log}");
    assert!(!log.contains(TOKEN), "the token never reaches the log");
}

/// The browser part; returns the overview screenshot.
fn drive(base: &str) -> Vec<u8> {
    let mut b = Browser::launch();
    let cycle = "[data-count-code=\"cycle_detected\"]";

    // Read-only until logged in: counts shown, no action buttons.
    b.open(&format!("{base}/"));
    assert_eq!(b.text("#depth"), "7");
    assert_eq!(b.text(cycle), "2");
    assert_eq!(b.text("[data-count-stage=\"validate\"]"), "6");
    assert_eq!(b.eval("!!document.getElementById('replay-all')"), false);

    b.open(&format!("{base}/login"));
    b.eval(&format!(
        "document.getElementById('token').value = {}; document.querySelector('form').submit(); 1",
        serde_json::json!(TOKEN)
    ));
    b.wait_for("location.pathname === '/' && document.readyState === 'complete'");
    assert!(
        b.text("#mode").starts_with("operator session:"),
        "{}",
        b.text("#mode")
    );
    let shot = b.screenshot();

    // One message: headers, body, error and (empty) replay history.
    b.open(&format!("{base}/letters/demo-05-cycle"));
    let page = b.eval("document.body.innerText");
    let page = page.as_str().unwrap_or("");
    for expected in [
        "x-cxrel-job-id",
        "would create a cycle",
        "never replayed",
        "\"operations\"",
    ] {
        assert!(page.contains(expected), "{expected} missing:\n{page}");
    }

    // Replay one code from its filtered view: the dry run's count is confirmed first.
    b.open(&format!("{base}/?code=cycle_detected"));
    assert_eq!(b.text("#matching"), "2");
    b.eval("document.getElementById('reason').value = 'cycle fixed upstream'; 1");
    b.eval("document.getElementById('replay-all').click(); 1");
    b.wait_for("!document.getElementById('confirm').hidden");
    let question = b.text("#confirm-text");
    assert!(
        question.starts_with("Replay 2 dead letter(s) matching code=cycle_detected"),
        "{question}"
    );
    b.eval("document.getElementById('confirm-yes').click(); 1");
    b.wait_for("document.getElementById('result').textContent.includes('replayed 2')");

    // The open page's counts drop without a reload.
    b.wait_for(&format!(
        "document.querySelector('{cycle}').textContent === '0'"
    ));
    assert_eq!(b.text("#depth"), "5");
    shot
}
