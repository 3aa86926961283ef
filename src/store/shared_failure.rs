//! A failed single-flight attempt (a token fetch, a schema fetch, a graph load) kept for the
//! tasks that waited on it: they get its error instead of each trying again in turn, one after
//! another (during an outage, one job ended every 2 s with 64 in flight).

use std::time::{Duration, Instant};

/// A failure and when it was recorded.
pub(crate) type Failure<E> = (Instant, E);

/// The error of `failed` when it was recorded after this task `asked` (the attempt it waited
/// on), or less than `hold(error)` ago (a cool-down shared with later askers too).
pub(crate) fn waited_on<E: Clone>(
    failed: Option<&Failure<E>>,
    asked: Instant,
    hold: impl FnOnce(&E) -> Duration,
) -> Option<E> {
    let (at, error) = failed?;
    (*at >= asked || at.elapsed() < hold(error)).then(|| error.clone())
}

/// What to keep after an attempt: its error, when `shared` says it concerns the waiters too;
/// nothing after a success (or an error that was its caller's alone).
pub(crate) fn kept<T, E: Clone>(
    result: &Result<T, E>,
    shared: impl FnOnce(&E) -> bool,
) -> Option<Failure<E>> {
    match result {
        Err(error) if shared(error) => Some((Instant::now(), error.clone())),
        _ => None,
    }
}

/// No cool-down: only the tasks that waited on the attempt share its failure.
pub(crate) fn no_hold<E>(_: &E) -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_recorded_after_a_task_asked_is_its_answer_and_an_older_one_is_not() {
        let asked = Instant::now();
        let recorded = kept(&Err::<(), _>("down"), |_| true);
        assert_eq!(waited_on(recorded.as_ref(), asked, no_hold), Some("down"));
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(waited_on(recorded.as_ref(), later, no_hold), None);
        let held = |_: &&str| Duration::from_secs(60);
        assert_eq!(waited_on(recorded.as_ref(), later, held), Some("down"));
        assert_eq!(kept(&Ok::<(), &str>(()), |_| true), None);
        assert_eq!(kept(&Err::<(), _>("mine"), |_| false), None);
    }
}
