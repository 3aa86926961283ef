//! The validation engine (parse + validate + plan, no I/O) under property tests and fuzzing.

use proptest::test_runner::{Config, FileFailurePersistence};

mod fuzz;
mod props;

/// A suite's proptest settings: `cases` per test, failing cases saved next to the suite's source
/// (`props.rs` → `props.proptest-regressions`) and replayed first. Proptest's default would put
/// them in `tests/proptest-regressions/` once a `main.rs` sits beside the suite.
fn proptest_config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}
