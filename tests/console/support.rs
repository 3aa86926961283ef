//! Test support for the console suites: a real `cxrel console` process on a free port under a
//! test's own queue prefix, with its log captured (for audit lines and the token check), and
//! dead letters published the way the worker writes them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cxrel::amqp::{Publisher, Topology, headers};
use lapin::BasicProperties;
use lapin::types::FieldTable;

/// A running `cxrel console`; killed on drop.
pub struct ConsoleProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its stderr (JSON log lines).
    pub log: PathBuf,
    _state: tempfile::TempDir,
}

impl ConsoleProcess {
    /// Starts a console on `prefix`; `token` empty = read-only. Extra `CXREL__…` pairs go to its
    /// environment. Export ledgers live in a directory of its own.
    pub fn spawn(prefix: &str, token: &str, env: &[(&str, &str)]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("console.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxrel"))
            .args(["console", "--listen", "127.0.0.1:0"])
            .env_remove("CXREL_ENV")
            .env_remove("RUST_LOG")
            .env("CXREL__AMQP__PREFIX", prefix)
            .env("CXREL__CONSOLE__TOKEN", token)
            .env("CXREL__LOG__FORMAT", "json")
            .env("CXREL__LOG__LEVEL", "info")
            .env("XDG_STATE_HOME", state.path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn the cxrel binary");
        let Some(base) = crate::helpers::listening_url(&mut child, "console") else {
            let _ = child.kill();
            panic!(
                "cxrel console did not print its address within 30s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        ConsoleProcess {
            child,
            base,
            log,
            _state: state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the console logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Declares the topology of a fresh prefix for `test`.
pub async fn declared(test: &str) -> (Topology, lapin::Connection, lapin::Channel) {
    let prefix = format!(
        "test-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let topo = Topology::new(prefix, vec![Duration::from_secs(1)]);
    let connection = crate::helpers::broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    cxrel::amqp::topology::declare(&channel, &topo)
        .await
        .unwrap();
    (topo, connection, channel)
}

/// One dead letter as the worker writes it.
pub struct Dead<'a> {
    pub job: &'a str,
    pub code: &'a str,
    pub stage: &'a str,
    pub datastore: &'a str,
    pub age_secs: u64,
}

pub async fn dead_letter(publisher: &Publisher, topo: &Topology, d: Dead<'_>) {
    let mut t = FieldTable::default();
    headers::set_str(&mut t, headers::ERROR_CODE, d.code);
    headers::set_str(
        &mut t,
        headers::ERROR_MESSAGE,
        format!("{} in {}", d.code, d.job),
    );
    headers::set_str(&mut t, headers::STAGE, d.stage);
    headers::set_str(&mut t, headers::JOB_ID, d.job);
    headers::set_u64(&mut t, headers::ATTEMPTS, 5);
    let at = std::time::SystemTime::now() - Duration::from_secs(d.age_secs);
    headers::set_str(
        &mut t,
        headers::LAST_FAILED_AT,
        humantime::format_rfc3339_millis(at).to_string(),
    );
    let props = BasicProperties::default()
        .with_message_id(d.job.into())
        .with_content_type("application/json".into())
        .with_headers(t);
    let body = format!(
        "{{\"job_id\":\"{}\",\"datastore_id\":\"{}\",\"operations\":[]}}",
        d.job, d.datastore
    );
    publisher
        .to_queue(&topo.dead(), body.as_bytes(), props)
        .await
        .unwrap();
}

/// Five dead letters: three `server_error` (apply, two in ds-a), one `cycle_detected`, one
/// `timeout`; ages from 10 s to 3 h.
pub async fn seeded(test: &str) -> (Topology, lapin::Connection, lapin::Channel) {
    let (topo, connection, channel) = declared(test).await;
    let publisher = Publisher::open(&connection).await.unwrap();
    for (job, code, stage, datastore, age_secs) in [
        ("j1", "server_error", "apply", "ds-a", 10_800),
        ("j2", "server_error", "apply", "ds-a", 60),
        ("j3", "server_error", "apply", "ds-b", 10),
        ("j4", "cycle_detected", "validate", "ds-a", 3600),
        ("j5", "timeout", "apply", "ds-b", 30),
    ] {
        let d = Dead {
            job,
            code,
            stage,
            datastore,
            age_secs,
        };
        dead_letter(&publisher, &topo, d).await;
    }
    (topo, connection, channel)
}
