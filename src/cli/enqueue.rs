//! `cxrel enqueue FILE|-`: publish jobs from a file (JSON array, single object or JSON Lines) to the
//! jobs queue, streamed, each confirmed by the broker, optionally rate-limited, with a progress bar
//! on a terminal and a summary at the end.

use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use governor::{Quota, RateLimiter};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::BasicProperties;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::amqp::{self, Publisher, Topology};
use crate::jobfile::{self, BadItem, Item};
use crate::settings::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Stop at the first bad job (nothing after it is published).
    Abort,
    /// Report the bad job with its line number and go on.
    Skip,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job file (JSON array, one JSON object, or JSON Lines); `-` reads standard input.
    pub file: PathBuf,
    /// Jobs per second; 0 publishes as fast as the broker confirms.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// What to do with a job that is not valid JSON, not an object, or over
    /// `[limits].max_body_bytes`.
    #[arg(long, value_enum, default_value_t = OnError::Abort)]
    pub on_error: OnError,
    /// Publishes awaiting their broker confirm at once.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Do not declare the topology first (it must exist).
    #[arg(long)]
    pub no_declare: bool,
}

/// Counts for the summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnqueueSummary {
    pub published: u64,
    pub skipped: Vec<BadItem>,
    pub aborted: Option<BadItem>,
    pub failed_publishes: u64,
}

pub async fn run(args: EnqueueArgs, settings: Settings) -> anyhow::Result<i32> {
    let topology = Topology::from_settings(&settings.amqp);
    let connection = amqp::connect(&settings.amqp.url, "cxrel enqueue").await?;
    if !args.no_declare {
        let channel = connection.create_channel().await?;
        amqp::topology::declare(&channel, &topology).await?;
    }
    let publisher = Publisher::open(&connection).await?;
    let started = Instant::now();
    let max_body = settings.limits.max_body_bytes;
    let summary = publish_file(&args, &publisher, &topology.jobs(), max_body).await?;
    let _ = connection.close(200, "done".into()).await;
    print_summary(&summary, started.elapsed(), &topology.jobs());
    let clean =
        summary.skipped.is_empty() && summary.aborted.is_none() && summary.failed_publishes == 0;
    Ok(if clean { 0 } else { 1 })
}

/// Reads the file on a blocking thread and publishes what it yields, `window` confirms at a time.
/// A job above `max_body` bytes (`[limits].max_body_bytes`) is a bad item, not a publish the
/// worker would only dead-letter as `payload_too_large`.
pub async fn publish_file(
    args: &EnqueueArgs,
    publisher: &Publisher,
    queue: &str,
    max_body: usize,
) -> anyhow::Result<EnqueueSummary> {
    let (tx, rx) = mpsc::channel::<Result<Item, BadItem>>(args.window.max(1) * 2);
    let (input, size) = open_input(&args.file)?;
    let progress = progress_bar(size);
    // Bytes read drive the bar, so a file's progress and ETA show without knowing the job count.
    let input = progress.wrap_read(input);
    let reader = tokio::task::spawn_blocking(move || {
        jobfile::read_jobs(input, |item| tx.blocking_send(item).is_ok());
    });
    let limiter = NonZeroU32::new(args.rate).map(|r| RateLimiter::direct(Quota::per_second(r)));
    let mut summary = EnqueueSummary::default();
    let mut items = ReceiverStream::new(rx);
    let mut publishes = futures::stream::FuturesUnordered::new();
    while let Some(item) = items.next().await {
        match item.and_then(|item| within_limit(item, max_body)) {
            Ok(item) => {
                if let Some(limiter) = &limiter {
                    limiter.until_ready().await;
                }
                while publishes.len() >= args.window.max(1) {
                    settle_one(&mut publishes, &mut summary, &progress).await;
                }
                publishes.push(publish_one(publisher, queue, item));
            }
            Err(bad) if bad.recoverable && args.on_error == OnError::Skip => {
                progress.println(format!("skipped: {bad}"));
                summary.skipped.push(bad);
            }
            Err(bad) => {
                summary.aborted = Some(bad);
                break;
            }
        }
    }
    drop(items);
    while !publishes.is_empty() {
        settle_one(&mut publishes, &mut summary, &progress).await;
    }
    progress.finish_and_clear();
    let _ = reader.await;
    Ok(summary)
}

/// `item`, or a recoverable bad item when its body is above the worker's limit.
fn within_limit(item: Item, max_body: usize) -> Result<Item, BadItem> {
    if item.json.len() <= max_body {
        return Ok(item);
    }
    Err(BadItem {
        line: item.line,
        message: format!(
            "job {} is {} bytes, above [limits].max_body_bytes ({max_body}): the worker would dead-letter it as payload_too_large",
            item.index,
            item.json.len()
        ),
        recoverable: true,
    })
}

async fn settle_one<F: std::future::Future<Output = Result<(), String>>>(
    publishes: &mut futures::stream::FuturesUnordered<F>,
    summary: &mut EnqueueSummary,
    progress: &ProgressBar,
) {
    match publishes.next().await {
        Some(Ok(())) => {
            summary.published += 1;
            if summary.published.is_multiple_of(100) {
                progress.set_message(format!("{} jobs published", summary.published));
            }
        }
        Some(Err(error)) => {
            summary.failed_publishes += 1;
            progress.println(format!("publish failed: {error}"));
        }
        None => {}
    }
}

async fn publish_one(publisher: &Publisher, queue: &str, item: Item) -> Result<(), String> {
    // The job's own id, so the message id (the worker's default job id) matches it.
    let message_id = jobfile::declared_job_id(&item.json)
        .filter(|id| id.len() <= 128)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(message_id.into());
    publisher
        .to_queue(queue, item.json.as_bytes(), properties)
        .await
        .map_err(|e| format!("job {}: {e}", item.index))
}

/// The input and, for a regular file, its size in bytes.
type Input = (Box<dyn std::io::Read + Send>, Option<u64>);

fn open_input(path: &PathBuf) -> anyhow::Result<Input> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok((Box::new(file), size))
}

/// On a terminal: a bar over the file's bytes with the jobs published so far, or a spinner for
/// standard input; hidden otherwise (scripts, CI).
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match size {
        Some(len) => (
            ProgressBar::new(len),
            "{wide_bar} {bytes}/{total_bytes} · {msg} · {elapsed} (eta {eta})",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {bytes} read · {msg} · {elapsed}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("0 jobs published");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_summary(summary: &EnqueueSummary, elapsed: Duration, queue: &str) {
    let rate = summary.published as f64 / elapsed.as_secs_f64().max(1e-9);
    outln!(
        "published {} jobs to {queue} in {:.2}s ({rate:.0} jobs/s); skipped {}; failed publishes {}",
        summary.published,
        elapsed.as_secs_f64(),
        summary.skipped.len(),
        summary.failed_publishes
    );
    for bad in &summary.skipped {
        outln!("  skipped {bad}");
    }
    if let Some(bad) = &summary.aborted {
        outln!("aborted at {bad}; nothing after it was published");
    }
}
