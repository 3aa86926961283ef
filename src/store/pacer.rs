//! GCRA with reservations at a rate that may change on every request: each reservation advances
//! the theoretical arrival time (TAT) by `1/rate` at the rate of that moment and says when the
//! request may go, allowing `burst` at once. The Redis script `budget.lua` does the same on the
//! server.
//!
//! governor's quota is fixed at construction; an adaptive rate that moves a little every few
//! milliseconds would need a new limiter each time, and each new limiter costs up to one
//! interval. A cut ([`Pacer::reset`]) drops the reservations made at the old rate (their holders
//! see a new generation and reserve again) and leaves no burst.
//!
//! Reservations reach at most [`HORIZON`] ahead: a caller beyond it is told to come back later
//! instead. Otherwise, at a low rate, every waiting task would hold a slot far in the future, and
//! a rate that rises (a slow start doubling every 100 ms) would reach the queue only seconds later.

use std::time::{Duration, Instant};

/// How far ahead reservations reach.
pub const HORIZON: Duration = Duration::from_millis(100);

/// A reservation: send at `at`, unless the generation changed meanwhile (then reserve again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub at: Instant,
    pub generation: u64,
}

/// The answer to a reservation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Slot(Slot),
    /// The queue reaches past the horizon: ask again at this instant (plus a little jitter, so
    /// the waiters do not all come back at once).
    Later(Instant),
}

#[derive(Debug, Clone)]
pub struct Pacer {
    tat: Instant,
    /// The rate `tat` is measured at: its lead over now is that many requests at this rate.
    rate: f64,
    generation: u64,
}

impl Pacer {
    pub fn new(now: Instant) -> Self {
        Self {
            tat: now,
            rate: f64::INFINITY,
            generation: 0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// One request at `rate`/s with `burst`, not before `not_before` (a pause). An infinite rate
    /// is no pacing at all.
    pub fn reserve(&mut self, now: Instant, rate: f64, burst: u32, not_before: Instant) -> Grant {
        let start = now.max(not_before);
        self.rescale(now, rate);
        if !rate.is_finite() {
            return Grant::Slot(self.slot(start));
        }
        let interval = interval(rate);
        let allowance = interval.saturating_mul(burst.max(1));
        // The new slot would be at `tat + interval - allowance`: keep it within the horizon.
        let reach = now + HORIZON + allowance;
        if self.tat + interval > reach {
            return Grant::Later(self.tat + interval - (reach - now));
        }
        self.tat = self.tat.max(start) + interval;
        let at = self
            .tat
            .checked_sub(allowance)
            .map_or(start, |a| a.max(start));
        Grant::Slot(self.slot(at))
    }

    /// After a cut: reservations at the old rate are void and the new rate starts without burst.
    pub fn reset(&mut self, now: Instant, rate: f64, burst: u32) {
        self.generation += 1;
        self.tat = now;
        self.rate = rate;
        if rate.is_finite() {
            self.tat += interval(rate).saturating_mul(burst.max(1));
        }
    }

    /// The TAT's lead over `now` is a number of requests at the rate it was taken at; at a new
    /// rate the same number takes another time. Without this an empty bucket at a probing rate
    /// of 1 rps (a lead of `burst` seconds) kept every request waiting for seconds after the
    /// rate had risen again.
    fn rescale(&mut self, now: Instant, rate: f64) {
        if rate == self.rate {
            return;
        }
        let lead = self.tat.saturating_duration_since(now).as_secs_f64();
        let requests = lead * self.rate;
        self.tat = if rate.is_finite() && requests.is_finite() {
            now + Duration::from_secs_f64((requests / rate.max(1e-3)).min(3600.0))
        } else {
            now
        };
        self.rate = rate;
    }

    fn slot(&self, at: Instant) -> Slot {
        Slot {
            at,
            generation: self.generation,
        }
    }
}

fn interval(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate.max(1e-3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(grant: Grant) -> Instant {
        match grant {
            Grant::Slot(slot) => slot.at,
            Grant::Later(at) => panic!("no slot, come back at {at:?}"),
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_one_request_per_interval() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let at: Vec<Duration> = (0..5)
            .map(|_| at(p.reserve(t0, 100.0, 3, t0)) - t0)
            .collect();
        assert_eq!(at, [ms(0), ms(0), ms(0), ms(10), ms(20)]);
    }

    #[test]
    fn a_rate_change_spaces_the_queue_ahead_at_the_new_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        p.reserve(t0, 100.0, 1, t0);
        assert_eq!(at(p.reserve(t0, 100.0, 1, t0)) - t0, ms(10));
        // Two requests of debt at 100 rps are 40 ms at 50 rps; the next slot follows them.
        assert_eq!(at(p.reserve(t0, 50.0, 1, t0)) - t0, ms(40));
        assert_eq!(at(p.reserve(t0, 50.0, 1, t0)) - t0, ms(60));
    }

    #[test]
    fn a_reset_voids_old_reservations_and_leaves_no_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        for _ in 0..15 {
            p.reserve(t0, 100.0, 10, t0);
        }
        let before = p.generation();
        p.reset(t0 + ms(5), 50.0, 10);
        let Grant::Slot(slot) = p.reserve(t0 + ms(5), 50.0, 10, t0) else {
            panic!("a slot")
        };
        assert_ne!(slot.generation, before);
        // Not after the old queue and not at once (no burst): one interval after the cut.
        assert_eq!(slot.at - t0, ms(25));
    }

    #[test]
    fn nothing_goes_before_a_pause_ends_and_an_infinite_rate_does_not_pace() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert_eq!(at(p.reserve(t0, 100.0, 5, t0 + ms(300))) - t0, ms(300));
        for _ in 0..100 {
            assert_eq!(at(p.reserve(t0, f64::INFINITY, 1, t0)), t0);
        }
    }

    #[test]
    fn an_empty_bucket_at_a_low_rate_empties_no_longer_once_the_rate_rises() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // A probe interval of 1 s with burst 10: the bucket is empty for 10 s at that rate…
        p.reset(t0, 1.0, 10);
        assert_eq!(p.reserve(t0, 1.0, 10, t0), Grant::Later(t0 + ms(900)));
        // …but once the rate is 20 rps the same 10 requests take half a second, not ten: the
        // next one goes one interval after they would have.
        let grant = p.reserve(t0 + ms(100), 20.0, 10, t0);
        assert_eq!(at(grant) - t0, ms(145));
        // And the other way: a queue taken at 100 rps lasts ten times as long at 10 rps.
        let mut p = Pacer::new(t0);
        for _ in 0..10 {
            p.reserve(t0, 100.0, 1, t0);
        }
        assert_eq!(p.reserve(t0, 10.0, 1, t0), Grant::Later(t0 + ms(900)));
    }

    #[test]
    fn reservations_reach_at_most_the_horizon_ahead() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let grants: Vec<Grant> = (0..4).map(|_| p.reserve(t0, 10.0, 1, t0)).collect();
        // 10 rps: slots at 0 and 100 ms, then the queue is past the horizon.
        assert_eq!(at(grants[0]) - t0, ms(0));
        assert_eq!(at(grants[1]) - t0, ms(100));
        assert_eq!(grants[2], Grant::Later(t0 + ms(100)));
        assert_eq!(grants[3], Grant::Later(t0 + ms(100)));
    }
}
