//! What `cxrel validate` found, and its two renderings: a plain-text table and a JSON document.

use std::fmt::Write as _;

use serde::Serialize;

/// The fate one operation would meet in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpFate {
    /// Valid and changes the stored value: the worker would PATCH.
    Apply,
    /// Valid, but the stored value already is the result: the worker would send nothing.
    NoOp,
    /// Breaks a rule of SPEC §2 (or its job cannot be validated at all).
    Rejected,
    /// Valid on its own, but its atomic job is rejected because of another operation.
    Blocked,
}

impl OpFate {
    fn label(self) -> &'static str {
        match self {
            OpFate::Apply => "apply",
            OpFate::NoOp => "no-op",
            OpFate::Rejected => "rejected",
            OpFate::Blocked => "blocked",
        }
    }
}

/// One operation of a job and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpFindings {
    pub index: usize,
    pub parent_id: String,
    pub relationship_field: String,
    pub mode: &'static str,
    pub child_ids: Vec<String>,
    pub verdict: OpFate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why it is rejected or blocked, or what it would change.
    pub reason: String,
}

/// A job-wide failure: the entry did not parse, or its data store cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryError {
    pub code: String,
    pub message: String,
}

/// One entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobFindings {
    /// 1-based position in the file.
    pub index: u64,
    /// Line of the entry when known (JSON Lines, or where reading failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The job's own `job_id`; `null` when the file gives none (the worker would assign one).
    pub job_id: Option<String>,
    pub datastore_id: Option<String>,
    pub atomic: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EntryError>,
    pub operations: Vec<OpFindings>,
}

impl JobFindings {
    /// The job as the table names it: its id, else its position.
    fn label(&self) -> String {
        match &self.job_id {
            Some(id) => id.clone(),
            None => format!("#{}", self.index),
        }
    }

    /// Whether anything in this entry would be refused.
    pub fn has_rejections(&self) -> bool {
        self.error.is_some()
            || self
                .operations
                .iter()
                .any(|o| matches!(o.verdict, OpFate::Rejected | OpFate::Blocked))
    }
}

/// Counts over the whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub jobs: u64,
    pub operations: u64,
    pub apply: u64,
    pub no_op: u64,
    pub rejected: u64,
    pub blocked: u64,
    /// Entries rejected as a whole (unparseable, or data store unreadable).
    pub job_errors: u64,
    /// Jobs with anything rejected, blocked or a job-wide error.
    pub rejected_jobs: u64,
}

/// The whole dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    pub jobs: Vec<JobFindings>,
    pub summary: Totals,
}

impl Findings {
    pub fn push(&mut self, job: JobFindings) {
        let s = &mut self.summary;
        s.jobs += 1;
        s.job_errors += u64::from(job.error.is_some());
        s.rejected_jobs += u64::from(job.has_rejections());
        for op in &job.operations {
            s.operations += 1;
            match op.verdict {
                OpFate::Apply => s.apply += 1,
                OpFate::NoOp => s.no_op += 1,
                OpFate::Rejected => s.rejected += 1,
                OpFate::Blocked => s.blocked += 1,
            }
        }
        self.jobs.push(job);
    }

    /// Exit code of SPEC §9: 1 when anything would be rejected, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.summary.rejected_jobs > 0)
    }

    /// The JSON document of `--output json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One row per operation (one per failed entry), columns padded to the widest cell, then the
    /// summary line.
    pub fn to_table(&self) -> String {
        let mut rows = vec![HEADER.map(str::to_owned)];
        rows.extend(self.jobs.iter().flat_map(job_rows));
        let mut out = String::new();
        if rows.len() > 1 {
            write_aligned(&mut out, &rows);
        }
        out.push_str(&self.summary_line());
        out.push('\n');
        out
    }

    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        format!(
            "{} jobs, {} operations: {} would apply, {} no-op, {} rejected, {} blocked; {} jobs with rejections ({} rejected before validation)",
            s.jobs,
            s.operations,
            s.apply,
            s.no_op,
            s.rejected,
            s.blocked,
            s.rejected_jobs,
            s.job_errors
        )
    }
}

const HEADER: [&str; 7] = ["JOB", "OP", "PARENT", "FIELD", "VERDICT", "CODE", "REASON"];

fn job_rows(job: &JobFindings) -> Vec<[String; 7]> {
    let label = job.label();
    let mut rows: Vec<[String; 7]> = Vec::new();
    if let Some(error) = &job.error
        && job.operations.is_empty()
    {
        let at = job.line.map(|l| format!("line {l}: ")).unwrap_or_default();
        rows.push([
            label.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            OpFate::Rejected.label().into(),
            error.code.clone(),
            format!("{at}{}", one_line(&error.message)),
        ]);
    }
    for op in &job.operations {
        rows.push([
            label.clone(),
            op.index.to_string(),
            op.parent_id.clone(),
            op.relationship_field.clone(),
            op.verdict.label().into(),
            op.code.clone().unwrap_or_else(|| "-".into()),
            one_line(&op.reason),
        ]);
    }
    rows
}

/// Keeps a table row on one line whatever a message contains.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn write_aligned(out: &mut String, rows: &[[String; 7]]) {
    let mut widths = [0usize; 7];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: usize, verdict: OpFate, code: Option<&str>) -> OpFindings {
        OpFindings {
            index,
            parent_id: "p-1".into(),
            relationship_field: "parent_child_link".into(),
            mode: "replace",
            child_ids: vec!["c-1".into()],
            verdict,
            code: code.map(str::to_owned),
            reason: "because\nof things".into(),
        }
    }

    fn job(index: u64, id: Option<&str>, ops: Vec<OpFindings>) -> JobFindings {
        JobFindings {
            index,
            line: None,
            job_id: id.map(str::to_owned),
            datastore_id: Some("accounts".into()),
            atomic: Some(true),
            error: None,
            operations: ops,
        }
    }

    fn unreadable(index: u64, line: u64) -> JobFindings {
        JobFindings {
            line: Some(line),
            error: Some(EntryError {
                code: "invalid_job".into(),
                message: "not valid JSON".into(),
            }),
            datastore_id: None,
            atomic: None,
            ..job(index, None, vec![])
        }
    }

    #[test]
    fn the_table_has_one_aligned_row_per_operation_and_a_summary() {
        let mut findings = Findings::default();
        findings.push(job(1, Some("job-a"), vec![op(0, OpFate::Apply, None)]));
        findings.push(job(
            2,
            None,
            vec![
                op(0, OpFate::Rejected, Some("cycle_detected")),
                op(1, OpFate::Blocked, None),
            ],
        ));
        let table = findings.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("JOB    OP  PARENT"), "{table}");
        assert!(lines[1].starts_with("job-a  0   p-1"), "{table}");
        assert!(lines[2].contains("#2") && lines[2].contains("cycle_detected"));
        assert!(
            lines[2].ends_with("because of things"),
            "newlines flattened: {table}"
        );
        let verdict_col = lines[0].find("VERDICT").unwrap();
        assert_eq!(&lines[3][verdict_col..verdict_col + 7], "blocked");
        assert_eq!(
            lines[4],
            "2 jobs, 3 operations: 1 would apply, 0 no-op, 1 rejected, 1 blocked; 1 jobs with rejections (0 rejected before validation)"
        );
    }

    #[test]
    fn an_unreadable_entry_is_one_rejected_row_with_its_line() {
        let mut findings = Findings::default();
        findings.push(unreadable(3, 7));
        let table = findings.to_table();
        assert!(table.contains("#3"), "{table}");
        assert!(table.contains("invalid_job"), "{table}");
        assert!(table.contains("line 7: not valid JSON"), "{table}");
        assert_eq!(findings.summary.job_errors, 1);
        assert_eq!(findings.exit_code(), 1);
    }

    #[test]
    fn the_exit_code_is_zero_only_without_rejections() {
        let mut findings = Findings::default();
        findings.push(job(1, None, vec![op(0, OpFate::NoOp, None)]));
        assert_eq!(findings.exit_code(), 0);
        findings.push(job(2, None, vec![op(0, OpFate::Blocked, None)]));
        assert_eq!(findings.exit_code(), 1);
    }

    #[test]
    fn the_json_document_lists_jobs_operations_and_the_summary() {
        let mut findings = Findings::default();
        findings.push(job(
            1,
            Some("j"),
            vec![
                op(0, OpFate::NoOp, None),
                op(1, OpFate::Rejected, Some("max_depth_exceeded")),
            ],
        ));
        findings.push(unreadable(2, 2));
        let doc: serde_json::Value = serde_json::from_str(&findings.to_json()).unwrap();
        assert_eq!(doc["jobs"][0]["job_id"], "j");
        assert_eq!(doc["jobs"][0]["operations"][0]["verdict"], "no_op");
        assert!(doc["jobs"][0]["operations"][0].get("code").is_none());
        assert_eq!(
            doc["jobs"][0]["operations"][1]["code"],
            "max_depth_exceeded"
        );
        assert_eq!(doc["jobs"][1]["job_id"], serde_json::Value::Null);
        assert_eq!(doc["jobs"][1]["error"]["code"], "invalid_job");
        assert_eq!(doc["jobs"][1]["line"], 2);
        assert_eq!(doc["summary"]["operations"], 2);
        assert_eq!(doc["summary"]["rejected_jobs"], 2);
    }

    #[test]
    fn an_empty_file_renders_only_the_summary() {
        let findings = Findings::default();
        assert_eq!(findings.to_table().lines().count(), 1);
        assert_eq!(findings.exit_code(), 0);
    }
}
