//! Log output as operators configure it: `[log].format` json / human / auto, `[log].level`, and no
//! password in what a failing command prints.

use std::process::{Command, Output};

use serde_json::Value;

use crate::helpers::broker;

/// `cxrel topology declare` against a closed port: fails at once with an error log line.
fn failing_command(envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxrel"));
    command
        .args(["topology", "declare"])
        .env_remove("CXREL_ENV")
        .env_remove("RUST_LOG")
        .env("CXREL__AMQP__URL", "amqp://guest:secretpw@127.0.0.1:1/%2f");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("run cxrel")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn json_format_writes_one_json_object_per_log_line() {
    let out = failing_command(&[("CXREL__LOG__FORMAT", "json")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let event: Value = serde_json::from_str(line).expect("valid JSON");
    assert_eq!(event["level"], "ERROR", "{event}");
    assert!(event["timestamp"].is_string());
}

#[test]
fn auto_format_is_json_when_stderr_is_not_a_terminal() {
    let text = stderr(&failing_command(&[("CXREL__LOG__FORMAT", "auto")]));
    assert!(
        text.lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{text}"
    );
}

#[test]
fn human_format_is_not_json() {
    let text = stderr(&failing_command(&[("CXREL__LOG__FORMAT", "human")]));
    assert!(text.contains("ERROR"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{text}"
    );
}

#[test]
fn level_off_silences_the_log_but_not_the_error_message() {
    let text = stderr(&failing_command(&[("CXREL__LOG__LEVEL", "off")]));
    assert!(!text.contains("ERROR"), "{text}");
    assert!(text.starts_with("cxrel: "), "{text}");
}

#[test]
fn a_refused_broker_connect_names_the_address_without_the_password() {
    let out = failing_command(&[("CXREL__LOG__LEVEL", "off")]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot connect to the broker at amqp://guest:***@127.0.0.1:1/"),
        "{text}"
    );
    assert!(text.contains("[amqp].url"), "{text}");
}

#[test]
fn the_broker_password_never_appears() {
    for format in ["json", "human"] {
        let text = stderr(&failing_command(&[
            ("CXREL__LOG__FORMAT", format),
            ("CXREL__LOG__LEVEL", "trace"),
        ]));
        assert!(!text.contains("secretpw"), "{format}: {text}");
    }
}

#[tokio::test]
async fn the_broker_password_is_not_in_the_trace_of_a_real_login() {
    // A real handshake: lapin's TRACE dumps the connection.start-ok frame, whose SASL response
    // ("\0user\0password") it prints as a list of bytes, not as text.
    let prefix = format!("cli-trace-{}", uuid::Uuid::new_v4().simple());
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxrel"));
    command
        .args(["topology", "declare"])
        .env_remove("CXREL_ENV")
        .env("RUST_LOG", "trace")
        .env("CXREL__AMQP__PREFIX", &prefix);
    let out = command.output().expect("run cxrel");
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("lapin"), "lapin's own log is there: {text}");
    // The default URL's user and password are both "guest".
    let guest = "103, 117, 101, 115, 116";
    let sasl = format!("0, {guest}, 0, {guest}");
    assert!(!text.contains(&sasl), "the SASL response was logged");
    assert!(
        !text.contains("start-ok") && !text.contains("StartOk"),
        "{text}"
    );
    // The default hold delays: 1s, 5s, 30s, 2m, 10m.
    let declared = broker::topology(&prefix, &[1_000, 5_000, 30_000, 120_000, 600_000]);
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    broker::teardown(&channel, &declared).await;
}

#[test]
fn a_broker_address_that_accepts_but_never_answers_fails_within_the_connect_timeout() {
    // Something listens there but never speaks AMQP (a black hole, a wrong service): the
    // handshake would wait forever; the CLI gives up after the 30 s connect timeout instead.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(40));
        drop(stream);
    });
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let started = std::time::Instant::now();
    let out = failing_command(&[("CXREL__AMQP__URL", url.as_str())]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no connection to the broker within 30s"),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(39),
        "{text}"
    );
    drop(held);
}
