//! In-process exclusion by record, in delivery order: each delivery draws a [`Turn`] as it
//! arrives, and its job takes every (data store, parent) key it will write, all at once, only when
//! no earlier turn still wants one of them (or has not said yet which it wants). So two jobs
//! touching the same parent never run concurrently in this process, and they run in the order
//! the queue delivered them (a "set [X]", "add Y", "remove Y" published in that order ends with
//! [X]). Turns are granted in order, so acquisition cannot deadlock. Across processes, If-Match on
//! every PATCH protects instead.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

#[derive(Default, Clone)]
pub struct KeyLocks {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    released: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Turns drawn and not yet granted or dropped: the keys they want, `None` until they say.
    waiting: BTreeMap<u64, Option<Vec<String>>>,
    held: HashSet<String>,
}

/// A delivery's place in line; dropping it unused gives the place up.
pub struct Turn {
    inner: Arc<Inner>,
    seq: u64,
}

/// Held keys; dropping it releases them and wakes waiters.
pub struct KeyGuard {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl KeyLocks {
    /// The next place in line: draw it in delivery order.
    pub fn turn(&self) -> Turn {
        let mut state = self.inner.lock();
        let seq = state.next;
        state.next += 1;
        state.waiting.insert(seq, None);
        Turn {
            inner: self.inner.clone(),
            seq,
        }
    }
}

impl Turn {
    /// Waits until none of `keys` is held or wanted by an earlier turn, then holds all of them.
    pub async fn acquire(self, keys: Vec<String>) -> KeyGuard {
        self.inner
            .lock()
            .waiting
            .insert(self.seq, Some(keys.clone()));
        // Earlier turns may have waited for this one to say what it wants.
        self.inner.released.notify_waiters();
        loop {
            let notified = self.inner.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take(&keys) {
                return KeyGuard {
                    inner: self.inner.clone(),
                    keys,
                };
            }
            notified.await;
        }
    }

    fn try_take(&self, keys: &[String]) -> bool {
        let mut state = self.inner.lock();
        let blocked = keys.iter().any(|k| state.held.contains(k))
            || state.waiting.range(..self.seq).any(|(_, wanted)| {
                wanted
                    .as_ref()
                    .is_none_or(|w| w.iter().any(|k| keys.contains(k)))
            });
        if blocked {
            return false;
        }
        state.waiting.remove(&self.seq);
        state.held.extend(keys.iter().cloned());
        true
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn").field("seq", &self.seq).finish()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Granted turns left the line already; a turn dropped unused leaves it now.
        if self.inner.lock().waiting.remove(&self.seq).is_some() {
            self.inner.released.notify_waiters();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        {
            let mut state = self.inner.lock();
            for key in &self.keys {
                state.held.remove(key);
            }
        }
        self.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_second_job_on_the_same_parent_waits_for_the_first() {
        let locks = KeyLocks::default();
        let first = locks.turn().acquire(keys(&["ds/a", "ds/b"])).await;
        let turn = locks.turn();
        let waiter = tokio::spawn(async move { turn.acquire(keys(&["ds/b"])).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the overlapping job must wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .unwrap();
    }

    #[tokio::test]
    async fn jobs_on_different_parents_run_together() {
        let locks = KeyLocks::default();
        let _a = locks.turn().acquire(keys(&["ds/a"])).await;
        let b = tokio::time::timeout(
            Duration::from_millis(100),
            locks.turn().acquire(keys(&["ds/b"])),
        );
        assert!(b.await.is_ok());
    }

    #[tokio::test]
    async fn a_later_delivery_on_the_same_parent_waits_for_an_earlier_one_that_asks_second() {
        let locks = KeyLocks::default();
        let (earlier, later) = (locks.turn(), locks.turn());
        let other = locks.turn();
        let later = tokio::spawn(async move { later.acquire(keys(&["ds/a"])).await });
        // Until the earlier turn says which keys it wants, any parent might be one of them.
        let other = tokio::spawn(async move { other.acquire(keys(&["ds/z"])).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!later.is_finished(), "waits for the earlier turn to say");
        assert!(!other.is_finished());
        let first = earlier.acquire(keys(&["ds/a"])).await;
        let other = tokio::time::timeout(Duration::from_secs(1), other).await;
        assert!(other.is_ok(), "a parent no earlier turn wants goes on");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !later.is_finished(),
            "the same parent waits for the earlier job"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), later)
            .await
            .expect("released")
            .unwrap();
    }

    #[tokio::test]
    async fn a_turn_given_up_unused_holds_nobody_up() {
        let locks = KeyLocks::default();
        let unused = locks.turn();
        let later = locks.turn();
        let later = tokio::spawn(async move { later.acquire(keys(&["ds/a"])).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!later.is_finished());
        drop(unused);
        tokio::time::timeout(Duration::from_secs(1), later)
            .await
            .expect("went on")
            .unwrap();
    }
}
