//! A discrete-event simulation of the adaptation against a token-bucket server with network
//! jitter, in simulated time: the counts and shares the budget achieves, with no wall clock.
//!
//! Tasks loop: reserve a slot ([`Pacer`] at the [`Cubic`] rate), send, travel 1–10 ms to the
//! server (so arrivals bunch), the server's bucket admits or answers 429, the answer travels
//! 1–10 ms back, the task feeds the outcome to [`Cubic`] and goes again (a 429 is retried).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cubic::{Cubic, CubicParams, Signal};
use super::pacer::{Grant, Pacer};

/// A token bucket, the textbook way: `rate` tokens per second, at most `capacity`.
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn admit(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A task's reserved slot has come (reserved in `generation`).
    Slot { task: usize, generation: u64 },
    /// A request reaches the server.
    Arrive { task: usize, sent: Duration },
    /// Its answer reaches the client.
    Answer {
        task: usize,
        sent: Duration,
        ok: bool,
    },
}

/// What a run achieved.
#[derive(Debug)]
pub struct SimOutcome {
    pub successes: u64,
    pub throttled: u64,
    pub seconds: f64,
}

impl SimOutcome {
    pub fn goodput(&self) -> f64 {
        self.successes as f64 / self.seconds
    }
    pub fn throttled_share(&self) -> f64 {
        self.throttled as f64 / (self.successes + self.throttled).max(1) as f64
    }
}

/// `tasks` clients with `params` and `burst` against a bucket of `limit`/s and `capacity`, for
/// `seconds`, jitter from `seed`.
pub fn run(
    params: CubicParams,
    burst: u32,
    limit: f64,
    capacity: u32,
    tasks: usize,
    seconds: u64,
    seed: u64,
) -> SimOutcome {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cubic = Cubic::new(params, t0);
    let mut pacer = Pacer::new(t0);
    let mut server = Bucket {
        rate: limit,
        capacity: f64::from(capacity),
        tokens: f64::from(capacity),
        at: t0,
    };
    let end = Duration::from_secs(seconds);
    let mut queue = BinaryHeap::new();
    let mut out = SimOutcome {
        successes: 0,
        throttled: 0,
        seconds: seconds as f64,
    };
    let reserve = |now: Duration, cubic: &mut Cubic, pacer: &mut Pacer, task: usize| {
        let at = t0 + now;
        cubic.on_request(at);
        match pacer.reserve(at, cubic.rate(at), burst, cubic.pause_until()) {
            Grant::Slot(slot) => {
                let event = Event::Slot {
                    task,
                    generation: slot.generation,
                };
                Reverse((slot.at - t0, event))
            }
            // Comes back a little later than told (the budget adds jitter there too).
            Grant::Later(later) => {
                let event = Event::Slot {
                    task,
                    generation: u64::MAX,
                };
                let spread = Duration::from_micros(task as u64 * 1_500 % 25_000);
                Reverse((later - t0 + spread, event))
            }
        }
    };
    for task in 0..tasks {
        queue.push(reserve(Duration::ZERO, &mut cubic, &mut pacer, task));
    }
    let mut jitter = move || Duration::from_micros(rng.random_range(1_000..10_000));
    while let Some(Reverse((now, event))) = queue.pop() {
        if now >= end {
            break;
        }
        match event {
            Event::Slot { task, generation } if generation != pacer.generation() => {
                queue.push(reserve(now, &mut cubic, &mut pacer, task));
            }
            Event::Slot { task, .. } => {
                let event = Event::Arrive { task, sent: now };
                queue.push(Reverse((now + jitter(), event)));
            }
            Event::Arrive { task, sent } => {
                let ok = server.admit(t0 + now);
                let event = Event::Answer { task, sent, ok };
                queue.push(Reverse((now + jitter(), event)));
            }
            Event::Answer { task, sent, ok } => {
                let at = t0 + now;
                if ok {
                    out.successes += 1;
                    cubic.on_success();
                } else {
                    out.throttled += 1;
                    let retry_after = Some(Duration::from_secs(1));
                    let signal = cubic.on_throttled(at, t0 + sent, retry_after);
                    if let Signal::Cut { rate, .. } = signal {
                        pacer.reset(at, rate, burst);
                    }
                }
                queue.push(reserve(now, &mut cubic, &mut pacer, task));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 simulated seconds of 16 tasks against `limit`/s with a bucket of a tenth of a second
    /// (10 at 100/s, as `cxrel bench` sets the emulator), over three seeds.
    fn runs(max_rate: Option<f64>, limit: f64) -> Vec<SimOutcome> {
        let capacity = (limit / 10.0).max(2.0) as u32;
        (1..=3)
            .map(|seed| run(CubicParams::new(max_rate), 1, limit, capacity, 16, 30, seed))
            .collect()
    }

    fn check(outcomes: &[SimOutcome], limit: f64, min_share: f64, max_429: f64) {
        for o in outcomes {
            eprintln!(
                "goodput {:.1}/s of {limit}, 429s {} ({:.2}%)",
                o.goodput(),
                o.throttled,
                o.throttled_share() * 100.0
            );
            assert!(o.goodput() >= min_share * limit, "{o:?}");
            assert!(o.throttled_share() <= max_429, "{o:?}");
        }
    }

    #[test]
    fn configured_at_the_limit_it_holds_97_percent_with_at_most_half_a_percent_of_429s() {
        check(&runs(Some(100.0), 100.0), 100.0, 0.97, 0.005);
    }

    #[test]
    fn configured_half_again_above_the_limit_it_holds_95_percent_with_at_most_2_percent_429s() {
        check(&runs(Some(150.0), 100.0), 100.0, 0.95, 0.02);
    }

    #[test]
    fn configured_ten_times_above_the_limit_it_still_converges() {
        check(&runs(Some(1000.0), 100.0), 100.0, 0.95, 0.02);
    }

    #[test]
    fn unconfigured_it_discovers_the_limit_with_at_most_2_percent_429s() {
        check(&runs(None, 100.0), 100.0, 0.95, 0.02);
        check(&runs(None, 1000.0), 1000.0, 0.95, 0.02);
        // At 20/s a run is only 600 requests, and discovery costs about the same 20 429s as at
        // 100/s (the tasks' requests in flight when the first ones come back): a larger share.
        check(&runs(None, 20.0), 20.0, 0.95, 0.04);
    }
}
