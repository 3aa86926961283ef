//! Worker child processes (`cxrel --config FILE worker`): started with a generated settings file,
//! found by the address they print, measured through /proc, stopped with a real SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
    /// TOML layered over the defaults (no secrets: those go in `env`).
    pub config_toml: &'a str,
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
        std::fs::write(&config, spec.config_toml).context("write worker settings")?;
        let log_file = std::fs::File::create(&log).context("create worker log")?;
        let exe = std::env::current_exe().context("locate the cxrel binary")?;
        let mut child = Command::new(exe)
            .arg("--config")
            .arg(&config)
            .arg("worker")
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
        let http = tokio::time::timeout(Duration::from_secs(30), read_address(stdout))
            .await
            .map_err(|_| {
                anyhow::anyhow!("worker did not start within 30 s; see {}", log.display())
            })??;
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
        let code = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        let _ = std::fs::remove_file(&self.config);
        code
    }
}

/// Sends a real signal through `kill(1)`, so no unsafe code is needed here.
fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Reads the worker's stdout up to `cxrel worker listening on URL`, then keeps draining it in the
/// background so the pipe never fills.
async fn read_address(stdout: tokio::process::ChildStdout) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("cxrel worker listening on ") {
            let url = url.trim().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url);
        }
    }
    bail!("worker exited before it was listening")
}
