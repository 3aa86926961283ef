//! `cxrel dlq list|show|replay|purge|export`: the dead-letter engine (`crate::dlq`) from a
//! terminal. Every action that changes the queue writes an audit line.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use crate::amqp::{self, Topology};
use crate::dlq::summary::{Group, human_age};
use crate::dlq::{self, DeadLetter, Filter, Pace, PurgeGuard, ReplayRequest, Summary, audit};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub action: DlqAction,
    /// Most messages read by list, show and replay --dry-run (default: all; browsing holds them
    /// unacked). Export always reads all.
    #[arg(long, global = true)]
    pub scan: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Counts by error code and by stage (with oldest and newest age), and the newest entries.
    List {
        /// Entries shown.
        #[arg(long, default_value_t = 10)]
        newest: usize,
    },
    /// One message with headers and body, by job id or message id.
    Show { id: String },
    /// Move dead letters back to the jobs queue (attempts reset, replay stamped).
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most messages replayed (default: all that match; at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Most messages replayed per second (default: as fast as the broker confirms).
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// Why: stamped in x-cxrel-replay-reason and the audit line.
        #[arg(long, default_value = "replayed with cxrel dlq")]
        reason: String,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete matching dead letters (all when no filter is given).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        /// Purge even if more would go than the last complete export counted.
        #[arg(long)]
        without_export: bool,
    },
    /// POST the events parked on the webhook dead queue again, once each, to the endpoint each was
    /// parked for (or every endpoint of `[[webhooks]]` wanting it); delivered ones leave the queue.
    /// Exit 1 when an endpoint still refuses some.
    RedeliverWebhooks {
        /// Only events for this `[[webhooks]]` entry (from 1, in the configuration's order).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        endpoint: Option<u64>,
        /// Most events handled (default: all; at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Write matching dead letters as JSON Lines; nothing is removed. Fails (exit 1) when any
    /// message could not be read.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// Output file; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this error code (x-cxrel-error-code).
    #[arg(long)]
    pub code: Option<String>,
    /// Only this stage (x-cxrel-stage: parse, validate, apply, compensate, settle; broker for what
    /// RabbitMQ dead-lettered itself; unknown for a message without the header).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(dlq::filter::STAGES))]
    pub stage: Option<String>,
    /// Only this job id (x-cxrel-job-id or message id).
    #[arg(long)]
    pub job_id: Option<String>,
    /// Only jobs for this data store (as the worker resolved it, x-cxrel-datastore-id; else the
    /// body's datastore_id).
    #[arg(long)]
    pub datastore: Option<String>,
    /// Only messages whose last failure is at least this old, e.g. "10m", "2h".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
}

impl From<&FilterArgs> for Filter {
    fn from(args: &FilterArgs) -> Self {
        Filter {
            code: args.code.clone(),
            stage: args.stage.clone(),
            job_id: args.job_id.clone(),
            datastore: args.datastore.clone(),
            older_than: args.older_than,
            ..Filter::default()
        }
    }
}

pub async fn run(args: DlqArgs, settings: Settings) -> anyhow::Result<i32> {
    let topology = Topology::from_settings(&settings.amqp);
    let connection = amqp::connect(&settings.amqp.url, "cxrel dlq").await?;
    let code = act(args, &connection, &topology, &settings).await;
    let _ = connection.close(200, "done".into()).await;
    code
}

async fn act(
    args: DlqArgs,
    connection: &lapin::Connection,
    topology: &Topology,
    settings: &Settings,
) -> anyhow::Result<i32> {
    let dead = topology.dead();
    let read = || dlq::snapshot(connection, &dead, args.scan);
    Ok(match args.action {
        DlqAction::List { newest } => {
            list(&read().await?, newest);
            0
        }
        DlqAction::Show { id } => show(&read().await?.letters, &id),
        DlqAction::Replay {
            filter,
            limit,
            dry_run: true,
            ..
        } => {
            dry_run(&read().await?, &Filter::from(&filter), limit);
            0
        }
        DlqAction::Replay {
            filter,
            limit,
            rate,
            reason,
            ..
        } => {
            let request = ReplayRequest {
                filter: Filter::from(&filter),
                reason,
                pace: Pace {
                    limit: limit.unwrap_or(u64::MAX),
                    rate,
                    stop: stop_on_ctrl_c(),
                },
            };
            replay(connection, topology, &request).await
        }
        DlqAction::Purge { yes: false, .. } => {
            eprintln!("cxrel: purge deletes dead letters from {dead}; add --yes to do it");
            2
        }
        DlqAction::Purge {
            filter,
            without_export,
            ..
        } => {
            let guard = if without_export {
                PurgeGuard::WithoutExport
            } else {
                PurgeGuard::RequireExport
            };
            purge(connection, topology, &Filter::from(&filter), guard).await
        }
        DlqAction::Export { filter, output } => {
            export(connection, topology, &Filter::from(&filter), output).await?
        }
        DlqAction::RedeliverWebhooks { endpoint, limit } => {
            let only = endpoint.and_then(|n| usize::try_from(n).ok());
            redeliver_webhooks(connection, topology, settings, only, limit).await
        }
    })
}

async fn redeliver_webhooks(
    connection: &lapin::Connection,
    topology: &Topology,
    settings: &Settings,
    only: Option<usize>,
    limit: Option<u64>,
) -> i32 {
    let dead = topology.webhooks_dead();
    if settings.webhooks.is_empty() {
        eprintln!("cxrel: no [[webhooks]] are configured: nothing to redeliver to");
        return 2;
    }
    if only.is_some_and(|n| n > settings.webhooks.len()) {
        eprintln!(
            "cxrel: --endpoint: only {} [[webhooks]] entries are configured",
            settings.webhooks.len()
        );
        return 2;
    }
    let pace = Pace {
        limit: limit.unwrap_or(u64::MAX),
        rate: None,
        stop: stop_on_ctrl_c(),
    };
    let result = crate::webhooks::redeliver::redeliver(
        connection,
        &dead,
        &settings.webhooks,
        &settings.webhook_delivery,
        only,
        pace,
    )
    .await;
    match result {
        Ok((report, done)) => {
            outln!(
                "{} of {} parked events delivered; {} refused again (back on {dead} with the new error); {} left for other or unconfigured endpoints",
                done.delivered,
                report.scanned,
                done.failed,
                done.left
            );
            warn_unseen(&report, &dead);
            if report.interrupted {
                return 130;
            }
            i32::from(done.failed > 0)
        }
        Err(error) => {
            eprintln!("cxrel: {error}");
            1
        }
    }
}

/// One line per letter; control characters (a producer's message id, an echoed value) are
/// escaped so they cannot move the cursor, recolour or fake lines on the operator's terminal.
fn describe(letter: &DeadLetter) -> String {
    escape_controls(&format!(
        "{} code={} stage={} attempts={} last_failed_at={}: {}",
        letter.display_id(),
        letter.code(),
        letter.stage(),
        letter.attempts(),
        letter
            .last_failed_at()
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into()),
        letter.error_message()
    ))
}

fn escape_controls(line: &str) -> String {
    line.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

fn print_groups(title: &str, groups: &[Group]) {
    outln!(
        "{:<28} {:>8} {:>10} {:>10}",
        title,
        "COUNT",
        "OLDEST",
        "NEWEST"
    );
    for g in groups {
        outln!(
            "{:<28} {:>8} {:>10} {:>10}",
            g.key,
            g.count,
            human_age(g.oldest_age_seconds),
            human_age(g.newest_age_seconds)
        );
    }
}

fn list(snapshot: &dlq::Snapshot, newest: usize) {
    let summary = Summary::of(snapshot, SystemTime::now());
    outln!("{} dead letters", summary.total);
    if summary.missed > 0 {
        outln!(
            "({} more present but not read: held by another reader or beyond --scan)",
            summary.missed
        );
    }
    print_groups("CODE", &summary.by_code);
    outln!();
    print_groups("STAGE", &summary.by_stage);
    let mut sorted: Vec<_> = snapshot.letters.iter().collect();
    sorted.sort_by_key(|l| std::cmp::Reverse(l.last_failed_at()));
    if !sorted.is_empty() {
        outln!("\nnewest:");
    }
    for letter in sorted.into_iter().take(newest) {
        outln!("  {}", describe(letter));
    }
}

/// The newest dead letter with `id`; a note on stderr when there are more (a job dead-lettered,
/// replayed and dead-lettered again, or published twice).
fn show(letters: &[DeadLetter], id: &str) -> i32 {
    let mut matching: Vec<&DeadLetter> = letters.iter().filter(|l| l.has_id(id)).collect();
    matching.sort_by_key(|l| std::cmp::Reverse(l.last_failed_at()));
    match matching.first() {
        Some(letter) => {
            let pretty = serde_json::to_string_pretty(&letter.to_json()).unwrap_or_default();
            outln!("{pretty}");
            if matching.len() > 1 {
                eprintln!(
                    "cxrel: {} more dead letters have this id (this is the newest); `cxrel dlq export --job-id {id}` prints all",
                    matching.len() - 1
                );
            }
            0
        }
        None => {
            eprintln!("cxrel: no dead letter with job id or message id {id:?}");
            1
        }
    }
}

fn dry_run(snapshot: &dlq::Snapshot, filter: &Filter, limit: Option<u64>) {
    let now = SystemTime::now();
    let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let chosen: Vec<_> = snapshot
        .letters
        .iter()
        .filter(|l| filter.matches(l, now))
        .take(limit)
        .collect();
    for letter in &chosen {
        outln!("would replay {}", describe(letter));
    }
    outln!(
        "dry run: {} of {} dead letters would be replayed",
        chosen.len(),
        snapshot.letters.len()
    );
}

async fn replay(
    connection: &lapin::Connection,
    topology: &Topology,
    request: &ReplayRequest,
) -> i32 {
    let entry = audit::Entry::new(
        &audit::cli_actor(),
        "replay",
        &request.filter,
        &request.reason,
    );
    match dlq::replay(connection, topology, request).await {
        Ok(report) => {
            let outcome = if report.interrupted {
                Err("interrupted".to_owned())
            } else {
                Ok(())
            };
            entry.finish(report.acted, outcome);
            for id in &report.ids {
                outln!("replayed {id}");
            }
            outln!(
                "replayed {} of {} dead letters scanned to {}",
                report.acted,
                report.scanned,
                topology.jobs()
            );
            if report.interrupted {
                eprintln!(
                    "cxrel: interrupted: the {} above were replayed; the rest are still in the dead queue",
                    report.acted
                );
                return 130;
            }
            warn_unseen(&report, &topology.dead());
            0
        }
        Err(error) => failed(entry, error),
    }
}

/// A token cancelled at the first Ctrl-C (SIGINT): a replay then ends after the message in hand
/// and says what it did, where the signal's default would end the process with no word of it.
fn stop_on_ctrl_c() -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    stop
}

async fn purge(
    connection: &lapin::Connection,
    topology: &Topology,
    filter: &Filter,
    guard: PurgeGuard,
) -> i32 {
    let entry = audit::Entry::new(&audit::cli_actor(), "purge", filter, "");
    match dlq::purge(connection, topology, filter, guard).await {
        Ok(report) => {
            entry.finish(report.acted, Ok(()));
            outln!(
                "purged {} dead letters from {} ({})",
                report.acted,
                topology.dead(),
                filter.describe()
            );
            warn_unseen(&report, &topology.dead());
            0
        }
        Err(error) => failed(entry, error),
    }
}

/// A `--rate`: a finite number above 0 (`NaN`, `inf` and 0 would mean no pacing or no progress).
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give messages per second above 0, e.g. 5 or 0.5"
        )),
    }
}

/// Says what a replay or purge could not look at, so "done" never stands for "all".
fn warn_unseen(report: &dlq::ScanReport, dead: &str) {
    if report.unreached > 0 {
        eprintln!(
            "cxrel: {} dead letters present at the start were not reached (the --limit, or taken by another reader meanwhile); run again for the rest",
            report.unreached
        );
    }
    if report.other_readers > 0 {
        eprintln!(
            "cxrel: warning: {} other consumer(s) are attached to {dead}; dead letters they hold unacked were not seen (stop them, e.g. a console browse or a shovel, and run again)",
            report.other_readers
        );
    }
}

fn failed(entry: audit::Entry, error: dlq::DlqError) -> i32 {
    entry.finish(error.done(), Err(error.to_string()));
    eprintln!("cxrel: {error}");
    1
}

async fn export(
    connection: &lapin::Connection,
    topology: &Topology,
    filter: &Filter,
    output: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let mut out: Box<dyn Write + Send> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let entry = audit::Entry::new(&audit::cli_actor(), "export", filter, "");
    match dlq::export(
        connection,
        topology,
        filter,
        &mut out,
        dlq::LedgerUpdate::Record,
    )
    .await
    {
        Ok(count) => {
            entry.finish(count, Ok(()));
            let to = output.map_or("standard output".into(), |p| p.display().to_string());
            eprintln!("exported {count} dead letters to {to}");
            Ok(0)
        }
        Err(error) => Ok(failed(entry, error)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rate_is_a_finite_number_above_zero() {
        assert_eq!(positive_rate("5"), Ok(5.0));
        assert_eq!(positive_rate("0.5"), Ok(0.5));
        for bad in ["NaN", "inf", "0", "-1", "fast"] {
            assert!(positive_rate(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn control_characters_in_a_listed_line_are_escaped_not_sent_to_the_terminal() {
        let line = escape_controls("evil\u{1b}[31mRED\nfake-job code=none");
        assert_eq!(line, "evil\\u{1b}[31mRED\\nfake-job code=none");
        assert_eq!(escape_controls("j-1 code=x: é ok"), "j-1 code=x: é ok");
    }
}
