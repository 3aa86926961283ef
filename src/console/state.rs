//! What the console keeps between requests: one broker connection (reopened when it drops), the
//! last read of the dead queue (reused while the depth is unchanged, since every read redelivers
//! each message once), the login sessions, one lock so actions never overlap, and recent audit
//! entries for the page.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lapin::Connection;

use crate::amqp::{self, Topology};
use crate::dlq::{self, DlqError, Snapshot, Summary, audit};
use crate::secret::Secret;
use crate::settings::Settings;

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Recent actions shown on the page.
const AUDIT_KEPT: usize = 50;

pub struct Console {
    pub topology: Topology,
    /// `None` = read-only console.
    pub token: Option<Secret>,
    pub replay_rate: f64,
    rescan: Duration,
    amqp_url: Secret,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    cache: tokio::sync::Mutex<Option<Snapshot>>,
    /// Set after an action changed the queue: the next read goes to the broker. A flag rather
    /// than clearing `cache`, so an action never waits for a reader that waits for the action.
    stale: AtomicBool,
    /// Held by replay, purge and export so two never interleave on the dead queue.
    pub action: tokio::sync::Mutex<()>,
    /// Session id → (login time, a short label for audit lines that reveals nothing of the id).
    sessions: Mutex<HashMap<String, (Instant, String)>>,
    recent: Mutex<VecDeque<audit::Entry>>,
    /// Login attempts, all peers together: a guesser gets [`LOGINS_PER_MINUTE`], however many
    /// requests it sends at once (the 500 ms pause alone slows only one at a time).
    pub logins: governor::DefaultDirectRateLimiter,
}

/// Login attempts the console takes per minute (a burst of as many).
pub const LOGINS_PER_MINUTE: u32 = 10;

pub type SharedConsole = Arc<Console>;

impl Console {
    pub fn new(settings: &Settings) -> Self {
        let token = Some(settings.console.token.clone()).filter(|t| !t.is_empty());
        Console {
            topology: Topology::from_settings(&settings.amqp),
            token,
            replay_rate: settings.console.replay_rate,
            rescan: settings.console.rescan,
            amqp_url: settings.amqp.url.clone(),
            connection: tokio::sync::Mutex::new(None),
            cache: tokio::sync::Mutex::new(None),
            stale: AtomicBool::new(false),
            action: tokio::sync::Mutex::new(()),
            sessions: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            logins: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(LOGINS_PER_MINUTE).unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    /// The broker connection, opened (again) when there is none or it dropped.
    pub async fn connection(&self) -> Result<Arc<Connection>, DlqError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let fresh = Arc::new(amqp::connect(&self.amqp_url, "cxrel console").await?);
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// The dead queue as last read, read again when its depth changed or the read is older than
    /// `[console].rescan`. While a replay or purge runs, the last read is served instead: a
    /// browse would hold the messages the action is taking one by one.
    pub async fn snapshot(&self) -> Result<Snapshot, DlqError> {
        let connection = self.connection().await?;
        let mut cache = self.cache.lock().await;
        let stale = self.stale.swap(false, Ordering::SeqCst);
        if let Some(s) = cache.as_ref().filter(|_| !stale)
            && self.still_fresh(&connection, s).await?
        {
            return Ok(s.clone());
        }
        let _no_action_meanwhile = match self.action.try_lock() {
            Ok(guard) => guard,
            Err(_) if cache.is_some() => {
                // Served as is; read again once the action is over.
                self.stale.store(true, Ordering::SeqCst);
                return Ok(cache.clone().unwrap_or_default());
            }
            Err(_) => self.action.lock().await,
        };
        let fresh = dlq::snapshot(&connection, &self.topology.dead(), None).await?;
        super::gauges::record(&Summary::of(&fresh, SystemTime::now()));
        *cache = Some(fresh.clone());
        Ok(fresh)
    }

    /// True while `s` is younger than `[console].rescan` and the depth has not changed.
    async fn still_fresh(&self, connection: &Connection, s: &Snapshot) -> Result<bool, DlqError> {
        let young = s
            .taken_at
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < self.rescan);
        if !young {
            return Ok(false);
        }
        let channel = connection.create_channel().await?;
        let depth = dlq::depth(&channel, &self.topology.dead()).await;
        let _ = channel.close(200, "depth".into()).await;
        Ok(depth? == s.depth)
    }

    /// Forgets the last read, after an action changed the queue.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// Starts a session; returns its label.
    pub fn add_session(&self, id: String) -> String {
        let label = format!("{:08x}", rand::random::<u32>());
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, (at, _)| at.elapsed() < SESSION_TTL);
            sessions.insert(id, (Instant::now(), label.clone()));
        }
        label
    }

    /// The label of a live session.
    pub fn session(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().ok()?;
        let (at, label) = sessions.get(id)?;
        (at.elapsed() < SESSION_TTL).then(|| label.clone())
    }

    pub fn end_session(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(id);
        }
    }

    pub fn remember(&self, entry: audit::Entry) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.push_front(entry);
            recent.truncate(AUDIT_KEPT);
        }
    }

    /// Recent actions, newest first.
    pub fn recent(&self) -> Vec<audit::Entry> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}
