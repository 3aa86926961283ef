//! A failed single-flight attempt (a token fetch, a schema fetch, a graph load) kept for the
//! tasks that waited on it: they get its error instead of each trying again in turn, one after
//! another (during an outage, one job ended every 2 s with 64 in flight).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Failures kept per key at most (see [`FailureMap`]).
const MAX_KEYS: usize = 1024;

/// Below [`MAX_KEYS`] nothing is dropped; at it, failures older than this go first.
const KEEP_FOR: Duration = Duration::from_secs(60);

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

/// The last failed attempt per key (a schema fetch per data store id). Bounded, because the keys
/// come from job bodies: a producer sending ever new unknown data store ids grew the worker by
/// about 350 bytes per id, for good (found by a soak review). A failure dropped at the bound costs
/// a task that waited on it one attempt of its own, nothing more.
pub(crate) struct FailureMap<E> {
    failures: HashMap<String, Failure<E>>,
}

impl<E> Default for FailureMap<E> {
    fn default() -> Self {
        Self {
            failures: HashMap::new(),
        }
    }
}

impl<E> FailureMap<E> {
    pub(crate) fn get(&self, key: &str) -> Option<&Failure<E>> {
        self.failures.get(key)
    }

    /// Keeps the error of `result` for `key` when `shared` says it concerns the waiters too (see
    /// [`kept`]); a success forgets the key's failure.
    pub(crate) fn record<T>(
        &mut self,
        key: &str,
        result: &Result<T, E>,
        shared: impl FnOnce(&E) -> bool,
    ) where
        E: Clone,
    {
        match kept(result, shared) {
            Some(failure) => self.insert(key, failure),
            None if result.is_ok() => {
                self.failures.remove(key);
            }
            None => {}
        }
    }

    fn insert(&mut self, key: &str, failure: Failure<E>) {
        self.make_room(key);
        self.failures.insert(key.to_owned(), failure);
    }

    fn make_room(&mut self, key: &str) {
        if self.failures.len() < MAX_KEYS || self.failures.contains_key(key) {
            return;
        }
        self.failures.retain(|_, (at, _)| at.elapsed() < KEEP_FOR);
        if self.failures.len() >= MAX_KEYS {
            // A flood of failing keys within a minute: none is worth more than another.
            self.failures.clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures.len()
    }
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

    #[test]
    fn failures_of_ever_new_keys_stay_within_the_bound_and_a_success_forgets_its_key() {
        let mut map = FailureMap::default();
        for n in 0..10 * MAX_KEYS {
            map.record(&format!("ds-{n}"), &Err::<(), _>("not_found"), |_| true);
            assert!(map.len() <= MAX_KEYS);
        }
        let last = format!("ds-{}", 10 * MAX_KEYS - 1);
        assert!(map.get(&last).is_some(), "the newest failure is kept");
        map.record(&last, &Ok(()), |_| true);
        assert!(map.get(&last).is_none());
    }

    #[test]
    fn at_the_bound_failures_older_than_a_minute_go_first() {
        let mut map = FailureMap::default();
        let Some(old) = Instant::now().checked_sub(KEEP_FOR + Duration::from_secs(1)) else {
            return; // a machine up for less than a minute has no such past
        };
        for n in 0..MAX_KEYS - 1 {
            map.insert(&format!("old-{n}"), (old, "down"));
        }
        map.record("recent", &Err::<(), _>("down"), |_| true);
        map.record("newest", &Err::<(), _>("down"), |_| true);
        assert_eq!(map.len(), 2);
        assert!(map.get("recent").is_some() && map.get("newest").is_some());
    }
}
