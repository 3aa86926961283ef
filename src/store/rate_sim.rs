//! A discrete-event simulation of the adaptation against a rate-limited server with network
//! jitter, in simulated time: the counts and shares the budget achieves, with no wall clock.
//!
//! Tasks loop: reserve a slot ([`Pacer`] at the [`Cubic`] rate), send, travel 1–10 ms to the
//! server (so arrivals bunch), the server's limiter (the emulator's token bucket, fixed window or
//! sliding window) admits or answers 429, the answer travels 1–10 ms back, the task feeds the
//! outcome to [`Cubic`] and goes again (a 429 is retried).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cubic::{Cubic, CubicParams, Signal};
use super::pacer::{Grant, Pacer};
use crate::emulator::{Algorithm, Limiter};

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

/// The server's limit: `rate`/s enforced by `algorithm` (not GCRA: governor keeps its own
/// clock) with a bucket of `capacity`. A `penalty` above zero makes it a penalty box: once it
/// refuses a request it refuses everything for that long, and says so in Retry-After.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub algorithm: Algorithm,
    pub rate: f64,
    pub capacity: u32,
    pub penalty: Duration,
}

/// A token bucket of 10 at 100/s that, once it refuses, refuses everything for 2 s.
#[cfg(test)]
const PENALTY_BOX: Server = Server {
    algorithm: Algorithm::TokenBucket,
    rate: 100.0,
    capacity: 10,
    penalty: Duration::from_secs(2),
};

/// `tasks` clients with `params` and `burst` against `server`, for `seconds`, jitter from `seed`.
pub fn run(
    params: CubicParams,
    burst: u32,
    server: Server,
    tasks: usize,
    seconds: u64,
    seed: u64,
) -> SimOutcome {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cubic = Cubic::new(params, t0);
    let mut pacer = Pacer::new(t0);
    let limiter = Limiter::starting_at(server.algorithm, server.rate, server.capacity, t0);
    let end = Duration::from_secs(seconds);
    let mut penalty_until = Duration::ZERO;
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
                let ok = now >= penalty_until && limiter.check_at(t0 + now).is_ok();
                // (The answer's Retry-After is read when it arrives: the box's end as of then.)
                if !ok && now >= penalty_until {
                    penalty_until = now + server.penalty;
                }
                let event = Event::Answer { task, sent, ok };
                queue.push(Reverse((now + jitter(), event)));
            }
            Event::Answer { task, sent, ok } => {
                let at = t0 + now;
                if ok {
                    out.successes += 1;
                    cubic.on_success(at, t0 + sent);
                } else {
                    out.throttled += 1;
                    // The time left in the box in whole seconds (at least one), as stores say it.
                    let left = penalty_until
                        .saturating_sub(now)
                        .as_secs_f64()
                        .ceil()
                        .max(1.0);
                    let retry_after = Some(Duration::from_secs_f64(left));
                    let signal = cubic.on_throttled(at, t0 + sent, retry_after);
                    if let Signal::Cut { rate, .. } | Signal::Closed { rate, .. } = signal {
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
        runs_against(Algorithm::TokenBucket, max_rate, limit)
    }

    fn runs_against(algorithm: Algorithm, max_rate: Option<f64>, limit: f64) -> Vec<SimOutcome> {
        let server = Server {
            algorithm,
            rate: limit,
            capacity: (limit / 10.0).max(2.0) as u32,
            penalty: Duration::ZERO,
        };
        (1..=3)
            .map(|seed| run(CubicParams::new(max_rate), 1, server, 16, 30, seed))
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

    /// A penalty box refuses everything for 2 s once it refuses one request (Retry-After: the
    /// time left). Over two minutes, so that the first boxes (the price of finding it) do not
    /// dominate; before the box was told from a window, the worker held 43–45% of the limit.
    #[test]
    fn against_a_penalty_box_it_holds_most_of_the_limit_with_few_429s() {
        for (max_rate, share) in [(Some(150.0), 0.8), (Some(1000.0), 0.8), (None, 0.7)] {
            let server = PENALTY_BOX;
            let outcomes: Vec<SimOutcome> = (1..=3)
                .map(|seed| run(CubicParams::new(max_rate), 1, server, 16, 120, seed))
                .collect();
            check(&outcomes, 100.0, share, 0.02);
        }
    }

    #[test]
    fn against_windows_configured_at_the_limit_it_holds_97_percent_with_half_a_percent_of_429s() {
        // A fixed window forgives bunching within its second; a sliding one never does, and the
        // rate settles just below the limit.
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            check(
                &runs_against(algorithm, Some(100.0), 100.0),
                100.0,
                0.97,
                0.005,
            );
        }
    }

    #[test]
    fn against_windows_configured_above_the_limit_it_holds_95_percent_with_2_percent_429s() {
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            for max_rate in [150.0, 1000.0] {
                check(
                    &runs_against(algorithm, Some(max_rate), 100.0),
                    100.0,
                    0.95,
                    0.02,
                );
            }
        }
    }

    #[test]
    fn against_windows_unconfigured_it_discovers_the_limit_with_at_most_2_percent_429s() {
        // The slow start overshoots a window tenfold before its first 429 (a window admits its
        // count at any speed); the closed run that follows rebases the curve on what it admitted.
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            check(&runs_against(algorithm, None, 100.0), 100.0, 0.95, 0.02);
        }
    }
}

/// The whole table (`cargo test --lib rate_sim::table -- --ignored --nocapture`): goodput as a
/// share of the limit and the 429 share, per server, configuration and seed.
#[cfg(test)]
mod table {
    use super::*;

    #[test]
    #[ignore = "prints a table; asserts nothing"]
    fn print() {
        for algorithm in [
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            for (max_rate, limit) in [
                (Some(100.0), 100.0),
                (Some(150.0), 100.0),
                (Some(1000.0), 100.0),
                (None, 100.0),
                (None, 1000.0),
                (None, 20.0),
            ] {
                let server = Server {
                    algorithm,
                    rate: limit,
                    capacity: (limit / 10.0).max(2.0) as u32,
                    penalty: Duration::ZERO,
                };
                let line: Vec<String> = (1..=3)
                    .map(|seed| {
                        let o = run(CubicParams::new(max_rate), 1, server, 16, 30, seed);
                        format!(
                            "{:5.1}% {:4.2}%",
                            o.goodput() / limit * 100.0,
                            o.throttled_share() * 100.0
                        )
                    })
                    .collect();
                println!("{algorithm:?} {max_rate:?} {limit}: {}", line.join(" | "));
            }
        }
        for max_rate in [Some(100.0), Some(150.0), Some(1000.0), None] {
            let server = PENALTY_BOX;
            let line: Vec<String> = (1..=3)
                .map(|seed| {
                    let o = run(CubicParams::new(max_rate), 1, server, 16, 120, seed);
                    format!(
                        "{:5.1}% {:4.2}%",
                        o.goodput() / PENALTY_BOX.rate * 100.0,
                        o.throttled_share() * 100.0
                    )
                })
                .collect();
            println!(
                "penalty box 2 s, 120 s {max_rate:?} 100: {}",
                line.join(" | ")
            );
        }
    }
}
