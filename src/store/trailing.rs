//! Answers counted over the trailing second, in 20 slots of 50 ms: what the server admitted and
//! refused lately, whatever its limiter's memory (a bucket forgets in `burst / rate`, a window in
//! a whole second). `budget.lua` keeps the same slots on the server for the shared budget.

use std::time::{Duration, Instant};

/// Slots in the trailing second.
pub const SLOTS: usize = 20;
/// One slot's length.
pub const SLOT: Duration = Duration::from_millis(50);

/// Admitted and refused answers per slot.
#[derive(Debug, Clone)]
pub struct Trailing {
    origin: Instant,
    /// Index (from `origin`) of the newest slot written.
    newest: u64,
    admitted: [u64; SLOTS],
    refused: [u64; SLOTS],
}

/// The sums over the trailing second and the time they cover.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub admitted: u64,
    pub refused: u64,
    pub span: Duration,
}

impl Trailing {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            newest: 0,
            admitted: [0; SLOTS],
            refused: [0; SLOTS],
        }
    }

    pub fn admit(&mut self, now: Instant) {
        let i = self.advance(now);
        self.admitted[i] += 1;
    }

    pub fn refuse(&mut self, now: Instant) {
        let i = self.advance(now);
        self.refused[i] += 1;
    }

    /// The sums over the slots still in the trailing second at `now`; the span runs from the
    /// oldest slot's start (or `origin`, if later) to `now`.
    pub fn window(&mut self, now: Instant) -> Window {
        self.advance(now);
        let first = self.newest.saturating_sub(SLOTS as u64 - 1);
        let start = self.origin + SLOT * u32::try_from(first).unwrap_or(u32::MAX);
        Window {
            admitted: self.admitted.iter().sum(),
            refused: self.refused.iter().sum(),
            span: now.saturating_duration_since(start),
        }
    }

    /// Answers (admitted and refused) in the last `n` slots up to `now`'s, without moving the
    /// window (slots not written since they passed count as empty).
    pub fn recent(&self, now: Instant, n: usize) -> u64 {
        let index =
            (now.saturating_duration_since(self.origin).as_millis() / SLOT.as_millis()) as u64;
        (0..n.min(SLOTS) as u64)
            .filter_map(|k| index.checked_sub(k))
            .filter(|&i| i <= self.newest && self.newest - i < SLOTS as u64)
            .map(|i| {
                let p = (i % SLOTS as u64) as usize;
                self.admitted[p] + self.refused[p]
            })
            .sum()
    }

    /// Moves to the slot of `now`, clearing the slots it passes; returns its position.
    fn advance(&mut self, now: Instant) -> usize {
        let index =
            (now.saturating_duration_since(self.origin).as_millis() / SLOT.as_millis()) as u64;
        if index > self.newest {
            let passed = (index - self.newest).min(SLOTS as u64);
            for k in 1..=passed {
                let i = ((self.newest + k) % SLOTS as u64) as usize;
                self.admitted[i] = 0;
                self.refused[i] = 0;
            }
            self.newest = index;
        }
        (self.newest % SLOTS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_window_holds_the_last_second_and_forgets_older_answers() {
        let t0 = Instant::now();
        let mut t = Trailing::new(t0);
        for i in 0..100 {
            t.admit(t0 + ms(i * 10));
        }
        t.refuse(t0 + ms(995));
        let w = t.window(t0 + ms(999));
        assert_eq!((w.admitted, w.refused), (100, 1));
        assert_eq!(w.span, ms(999));
        // Half a second later the first half has gone (slot by slot).
        let w = t.window(t0 + ms(1499));
        assert_eq!((w.admitted, w.refused), (50, 1));
        assert_eq!(w.span, ms(1499 - 500));
        // Long after, nothing.
        let w = t.window(t0 + ms(5000));
        assert_eq!((w.admitted, w.refused), (0, 0));
    }
}
