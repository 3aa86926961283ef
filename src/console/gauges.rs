//! Dead-letter gauges on the console's `/metrics`: depth, and count and oldest age per error code,
//! set from each read of the dead queue. Codes that emptied are set to zero, not left stale.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::dlq::Summary;

/// Codes seen in earlier reads, so a code that emptied reads 0.
static KNOWN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Help texts of the console's series; call once the recorder is installed.
pub fn describe() {
    metrics::describe_gauge!(
        "cxrel_dead_letters_depth",
        "Messages in the dead queue at the last read."
    );
    metrics::describe_gauge!(
        "cxrel_dead_letters",
        "Dead letters at the last read, by error code."
    );
    metrics::describe_gauge!(
        "cxrel_dead_letters_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest dead letter at the last read, by error code."
    );
}

pub fn record(summary: &Summary) {
    metrics::gauge!("cxrel_dead_letters_depth").set(f64::from(summary.depth));
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    for code in known.iter() {
        if !summary.by_code.iter().any(|g| &g.key == code) {
            metrics::gauge!("cxrel_dead_letters", "code" => code.clone()).set(0.0);
            metrics::gauge!("cxrel_dead_letters_oldest_age_seconds", "code" => code.clone())
                .set(0.0);
        }
    }
    for group in &summary.by_code {
        known.insert(group.key.clone());
        metrics::gauge!("cxrel_dead_letters", "code" => group.key.clone()).set(group.count as f64);
        let age = group.oldest_age_seconds.unwrap_or(0) as f64;
        metrics::gauge!("cxrel_dead_letters_oldest_age_seconds", "code" => group.key.clone())
            .set(age);
    }
}
