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
        "refused: {unexported} of the {matching} dead letters the purge would remove are not in \
         the last complete export; export first (`cxrel dlq export -o FILE`) or purge without an \
         export (`--without-export`)"
    )]
    NotExported { matching: u64, unexported: u64 },
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
    #[error(
        "another replay or purge is running on {0} (a `cxrel dlq` command or a console): try \
         again when it ends; two at once would each miss what the other holds"
    )]
    Busy(String),
    #[error("{0} matched nothing (filter: {1})")]
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
    let report = scan::scan(
        connection,
        &topology.dead(),
        request.pace.clone(),
        |letter| {
            if request.filter.matches(letter, now) {
                Decision::Move {
                    queue: jobs.clone(),
                    properties: Box::new(letter.replay_properties(&request.reason)),
                }
            } else {
                Decision::Keep
            }
        },
    )
    .await?;
    if !report.interrupted {
        nothing_matched("replay", &request.filter, &report)?;
    }
    Ok(report)
}

/// Whether a purge may go ahead without a covering export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeGuard {
    /// Refuse when a matching message is not in the last complete export; remove only exported
    /// ones (a message arriving after the check stays).
    RequireExport,
    /// The operator said to purge without an export.
    WithoutExport,
}

/// Removes matching dead letters. With `RequireExport`, first checks (a browse) that every match is
/// in the export ledger, then removes only messages it holds, taking them off it.
pub async fn purge(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    guard: PurgeGuard,
) -> Result<ScanReport, DlqError> {
    let now = SystemTime::now();
    let mut exported = match guard {
        PurgeGuard::RequireExport => Some(exported_cover(connection, topology, filter, now).await?),
        PurgeGuard::WithoutExport => None,
    };
    let pace = Pace {
        limit: u64::MAX,
        ..Pace::default()
    };
    let mut removed = Vec::new();
    let result = scan::scan(connection, &topology.dead(), pace, |letter| {
        if !filter.matches(letter, now) {
            return Decision::Keep;
        }
        let print = ledger::fingerprint(letter);
        if let Some(left) = &mut exported
            && !ledger::take(left, &print)
        {
            return Decision::Keep;
        }
        removed.push(print);
        Decision::Remove
    })
    .await;
    // What went is off the ledger even when the purge stopped half-way.
    ledger::purged(topology.prefix(), &removed)?;
    let report = result?;
    nothing_matched("purge", filter, &report)?;
    Ok(report)
}

/// The ledger's exported messages, when every message `filter` matches now is among them.
async fn exported_cover(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    now: SystemTime,
) -> Result<ledger::Exported, DlqError> {
    let exported = ledger::load(topology.prefix()).letters;
    let mut left = exported.clone();
    let seen = snapshot(connection, &topology.dead(), None).await?;
    let matching: Vec<&DeadLetter> = seen
        .letters
        .iter()
        .filter(|l| filter.matches(l, now))
        .collect();
    let unexported = matching
        .iter()
        .filter(|l| !ledger::take(&mut left, &ledger::fingerprint(l)))
        .count() as u64
        + seen.missed;
    if unexported > 0 {
        return Err(DlqError::NotExported {
            matching: matching.len() as u64 + seen.missed,
            unexported,
        });
    }
    Ok(exported)
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
/// message present at the start could not be read; a complete export is recorded in the ledger
/// when `ledger` says so.
pub async fn export(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    out: &mut (dyn Write + Send),
    ledger: LedgerUpdate,
) -> Result<u64, DlqError> {
    let now = SystemTime::now();
    let mut prints = Vec::new();
    let seen = browse::each(connection, &topology.dead(), None, |letter| {
        if filter.matches(&letter, now) {
            serde_json::to_writer(&mut *out, &letter.to_json()).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            prints.push(ledger::fingerprint(&letter));
        }
        Ok(())
    })
    .await?;
    let written = prints.len() as u64;
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
    if ledger == LedgerUpdate::Record {
        ledger::store(
            topology.prefix(),
            &ledger::Ledger::of_export(prints, filter.describe()),
        )?;
    }
    Ok(written)
}

/// Whether an export counts for purge's guard ("exported first").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerUpdate {
    /// An operator's export: it replaces the ledger.
    Record,
    /// A read-only reader's (the console without operator rights): reading must change nothing,
    /// and it must not let a purge through that no operator's copy covers.
    Leave,
}
