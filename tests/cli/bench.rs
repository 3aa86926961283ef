//! `cxrel bench` runs end to end on a small batch and reports consistent figures as JSON. Only
//! counts are asserted; timings are measured, never asserted (these machines are noisy).

use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_bench_run_reports_every_job_once_with_one_patch_each() {
    let out = Command::new(env!("CARGO_BIN_EXE_cxrel"))
        .args([
            "bench",
            "--jobs",
            "60",
            "--ops-per-job",
            "2",
            "--output",
            "json",
        ])
        .env_remove("CXREL_ENV")
        .env("CXREL__LOG__LEVEL", "warn")
        .output()
        .expect("run cxrel bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["jobs"], 60);
    assert_eq!(report["dead_lettered"], 0);
    assert_eq!(report["throttled_429"], 0);
    // 120 PATCHes plus the schema and one page of 240 records.
    assert_eq!(report["store_requests"], 122, "{report}");
    for key in [
        "jobs_per_second",
        "operations_per_second",
        "latency_p50_ms",
        "latency_p99_ms",
        "broker_ceiling_messages_per_second",
        "ratio_to_broker_ceiling",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report}"
        );
    }
    let rss = report["worker_peak_rss_mib"].as_array().expect("rss list");
    assert_eq!(rss.len(), 1);
    assert!(rss[0].as_f64().is_some_and(|m| m > 1.0), "{report}");
}
