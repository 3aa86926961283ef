//! The dead-letter engine behind `cxrel dlq` and `cxrel console`: browse (never removes), summary
//! by code and stage, replay (confirm before ack, rate-capped, stamped), filtered purge guarded by
//! the export ledger, and complete-or-failing export. Both front ends call these functions and
//! nothing else touches the dead queue.
//!
//! Files: [`letter`] one message, [`filter`] selection, [`browse`] reading, [`summary`] grouping,
//! [`scan`] the move/remove loop, [`ledger`] export bookkeeping, [`audit`] the action log.

pub mod audit;
pub mod browse;
pub mod filter;
pub mod ledger;
pub mod letter;
pub mod scan;
pub mod summary;

use std::io::Write;
use std::time::SystemTime;

use lapin::Connection;

pub use browse::{Snapshot, counts, depth, snapshot};
pub use filter::Filter;
pub use letter::DeadLetter;
pub use scan::{Decision, Pace, ScanReport};
pub use summary::Summary;

use crate::amqp::{AmqpError, Topology};
use crate::events::now_rfc3339;

/// Why a dead-letter action failed; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("queue {0} is missing ({1}); run `cxrel topology declare` or check [amqp].prefix")]
    NoQueue(String, lapin::Error),
    #[error(
        "export incomplete: wrote {written} of {depth} dead letters, {missed} not seen (another \
         reader holds them: close other `cxrel dlq`/console sessions and export again)"
    )]
    Incomplete {
        written: u64,
        depth: u32,
        missed: u64,
    },
    #[error(
        "refused: the purge would remove {matching} dead letters but the last complete export \
         counted {exported}; export first (`cxrel dlq export -o FILE`) or purge without an export \
         (`--without-export`)"
    )]
    NotExported { matching: u64, exported: u64 },
    #[error(
        "export incomplete: {readers} other reader(s) are attached to {queue} and may hold dead \
         letters unacked, which cannot be counted; stop them (other `cxrel dlq` or console \
         reads, or a stray consumer) and export again"
    )]
    OtherReaders { queue: String, readers: u32 },
    #[error("cannot write the export ledger {0}: {1}; check that directory is writable")]
    Ledger(String, std::io::Error),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error(
        "the broker did not confirm a publish within {0:?} (a memory or disk alarm blocks \
         publishers: check `rabbitmqctl status`); the message stays in the dead queue"
    )]
    NoConfirm(std::time::Duration),
    #[error("{0} matched nothing: no dead letter has {1}")]
    NothingMatched(&'static str, String),
    #[error(
        "stopped after {done} messages ({source}); the rest are still in the dead queue: run the \
         same command again once the cause is fixed"
    )]
    Stopped { done: u64, source: Box<DlqError> },
}

impl DlqError {
    /// Messages moved or removed before the action failed (for the audit line).
    pub fn done(&self) -> u64 {
        match self {
            DlqError::Stopped { done, .. } => *done,
            _ => 0,
        }
    }
}

impl From<lapin::Error> for DlqError {
    fn from(error: lapin::Error) -> Self {
        DlqError::Amqp(AmqpError::Broker(error))
    }
}

/// What a replay should do beyond its filter.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub filter: Filter,
    /// Stamped in `x-cxrel-replay-reason`; required so the history says why.
    pub reason: String,
    pub pace: Pace,
}

/// Moves matching dead letters back to the jobs queue, each confirmed before its dead copy is
/// acked, stamped with the replay time, reason and count. Matching nothing is an error.
pub async fn replay(
    connection: &Connection,
    topology: &Topology,
    request: &ReplayRequest,
) -> Result<ScanReport, DlqError> {
    let now = SystemTime::now();
    let jobs = topology.jobs();
    let report = scan::scan(connection, &topology.dead(), request.pace, |letter| {
        if request.filter.matches(letter, now) {
            Decision::Move {
                queue: jobs.clone(),
                properties: Box::new(letter.replay_properties(&request.reason)),
            }
        } else {
            Decision::Keep
        }
    })
    .await?;
    nothing_matched("replay", &request.filter, &report)?;
    Ok(report)
}

/// Whether a purge may go ahead without a covering export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeGuard {
    /// Refuse when more would be removed than the last export counted.
    RequireExport,
    /// The operator said to purge without an export.
    WithoutExport,
}

/// Removes matching dead letters. With `RequireExport`, first counts the matches (a browse) and
/// refuses when they exceed the export ledger.
pub async fn purge(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    guard: PurgeGuard,
) -> Result<ScanReport, DlqError> {
    let now = SystemTime::now();
    if guard == PurgeGuard::RequireExport {
        let seen = snapshot(connection, &topology.dead(), None).await?;
        let matching = seen
            .letters
            .iter()
            .filter(|l| filter.matches(l, now))
            .count() as u64
            + seen.missed;
        let exported = ledger::load(topology.prefix()).count;
        if matching > exported {
            return Err(DlqError::NotExported { matching, exported });
        }
    }
    let pace = Pace {
        limit: u64::MAX,
        rate: None,
    };
    let result = scan::scan(connection, &topology.dead(), pace, |letter| {
        if filter.matches(letter, now) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    })
    .await;
    // What went is off the ledger even when the purge stopped half-way.
    let removed = result.as_ref().map_or_else(|e| e.done(), |r| r.acted);
    ledger::purged(topology.prefix(), removed)?;
    let report = result?;
    nothing_matched("purge", filter, &report)?;
    Ok(report)
}

fn nothing_matched(
    action: &'static str,
    filter: &Filter,
    report: &ScanReport,
) -> Result<(), DlqError> {
    if report.acted == 0 {
        return Err(DlqError::NothingMatched(action, filter.describe()));
    }
    Ok(())
}

/// Writes every matching dead letter as JSON Lines to `out`, removing nothing. Fails when any
/// message present at the start could not be read; a complete export is recorded in the ledger.
pub async fn export(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    out: &mut (dyn Write + Send),
) -> Result<u64, DlqError> {
    let now = SystemTime::now();
    let mut written = 0u64;
    let seen = browse::each(connection, &topology.dead(), None, |letter| {
        if filter.matches(&letter, now) {
            serde_json::to_writer(&mut *out, &letter.to_json()).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    if seen.other_readers > 0 {
        return Err(DlqError::OtherReaders {
            queue: topology.dead(),
            readers: seen.other_readers,
        });
    }
    if seen.missed() > 0 {
        return Err(DlqError::Incomplete {
            written,
            depth: seen.depth,
            missed: seen.missed(),
        });
    }
    let record = ledger::Ledger {
        count: written,
        at: now_rfc3339(),
        filter: filter.describe(),
    };
    ledger::store(topology.prefix(), &record)?;
    Ok(written)
}
