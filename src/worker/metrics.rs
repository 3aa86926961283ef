//! The worker's metrics catalogue: every series' help text (Prometheus `# HELP`), and the counters
//! that exist at 0 from the start, so an alert on their increase sees the first one after a restart.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Help texts of the worker's series (the README's metrics table says more).
const COUNTERS: &[(&str, &str)] = &[
    (
        "cxrel_jobs_total",
        "Jobs settled, by outcome: completed, retried, dead_lettered.",
    ),
    (
        "cxrel_operations_total",
        "Operations by result: applied, rejected, failed, rolled_back, unprocessed.",
    ),
    (
        "cxrel_retries_total",
        "Jobs sent to a retry hold queue, by error code.",
    ),
    (
        "cxrel_dead_letters_total",
        "Jobs dead-lettered, by error code.",
    ),
    (
        "cxrel_ack_frames_total",
        "Acknowledgement frames sent to the broker, by kind: multiple, single, requeue.",
    ),
    (
        "cxrel_store_requests_total",
        "Data-store requests, by route and HTTP status.",
    ),
    (
        "cxrel_store_throttled_total",
        "429 answers from the data store.",
    ),
    (
        "cxrel_store_closed_probes_total",
        "429s while the data store refused everything since the last cut (probes).",
    ),
    (
        "cxrel_patch_read_backs_total",
        "PATCHes whose outcome was unknown and was read back.",
    ),
    (
        "cxrel_confirm_reads_total",
        "Reads of the records a rejection rests on, before rejecting.",
    ),
    (
        "cxrel_confirmations_total",
        "Rejections confirmed against a fresh read.",
    ),
    (
        "cxrel_intents_left_behind_total",
        "Write intents a dead replica left, restored when this one became active.",
    ),
    (
        "cxrel_intent_restores_total",
        "Parents of left-behind write intents, by outcome: undone, untouched, blocked, failed.",
    ),
    (
        "cxrel_webhook_deliveries_total",
        "Webhook deliveries, by outcome: delivered, dead, queue_full.",
    ),
];

const GAUGES: &[(&str, &str)] = &[
    ("cxrel_jobs_in_flight", "Jobs being processed now."),
    (
        "cxrel_store_rate_limit_rps",
        "The rate budget's current effective rate (0 = not paced).",
    ),
    (
        "cxrel_graph_records",
        "Records in each cached relationship graph, by data store.",
    ),
    (
        "cxrel_reserved_entries",
        "Relationship changes reserved by jobs in flight, by data store.",
    ),
];

/// The series with a fixed set of labels, at 0 until they first move.
const ZEROED: &[(&str, &str, &[&str])] = &[
    (
        "cxrel_jobs_total",
        "outcome",
        &["completed", "retried", "dead_lettered"],
    ),
    (
        "cxrel_webhook_deliveries_total",
        "outcome",
        &["delivered", "dead", "queue_full"],
    ),
];

/// Describes every series and creates the fixed ones at 0; call once the recorder is installed.
pub fn describe() {
    for (name, help) in COUNTERS {
        describe_counter!(*name, *help);
    }
    for (name, help) in GAUGES {
        describe_gauge!(*name, *help);
    }
    describe_histogram!(
        "cxrel_job_duration_seconds",
        Unit::Seconds,
        "Time from delivery to outcome, per job."
    );
    describe_histogram!(
        "cxrel_store_request_duration_seconds",
        Unit::Seconds,
        "Data-store request latency, by route."
    );
    describe_histogram!(
        "cxrel_store_limiter_wait_seconds",
        Unit::Seconds,
        "Time requests waited for the rate budget."
    );
    for (name, label, values) in ZEROED {
        for value in *values {
            // increment(0), not absolute(0): tests run several workers in one process.
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
    metrics::counter!("cxrel_store_throttled_total").increment(0);
    metrics::gauge!("cxrel_jobs_in_flight").increment(0.0);
}
