//! `cxrel dlq list|show|replay|purge|export`: inspect and replay dead letters.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use crate::amqp::{self, Topology};
use crate::dlq::{self, DeadLetter, Filter};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub action: DlqAction,
    /// Most messages read by list, show, export and replay --dry-run (browsing holds them unacked).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub scan: u16,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Counts by error code and the newest entries.
    List {
        /// Entries shown.
        #[arg(long, default_value_t = 10)]
        newest: usize,
    },
    /// One message with headers and body, by job id or message id.
    Show { id: String },
    /// Move dead letters back to the jobs queue (attempts reset, replay history added).
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most messages replayed (default: all that match).
        #[arg(long)]
        limit: Option<u64>,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every dead letter.
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Write dead letters as JSON Lines (headers, properties, body); nothing is removed.
    Export {
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
    /// Only this job id (x-cxrel-job-id or message id).
    #[arg(long)]
    pub job_id: Option<String>,
    /// Only messages whose last failure is at least this old, e.g. "10m", "2h".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
}

impl From<&FilterArgs> for Filter {
    fn from(args: &FilterArgs) -> Self {
        Filter {
            code: args.code.clone(),
            job_id: args.job_id.clone(),
            older_than: args.older_than,
        }
    }
}

pub async fn run(args: DlqArgs, settings: Settings) -> anyhow::Result<i32> {
    let topology = Topology::from_settings(&settings.amqp);
    let connection = amqp::connect(&settings.amqp.url, "cxrel dlq").await?;
    let dead = topology.dead();
    let code = match args.action {
        DlqAction::List { newest } => {
            list(&dlq::browse(&connection, &dead, args.scan).await?, newest);
            0
        }
        DlqAction::Show { id } => show(&dlq::browse(&connection, &dead, args.scan).await?, &id),
        DlqAction::Replay {
            filter,
            limit,
            dry_run: true,
        } => {
            let letters = dlq::browse(&connection, &dead, args.scan).await?;
            let filter = Filter::from(&filter);
            let now = SystemTime::now();
            let chosen: Vec<_> = letters
                .iter()
                .filter(|l| filter.matches(l, now))
                .take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)))
                .collect();
            for letter in &chosen {
                println!("would replay {}", describe(letter));
            }
            println!(
                "dry run: {} of {} dead letters would be replayed",
                chosen.len(),
                letters.len()
            );
            0
        }
        DlqAction::Replay { filter, limit, .. } => {
            let limit = limit.unwrap_or(u64::MAX);
            let report = dlq::replay(&connection, &topology, &Filter::from(&filter), limit).await?;
            for id in &report.job_ids {
                println!("replayed {id}");
            }
            println!(
                "replayed {} of {} dead letters scanned to {}",
                report.replayed,
                report.scanned,
                topology.jobs()
            );
            0
        }
        DlqAction::Purge { yes: false } => {
            eprintln!("cxrel: purge deletes every dead letter in {dead}; add --yes to do it");
            2
        }
        DlqAction::Purge { yes: true } => {
            let count = dlq::purge(&connection, &dead).await?;
            println!("purged {count} dead letters from {dead}");
            0
        }
        DlqAction::Export { output } => {
            let letters = dlq::browse(&connection, &dead, args.scan).await?;
            export(&letters, output)?;
            0
        }
    };
    let _ = connection.close(200, "done".into()).await;
    Ok(code)
}

fn describe(letter: &DeadLetter) -> String {
    format!(
        "{} code={} stage={} attempts={} last_failed_at={}: {}",
        letter
            .job_id()
            .or(letter.message_id())
            .unwrap_or_else(|| "-".into()),
        letter.code(),
        letter.stage(),
        letter.attempts(),
        letter
            .last_failed_at()
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into()),
        letter.error_message()
    )
}

fn list(letters: &[DeadLetter], newest: usize) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for letter in letters {
        *counts.entry(letter.code()).or_default() += 1;
    }
    println!("{} dead letters", letters.len());
    println!("{:<28} {:>8}", "CODE", "COUNT");
    for (code, count) in &counts {
        println!("{code:<28} {count:>8}");
    }
    let mut sorted: Vec<_> = letters.iter().collect();
    sorted.sort_by_key(|l| std::cmp::Reverse(l.last_failed_at()));
    if !sorted.is_empty() {
        println!("\nnewest:");
    }
    for letter in sorted.into_iter().take(newest) {
        println!("  {}", describe(letter));
    }
}

fn show(letters: &[DeadLetter], id: &str) -> i32 {
    let found = letters
        .iter()
        .find(|l| l.job_id().as_deref() == Some(id) || l.message_id().as_deref() == Some(id));
    match found {
        Some(letter) => {
            let pretty = serde_json::to_string_pretty(&letter.to_json()).unwrap_or_default();
            println!("{pretty}");
            0
        }
        None => {
            eprintln!("cxrel: no dead letter with job id or message id {id:?}");
            1
        }
    }
}

fn export(letters: &[DeadLetter], output: Option<PathBuf>) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    for letter in letters {
        serde_json::to_writer(&mut out, &letter.to_json())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if let Some(path) = output {
        eprintln!(
            "exported {} dead letters to {}",
            letters.len(),
            path.display()
        );
    }
    Ok(())
}
