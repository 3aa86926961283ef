//! In-process exclusion by record: a job takes every (data store, parent) key it will write, all at
//! once, so two jobs touching the same parent never run concurrently in this process. All-or-nothing
//! acquisition cannot deadlock. Across processes, If-Match on every PATCH protects instead.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default, Clone)]
pub struct KeyLocks {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    held: Mutex<HashSet<String>>,
    released: Notify,
}

/// Held keys; dropping it releases them and wakes waiters.
pub struct KeyGuard {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl KeyLocks {
    /// Waits until none of `keys` is held, then holds all of them.
    pub async fn acquire(&self, keys: Vec<String>) -> KeyGuard {
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
        let Ok(mut held) = self.inner.held.lock() else {
            return false;
        };
        if keys.iter().any(|k| held.contains(k)) {
            return false;
        }
        held.extend(keys.iter().cloned());
        true
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Ok(mut held) = self.inner.held.lock() {
            for key in &self.keys {
                held.remove(key);
            }
        }
        self.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_job_on_the_same_parent_waits_for_the_first() {
        let locks = KeyLocks::default();
        let first = locks.acquire(vec!["ds/a".into(), "ds/b".into()]).await;
        let locks2 = locks.clone();
        let waiter = tokio::spawn(async move { locks2.acquire(vec!["ds/b".into()]).await });
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
        let _a = locks.acquire(vec!["ds/a".into()]).await;
        let b = tokio::time::timeout(
            Duration::from_millis(100),
            locks.acquire(vec!["ds/b".into()]),
        );
        assert!(b.await.is_ok());
    }
}
