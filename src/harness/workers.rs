//! Worker child processes (`cxrel --config FILE worker`): started with a generated settings file,
//! found by the address they print, measured through /proc, stopped with a real SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::config::WorkerConfig;
use crate::settings::Settings;

/// A running worker process.
pub struct WorkerChild {
    child: Child,
    pid: u32,
    http: String,
    config: PathBuf,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
}

/// What every worker of one run gets.
pub struct WorkerSpec<'a> {
    /// Their settings over the defaults; written as a TOML file readable by the owner only,
    /// removed on drop.
    pub config: &'a WorkerConfig,
    /// Extra environment (`CXREL__…` secrets such as the AMQP URL).
    pub env: Vec<(String, String)>,
    /// Base name of the config and log files in the temp directory.
    pub name: &'a str,
}

impl WorkerChild {
    /// Spawns worker number `n` and waits until it prints its HTTP address.
    pub async fn spawn(spec: &WorkerSpec<'_>, n: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir();
        let config = dir.join(format!("{}-{n}.toml", spec.name));
        let log = dir.join(format!("{}-{n}.log", spec.name));
        write_private(&config, &spec.config.to_toml()).context("write worker settings")?;
        let log_file = std::fs::File::create(&log).context("create worker log")?;
        let exe = std::env::current_exe().context("locate the cxrel binary")?;
        let mut command = Command::new(exe);
        command.arg("--config").arg(&config).arg("worker");
        // The generated settings must win: an inherited CXREL__… variable would override them.
        for (key, _) in std::env::vars_os() {
            if inherited_setting(&key) {
                command.env_remove(key);
            }
        }
        let mut child = command
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("CXREL__WORKER__INSTANCE", format!("{}-{n}", spec.name))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("start a worker process")?;
        let pid = child.id().context("worker exited at once")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let http = match tokio::time::timeout(Duration::from_secs(30), read_address(stdout)).await {
            Ok(Ok(url)) => url,
            failed => {
                let _ = std::fs::remove_file(&config);
                let why = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "it did not start within 30 s".to_owned(),
                };
                bail!("worker process failed: {why}; see {}", log.display());
            }
        };
        Ok(Self {
            child,
            pid,
            http,
            config,
            log,
        })
    }

    /// Waits until `/readyz` answers 200 (broker connected, token valid).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.http)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "worker {} not ready after {timeout:?}; see {}",
            self.pid,
            self.log.display()
        )
    }

    /// Peak resident set size so far (VmHWM), in KiB; None where /proc is not available.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM, then waits up to `timeout` for the drain; kills it after that.
    pub async fn stop(mut self, timeout: Duration) -> Option<i32> {
        send_signal(self.pid, "TERM");
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

impl Drop for WorkerChild {
    /// The process goes with `kill_on_drop`; its settings file goes here, on every path, and so
    /// does its log when the worker wrote nothing (a log with content stays for the operator).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        if std::fs::metadata(&self.log).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Secrets and credentials go to the worker through its environment, never its settings file: the
/// broker URL, and the emulator's own credentials so the worker can log in whatever [cxone.auth]
/// says.
pub fn worker_env(settings: &Settings) -> Vec<(String, String)> {
    let e = &settings.emulator;
    [
        ("CXREL__AMQP__URL", settings.amqp.url.expose()),
        ("CXREL__CXONE__AUTH__MODE", "cxone"),
        ("CXREL__CXONE__AUTH__CLIENT_ID", e.client_id.as_str()),
        (
            "CXREL__CXONE__AUTH__CLIENT_SECRET",
            e.client_secret.expose(),
        ),
        (
            "CXREL__CXONE__AUTH__ACCESS_KEY_ID",
            e.access_key_id.as_str(),
        ),
        (
            "CXREL__CXONE__AUTH__ACCESS_KEY_SECRET",
            e.access_key_secret.expose(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `CXREL_ENV` and `CXREL__…` variables of this process, which the child must not inherit.
fn inherited_setting(key: &std::ffi::OsStr) -> bool {
    key.to_str()
        .is_some_and(|k| k == "CXREL_ENV" || k.starts_with("CXREL__"))
}

/// Writes a file only its owner can read: it may hold webhook secrets.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// Sends a real signal through `kill(1)`, so no unsafe code is needed here.
fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Reads the worker's stdout up to its `cxrel worker listening on URL` line, then keeps draining
/// it in the background so the pipe never fills.
async fn read_address(stdout: tokio::process::ChildStdout) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = crate::http::listening_url("worker", &line) {
            let url = url.to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url);
        }
    }
    bail!("worker exited before it was listening")
}
