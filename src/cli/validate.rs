//! `cxrel validate FILE|-`: a read-only dry run of a job file against the live data store, saying
//! per job and operation what the worker would apply, skip or reject, and why.
//!
//! Jobs are checked in file order, each against the live graph plus the effect of the earlier jobs
//! of the file that would apply (kept in memory, never written), so the answer predicts what the
//! worker would do with the file enqueued in that order. Only GET requests reach the data store.

mod findings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio::sync::mpsc;

use crate::graph::{FieldValue, OpVerdict, Plan, Verdict};
use crate::job::{Job, ParseContext};
use crate::jobfile::{self, BadItem, Item};
use crate::pipeline::datastore::{Check, LiveDataStore};
use crate::pipeline::datastores::{DataStores, LoadError};
use crate::settings::Settings;
use crate::store::{StoreClient, StoreError};
use findings::{EntryError, Findings, JobFindings, OpFate, OpFindings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateOutput {
    /// One aligned row per operation and a summary line.
    Table,
    /// One JSON document: every job with its operations and verdicts, and a summary.
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Job file (JSON array, one JSON object, or JSON Lines); `-` reads standard input.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ValidateOutput::Table)]
    pub output: ValidateOutput,
}

/// Exit codes: 0 nothing would be rejected, 1 something would, 2 the dry run itself failed.
pub async fn run(args: ValidateArgs, settings: Settings) -> anyhow::Result<i32> {
    match dry_run(&args.file, &settings).await {
        Ok(findings) => {
            match args.output {
                ValidateOutput::Table => out!("{}", findings.to_table()),
                ValidateOutput::Json => outln!("{}", findings.to_json()),
            }
            Ok(findings.exit_code())
        }
        Err(error) => {
            eprintln!("cxrel validate: {error:#}");
            Ok(2)
        }
    }
}

/// Reads the file on a blocking thread and checks its entries one by one, in order.
async fn dry_run(path: &Path, settings: &Settings) -> anyhow::Result<Findings> {
    let input = open_input(path)?;
    let store = StoreClient::from_settings(settings)
        .context("the data-store client cannot start; check [cxone] in the settings")?;
    let mut checker = Checker::new(store, ParseContext::from_settings(settings));
    let (tx, mut rx) = mpsc::channel::<Result<Item, BadItem>>(64);
    let reader = tokio::task::spawn_blocking(move || {
        jobfile::read_jobs(input, |item| tx.blocking_send(item).is_ok());
    });
    let mut findings = Findings::default();
    while let Some(item) = rx.recv().await {
        let entry = match item {
            Ok(item) => checker.check(&item).await?,
            Err(bad) => unreadable(findings.jobs.len() as u64 + 1, &bad),
        };
        findings.push(entry);
    }
    let _ = reader.await;
    Ok(findings)
}

fn open_input(path: &Path) -> anyhow::Result<Box<dyn std::io::Read + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open {}; check the path", path.display()))?;
    Ok(Box::new(file))
}

/// Validates jobs against each data store's live state (the worker's type), loaded once and then
/// changed in memory only.
struct Checker {
    cache: DataStores,
    parse: ParseContext,
    graphs: HashMap<String, Result<Arc<LiveDataStore>, EntryError>>,
}

impl Checker {
    fn new(store: StoreClient, parse: ParseContext) -> Self {
        Self {
            // Loaded once per data store: a reload would drop the effects of earlier jobs.
            cache: DataStores::new(store, Duration::MAX),
            parse,
            graphs: HashMap::new(),
        }
    }

    /// One entry's findings; `Err` only for operational failures (store unreachable, auth refused).
    async fn check(&mut self, item: &Item) -> anyhow::Result<JobFindings> {
        let own_id = crate::jobfile::declared_job_id(&item.json);
        // A stable placeholder, so a job without an id does not get a random one.
        let ctx = self
            .parse
            .with_message_id(Some(&format!("#{}", item.index)));
        let job = match Job::parse(item.json.as_bytes(), &ctx) {
            Ok(job) => job,
            Err(e) => {
                let error = EntryError {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                };
                return Ok(failed_entry(
                    item.index,
                    item_line(item),
                    own_id,
                    None,
                    error,
                ));
            }
        };
        match self.graph(&job.datastore_id).await? {
            Ok(entry) => Ok(check_job(&entry, item, own_id, &job)),
            Err(error) => Ok(store_failed(item, own_id, &job, error)),
        }
    }

    /// The data store's graph, or why the job cannot be checked against it.
    async fn graph(
        &mut self,
        datastore: &str,
    ) -> anyhow::Result<Result<Arc<LiveDataStore>, EntryError>> {
        if let Some(found) = self.graphs.get(datastore) {
            return Ok(found.clone());
        }
        let loaded = match self.cache.get(datastore).await {
            Ok(entry) => Ok(entry),
            Err(error) => Err(job_level(datastore, error)?),
        };
        self.graphs.insert(datastore.to_owned(), loaded.clone());
        Ok(loaded)
    }
}

/// A missing data store or an unusable schema rejects the jobs naming it; anything else (network,
/// auth, 5xx) stops the dry run.
fn job_level(datastore: &str, error: LoadError) -> anyhow::Result<EntryError> {
    match &error {
        LoadError::Store(e @ (StoreError::NotFound { .. } | StoreError::InvalidSchema(_))) => {
            Ok(EntryError {
                // The worker's code, so that `dlq replay --code` finds what validate predicted;
                // the store's own code stays in the message.
                code: e.code().to_owned(),
                message: format!("data store {datastore:?}: {e}"),
            })
        }
        LoadError::Graph(e) => Ok(EntryError {
            code: e.code().to_owned(),
            message: format!("data store {datastore:?}: {error}"),
        }),
        LoadError::Store(_) => Err(anyhow::Error::new(error).context(format!(
            "reading data store {datastore:?} failed; check that [cxone].api_base is reachable and the credentials in [cxone.auth]"
        ))),
    }
}

fn item_line(item: &Item) -> Option<u64> {
    (item.line > 0).then_some(item.line)
}

fn failed_entry(
    index: u64,
    line: Option<u64>,
    job_id: Option<String>,
    job: Option<&Job>,
    error: EntryError,
) -> JobFindings {
    JobFindings {
        index,
        line,
        job_id,
        datastore_id: job.map(|j| j.datastore_id.clone()),
        atomic: job.map(|j| j.atomic),
        error: Some(error),
        operations: Vec::new(),
    }
}

/// An entry that could not be read as JSON; `recoverable` false means reading stopped there.
fn unreadable(index: u64, bad: &BadItem) -> JobFindings {
    let mut message = bad.message.clone();
    if !bad.recoverable {
        message.push_str("; the rest of the file was not read");
    }
    let error = EntryError {
        code: "invalid_job".to_owned(),
        message,
    };
    failed_entry(index, Some(bad.line).filter(|&l| l > 0), None, None, error)
}

/// Every operation of a job whose data store cannot be read is rejected with the store's code.
fn store_failed(item: &Item, own_id: Option<String>, job: &Job, error: EntryError) -> JobFindings {
    let mut entry = failed_entry(
        item.index,
        item_line(item),
        own_id,
        Some(job),
        error.clone(),
    );
    entry.operations = (0..job.operations.len())
        .map(|i| {
            op_base(
                job,
                i,
                OpFate::Rejected,
                Some(error.code.clone()),
                error.message.clone(),
            )
        })
        .collect();
    entry
}

/// Validates and plans `job` as the worker does, then applies the plan to the in-memory graph only.
fn check_job(
    live: &Arc<LiveDataStore>,
    item: &Item,
    own_id: Option<String>,
    job: &Job,
) -> JobFindings {
    // Jobs are checked one at a time, so nothing is ever pending: the check is always ready.
    let Check::Ready { verdict, plan, .. } = live.check(job) else {
        let error = EntryError {
            code: "graph_outdated".to_owned(),
            message: "the data store's graph could not be checked against its schema".to_owned(),
        };
        return failed_entry(item.index, item_line(item), own_id, Some(job), error);
    };
    let operations = (0..job.operations.len())
        .map(|i| op_findings(job, i, &verdict, &plan))
        .collect();
    apply_in_memory(live, &plan);
    JobFindings {
        index: item.index,
        line: item_line(item),
        job_id: own_id,
        datastore_id: Some(job.datastore_id.clone()),
        atomic: Some(job.atomic),
        error: None,
        operations,
    }
}

fn op_findings(job: &Job, i: usize, verdict: &Verdict, plan: &Plan) -> OpFindings {
    match verdict.operations.get(i) {
        Some(OpVerdict::Rejected(v)) => op_base(
            job,
            i,
            OpFate::Rejected,
            Some(v.code.code().to_owned()),
            v.message.clone(),
        ),
        Some(OpVerdict::Accepted) => accepted(job, i, plan),
        _ => {
            let why = verdict
                .first_violation()
                .map(|v| format!(" ({})", v.code.code()))
                .unwrap_or_default();
            let reason = format!("valid, but the atomic job is rejected{why}: nothing is written");
            op_base(job, i, OpFate::Blocked, None, reason)
        }
    }
}

/// Apply or no-op: whether the field's value after the job differs from what is stored.
fn accepted(job: &Job, i: usize, plan: &Plan) -> OpFindings {
    let field = job.operations.get(i).map(|op| op.field.as_str());
    let values = plan
        .patches
        .iter()
        .find(|p| p.operation_indexes.contains(&i))
        .and_then(|p| Some((find(&p.previous, field?)?, find(&p.fields, field?)?)));
    match values {
        Some((before, after)) if before == after => {
            let reason = format!("already stored ({})", describe(after));
            op_base(job, i, OpFate::NoOp, None, reason)
        }
        Some((before, after)) => {
            let reason = format!("{} → {}", describe(before), describe(after));
            op_base(job, i, OpFate::Apply, None, reason)
        }
        None => op_base(job, i, OpFate::Apply, None, "valid".to_owned()),
    }
}

fn find<'a>(values: &'a [FieldValue], field: &str) -> Option<&'a FieldValue> {
    values.iter().find(|v| v.field.as_str() == field)
}

fn describe(value: &FieldValue) -> String {
    format!(
        "{} children, cascade {}",
        value.ids.len(),
        value.cascade.as_str()
    )
}

fn op_base(
    job: &Job,
    i: usize,
    verdict: OpFate,
    code: Option<String>,
    reason: String,
) -> OpFindings {
    let op = job.operations.get(i);
    OpFindings {
        index: i,
        parent_id: op.map(|o| o.parent.to_string()).unwrap_or_default(),
        relationship_field: op.map(|o| o.field.to_string()).unwrap_or_default(),
        mode: op.map(|o| o.mode.as_str()).unwrap_or("replace"),
        child_ids: op
            .map(|o| o.children.iter().map(|c| c.to_string()).collect())
            .unwrap_or_default(),
        verdict,
        code,
        reason,
    }
}

/// What the worker's PATCHes would do to the graph, done to the in-memory copy only, so later jobs
/// of the file are checked against it.
fn apply_in_memory(live: &LiveDataStore, plan: &Plan) {
    live.with_graph(|graph| apply_plan(graph, plan));
}

fn apply_plan(graph: &mut crate::graph::Graph, plan: &Plan) {
    for patch in &plan.patches {
        let version = patch.expected_version.saturating_add(1);
        for value in &patch.fields {
            let ids: Vec<&str> = value.ids.iter().map(|id| id.as_str()).collect();
            // The planner only names present records and known fields, so this cannot fail.
            let _ = graph.apply_patch(
                patch.parent.as_str(),
                value.field.as_str(),
                &ids,
                value.cascade,
                version,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_entry_says_whether_reading_stopped() {
        let bad = BadItem {
            line: 4,
            message: "not valid JSON".into(),
            recoverable: false,
        };
        let entry = unreadable(2, &bad);
        let error = entry.error.unwrap();
        assert_eq!(error.code, "invalid_job");
        assert!(error.message.ends_with("the rest of the file was not read"));
        assert_eq!(entry.line, Some(4));
    }

    #[test]
    fn a_missing_data_store_rejects_the_job_with_the_workers_code_and_the_stores_in_the_message() {
        let body = crate::store::ErrorBody {
            error: Some("datastore_not_found".into()),
            description: None,
        };
        let error = job_level("nope", LoadError::Store(StoreError::NotFound { body })).unwrap();
        assert_eq!(error.code, "not_found");
        assert!(
            error.message.contains("datastore_not_found"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unreachable_store_stops_the_dry_run() {
        let e = StoreError::Connection {
            attempts: 1,
            message: "refused".into(),
        };
        let error = job_level("accounts", LoadError::Store(e)).unwrap_err();
        assert!(format!("{error:#}").contains("api_base"), "{error:#}");
    }
}
