//! Helpers shared by the integration-test crates, mounted as `crate::helpers` by each of them
//! (`#[path = "../helpers/mod.rs"] mod helpers;` in `tests/*/main.rs`, `mod helpers;` in
//! `tests/broker_alarm.rs`).
//!
//! - [`emulator`]: a real `cxrel emulator` process and reqwest helpers for its API;
//!   [`listening_url`] finds any server process's address.
//! - [`broker`]: unique queue prefixes, reading queues and tearing a topology down on the local
//!   RabbitMQ.
//! - [`workers`]: the test workers' settings, workers as processes or in this process, an events
//!   tap, job builders; [`workers::pairs`] the pair workload several worker suites share.
//!
//! Every crate compiles the whole tree but uses only its own subset, so unused helpers are allowed
//! here, once, rather than in each crate.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use tokio::sync::Notify;

pub mod broker;
pub mod emulator;
pub mod workers;

/// The URL in `server`'s `cxrel {server} listening on …` line on the piped stdout of `child`
/// (the worker, the console and the emulator print it once bound), waiting up to 30 s; stdout is
/// drained afterwards so the child never blocks on it. None when the child exited or kept silent.
pub fn listening_url(child: &mut Child, server: &'static str) -> Option<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(url) = cxrel::http::listening_url(server, &line) {
                let _ = tx.send(url.to_owned());
                break;
            }
        }
        for _ in lines {}
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}

/// Held for its whole run by each test that asserts a rate or a timing-dependent count (429 shares,
/// token refreshes per expiry, a rate shared across clients). Two measurements of different kinds
/// never run side by side in one test process: on a 2-core machine they disturb each other's
/// figures. Tests of the same `kind` (one suite's measurements, which always ran together when each
/// suite was a binary of its own) may, and functional tests run beside any of them.
pub async fn measurement(kind: &'static str) -> Measurement {
    loop {
        // Created before the check, so a release between the check and the wait is not missed.
        let released = RELEASED.notified();
        {
            let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
            if running.0.is_none_or(|k| k == kind) {
                *running = (Some(kind), running.1 + 1);
                return Measurement;
            }
        }
        released.await;
    }
}

/// The kind of measurement running and how many of it.
static RUNNING: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
static RELEASED: Notify = Notify::const_new();

/// A running measurement (see [`measurement`]); released on drop, also when the test panics.
pub struct Measurement;

impl Drop for Measurement {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
        running.1 -= 1;
        if running.1 == 0 {
            running.0 = None;
            RELEASED.notify_waiters();
        }
    }
}
