//! The rate adaptation behind every rate budget: CUBIC-style recovery toward the rate at which
//! 429s appeared, free of clocks and I/O so it can be driven step by step (the Redis script
//! `budget.lua` runs the same arithmetic on the server).
//!
//! - **A signal** is a 429 for a request sent *after* the last cut: answers of requests already
//!   in flight when the rate was cut describe the old rate, so a burst of 429s counts once.
//! - **A cut** remembers `w_max`, the rate the 429 appeared at, and drops to `beta × w_max`
//!   (0.9: a little). From there the rate follows `w_max × (1 + c·(t − K)³)`: concave and fast
//!   back to just below `w_max` (in `recover`, K), flat around it, then convex probing above it
//!   (a quarter as steep as the climb back: the limit is usually where it was). A 429 once the
//!   rate is back at `w_max` again (from 1% below to 2.5% above it) puts `w_max` 1% below that
//!   rate and cuts only to 97% of it: a limit that refuses exactly there (a sliding window
//!   counting every second) is met just below it, with a small dip at each return instead of a
//!   10% one.
//! - **Closed.** A 429 while nothing sent since the last cut has been admitted is no signal: a
//!   window whose count is used up refuses everything until it ends, whatever the rate, and
//!   cutting at every such 429 took 150 rps to 19 in a third of a second. The rate stays, and
//!   requests go one at a time as probes, `closed_probe` apart and twice that after each further
//!   refused probe, at most 16 times that during the run's first second (a window opens when its
//!   second ends), then as Retry-After says (a penalty box), until one is admitted. From the
//!   third refused probe it is a window, not an empty bucket (which refills within one probe):
//!   the first cut's curve is rebased on what the server admitted in the last second, so a slow
//!   start that a window never slowed does not come back at ten times its limit.
//! - **A penalty box** is a closed run that outlasts a window's second: once it admits again, the
//!   curve restarts below the lower of the last `w_max` and what the server admitted in the
//!   second before it closed, and when the box closed near that admitted rate, for a minute the
//!   probe past `w_max` climbs eight times slower (crossing the limit costs the whole penalty
//!   there; a box far above it, as at the end of a slow start, leaves the limit to be found).
//! - **An episode** is a run of signals each within `recover` of the previous cut while the rate
//!   had not yet climbed back to `w_max` (the cut did not get the rate below the limit). From
//!   its second signal on, once `estimate_successes` answers came back fine, `w_max` is capped
//!   by the successes per second since the episode began: a bucket was empty at the first 429,
//!   so what it admitted since then is its real rate, without burst. It is trusted only when the
//!   server refused at least `estimate_refused` of what it admitted: with fewer 429s the client
//!   was not sending faster than the server admits, so its successes say nothing about the limit.
//! - **The trailing second** ([`Trailing`]) gives a second estimate: what the server admitted in
//!   the last second, once a second of traffic has passed outside the slow start and the server
//!   refused `estimate_refused` of it or was closed in the last three seconds. A window admits its
//!   count per second however its slots free up, so the episode's count can fall far short of it
//!   (a window freed in the pattern of a slow start admits 10/s for a while). The larger of the
//!   two estimates is taken. After a closed run in the last three seconds (a window), neither the
//!   estimate, `w_max` nor the cut goes below what the server admitted in the last second (times
//!   `beta` for the cut): a window still full of earlier requests refuses whatever the rate, and
//!   cutting on would only starve the next second.
//! - **A pause** (every request waits) happens only when cutting no longer helps: at the rate
//!   floor or from the `escalate_after`-th signal of an episode, and not while a window admitted
//!   `estimate_successes` or more in the last second. Then Retry-After is honoured
//!   (capped at `cool_down_max`), else an own cool-down doubling from `cool_down_min`. Stores send
//!   Retry-After in whole seconds, which for a bucket refilling every few milliseconds overstates
//!   the wait a hundredfold; pausing on every 429 would cost a second of traffic each time.
//! - Further signals of an episode cut deeper (`beta^n` for the n-th) until an estimate is there,
//!   so a rate far above the limit comes down in a few round trips.
//! - With no configured maximum (`max_rate: None`) the rate starts at `start_rate` when traffic
//!   begins and doubles every `doubling` until the first signal (TCP's slow start), but never
//!   above twice the answers of the last 200 ms (a rate grown while little was sent is no
//!   evidence the server takes it): the overshoot
//!   is at most about twice the limit against a bucket (a window hides its limit until its count
//!   is used up, so there it can be tenfold), and the estimates correct it. A configured maximum
//!   is the start rate instead and caps the rate at every step.

use std::time::{Duration, Instant};

use super::trailing::Trailing;

/// A closed run this recent shows a window: its trailing second is trusted and bounds the cuts.
/// Three seconds, not two: a rate a little above a window's limit overflows it every second or
/// two, and the evidence must outlast the gap between two signals.
const CLOSED_RECENT: Duration = Duration::from_secs(3);

/// The cut for a lone 429 back at the last `w_max` (`beta` for any other).
const REPEAT_BETA: f64 = 0.97;

/// "Back at the last `w_max`": from 1% below it to this factor above it.
const AGAIN_ABOVE: f64 = 1.025;

/// How long a closed run may last and still be a window closing until its second ends.
const CLOSED_WINDOW: Duration = Duration::from_secs(1);

/// Slots of the trailing second (50 ms each) whose answers bound the slow start: it doubles only
/// while traffic keeps up with it.
const DEMAND_SLOTS: usize = 4;

/// After a penalty box (a closed run outlasting [`CLOSED_WINDOW`]) the curve resumes this far
/// below the lower of the last `w_max` and what the server admitted in the second before it
/// closed (far enough to leave a bucket's burst, which that second also counted, behind).
const PENALTY_STEP: f64 = 0.93;
/// For [`PENALTY_MEMORY`] after a box that closed near the limit, the probe past `w_max` climbs
/// [`PENALTY_SLOWDOWN`] times slower: finding a limit by probing past it costs a whole penalty
/// there, not a 10% dip.
const PENALTY_MEMORY: Duration = Duration::from_secs(60);
const PENALTY_SLOWDOWN: f64 = 8.0;
/// "Near the limit": the server admitted at least this share of the rate the box closed at. A
/// box that ends a slow start (or a configured rate far above the limit) closes at several times
/// what was admitted, and the limit may lie anywhere between: probing on at a cut's speed finds
/// it in seconds where the slow probe took most of a minute (simulated over 60 s, unconfigured:
/// 66% of the limit before, 81% after).
const PENALTY_NEAR: f64 = 0.8;

/// Refused probes in one closed run that show a window (an empty bucket refills within one): the
/// curve is then rebased on what the server admitted.
const WINDOW_AFTER: u32 = 3;

/// Parameters of the adaptation; [`CubicParams::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CubicParams {
    /// Configured ceiling in requests/s; `None` = not configured, discover the limit.
    pub max_rate: Option<f64>,
    /// On a signal the rate drops to this share of `w_max` (`beta^n` for an episode's n-th).
    pub beta: f64,
    /// Without a configured maximum: the rate when traffic begins…
    pub start_rate: f64,
    /// …doubling this often until the first signal.
    pub doubling: Duration,
    /// Time to climb from `beta × w_max` back to `w_max` (CUBIC's K).
    pub recover: Duration,
    /// The rate never drops below this.
    pub min_rate: f64,
    /// Successes in an episode before their rate is trusted as the server's rate…
    pub estimate_successes: u64,
    /// …and the least share of 429s per success that shows the server was the bottleneck.
    pub estimate_refused: f64,
    /// Signals in one episode before requests also pause.
    pub escalate_after: u32,
    /// First own pause when a 429 carries no Retry-After; doubles per further escalated signal.
    pub cool_down_min: Duration,
    /// Longest pause, and the cap on a server's Retry-After.
    pub cool_down_max: Duration,
    /// First pause while the server refuses everything sent since the last cut (a closed
    /// window); doubles per further such 429, capped by Retry-After and `cool_down_max`.
    pub closed_probe: Duration,
}

impl CubicParams {
    /// Defaults for a configured maximum (`None` = discover): cut to 90%, back in 2 s, floor
    /// 1 rps (or the maximum if lower), estimate from 10 successes, pause from the 8th signal; without
    /// a maximum start at 10 rps doubling every 100 ms.
    pub fn new(max_rate: Option<f64>) -> Self {
        Self {
            max_rate,
            beta: 0.9,
            start_rate: 10.0,
            doubling: Duration::from_millis(100),
            recover: Duration::from_secs(2),
            min_rate: max_rate.map_or(1.0, |m| m.min(1.0)),
            estimate_successes: 10,
            estimate_refused: 0.1,
            escalate_after: 8,
            cool_down_min: Duration::from_millis(250),
            cool_down_max: Duration::from_secs(10),
            closed_probe: Duration::from_millis(10),
        }
    }

    /// The cubic's scale relative to `w_max`: `beta × w_max` at t = 0, `w_max` at t = K.
    fn scale(&self) -> f64 {
        (1.0 - self.beta) / self.recover.as_secs_f64().max(1e-3).powi(3)
    }
}

/// The last cut: where 429s appeared and when the rate dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cut {
    at: Instant,
    w_max: f64,
    /// Seconds from `at` until the curve is back at `w_max` (K, longer after a deeper cut).
    k: f64,
}

impl Cut {
    /// A cut at `at` to `rate` below `w_max`, with the curve's K through both (longer when the
    /// cut went deeper).
    fn new(at: Instant, w_max: f64, rate: f64, params: &CubicParams) -> Self {
        let k = ((1.0 - rate / w_max).max(0.0) / params.scale()).cbrt();
        Self { at, w_max, k }
    }
}

/// What a 429 did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The request was sent before the last cut: part of a signal already taken.
    Ignored,
    /// Nothing sent since the last cut has been admitted: the server is closed for now (a window
    /// full until its end), and a lower rate would not open it sooner. The rate stays; requests
    /// go one at a time, `closed_probe` apart and twice that after each further such 429, until
    /// one is admitted (`rate` is that probing rate).
    Closed { rate: f64 },
    /// A new signal: the rate dropped to `rate` after 429s at `w_max`; requests wait until
    /// `pause_until` when cutting alone no longer helps.
    Cut {
        w_max: f64,
        rate: f64,
        pause_until: Option<Instant>,
    },
}

/// The adaptation state; see the module docs.
#[derive(Debug, Clone)]
pub struct Cubic {
    params: CubicParams,
    cut: Option<Cut>,
    /// The first request (the slow start's time zero).
    traffic_start: Option<Instant>,
    /// Non-429 answers and 429s so far (the meters of the episode estimate).
    successes: u64,
    refused: u64,
    episode_start: Instant,
    episode_successes: u64,
    episode_refused: u64,
    episode_signals: u32,
    pause_until: Instant,
    /// Successes of requests sent after the last cut, and 429s of such requests while there
    /// were none (the closed run).
    admitted_since_cut: u64,
    closed_run: u32,
    /// While closed: one request per this interval.
    probe: Option<Duration>,
    /// When the current closed run began.
    closed_since: Instant,
    /// When the server last refused everything sent since a cut (a closed run).
    last_closed: Option<Instant>,
    /// Answers over the trailing second.
    trailing: Trailing,
    /// The first cut (the end of the slow start).
    first_cut: Option<Instant>,
    /// At the last cut: its `w_max` and what the server admitted per second before it.
    w_max_at_cut: f64,
    admitted_at_cut: f64,
    /// When the last penalty box reopened.
    penalty: Option<Instant>,
}

impl Cubic {
    pub fn new(params: CubicParams, now: Instant) -> Self {
        Self {
            params,
            cut: None,
            traffic_start: None,
            successes: 0,
            refused: 0,
            episode_start: now,
            episode_successes: 0,
            episode_refused: 0,
            episode_signals: 0,
            pause_until: now,
            admitted_since_cut: 0,
            closed_run: 0,
            probe: None,
            closed_since: now,
            last_closed: None,
            trailing: Trailing::new(now),
            first_cut: None,
            w_max_at_cut: 0.0,
            admitted_at_cut: 0.0,
            penalty: None,
        }
    }

    pub fn params(&self) -> &CubicParams {
        &self.params
    }

    /// The rate at `now` in requests/s (infinite while no limit is configured or found).
    pub fn rate(&self, now: Instant) -> f64 {
        let p = &self.params;
        let ceiling = p.max_rate.unwrap_or(f64::INFINITY);
        let Some(cut) = self.cut else {
            return self.slow_start(now).unwrap_or(ceiling);
        };
        let t = now.saturating_duration_since(cut.at).as_secs_f64();
        // Past w_max the probe climbs a quarter as steeply: the limit is usually where it was
        // (and slower still after a penalty box, where finding it costs the whole penalty).
        let penalized = self
            .penalty
            .is_some_and(|at| now.saturating_duration_since(at) < PENALTY_MEMORY);
        let scale = match (t > cut.k, penalized) {
            (false, _) => p.scale(),
            (true, false) => p.scale() / 4.0,
            (true, true) => p.scale() / 4.0 / PENALTY_SLOWDOWN.powi(3),
        };
        let curve = cut.w_max * (1.0 + scale * (t - cut.k).powi(3));
        let curve = curve.clamp(p.min_rate, ceiling.max(p.min_rate));
        self.probe
            .map_or(curve, |probe| curve.min(1.0 / probe.as_secs_f64()))
    }

    /// Without a configured maximum and before any signal: the doubling start rate.
    fn slow_start(&self, now: Instant) -> Option<f64> {
        let p = &self.params;
        if p.max_rate.is_some() {
            return None;
        }
        let Some(start) = self.traffic_start else {
            return Some(p.start_rate);
        };
        let doublings =
            now.saturating_duration_since(start).as_secs_f64() / p.doubling.as_secs_f64().max(1e-3);
        let doubling = p.start_rate * 2f64.powf(doublings.min(60.0));
        // At most twice what came back lately (RFC 7661's idea): a rate that doubled while the
        // worker sent little (a graph load of a few pages) would let the first wave of writes
        // go at once, far above any limit, and every request of it come back refused.
        let window = super::trailing::SLOT.as_secs_f64() * DEMAND_SLOTS as f64;
        let answered = self.trailing.recent(now, DEMAND_SLOTS) as f64 / window;
        Some(doubling.min((2.0 * answered).max(p.start_rate)))
    }

    /// A request is about to be scheduled: starts the slow start's clock on the first one.
    pub fn on_request(&mut self, now: Instant) {
        self.traffic_start.get_or_insert(now);
    }

    /// When the last cut happened (requests sent before it belong to the old rate).
    pub fn last_cut(&self) -> Option<Instant> {
        self.cut.map(|c| c.at)
    }

    /// Requests wait until then (a pause from an escalated signal).
    pub fn pause_until(&self) -> Instant {
        self.pause_until
    }

    /// The rate 429s last appeared at, once one did.
    pub fn w_max(&self) -> Option<f64> {
        self.cut.map(|c| c.w_max)
    }

    /// A non-429 answer at `now` to a request sent at `sent`.
    pub fn on_success(&mut self, now: Instant, sent: Instant) {
        self.successes += 1;
        self.trailing.admit(now);
        if self.cut.is_some_and(|c| sent >= c.at) {
            if self.closed_run > 0
                && now.saturating_duration_since(self.closed_since) > CLOSED_WINDOW
            {
                self.after_penalty(now);
            }
            self.admitted_since_cut += 1;
            self.closed_run = 0;
            self.probe = None;
        }
    }

    /// The server reopened after refusing everything for longer than a window's second: a
    /// penalty box. The curve restarts below the lower of the last `w_max` and what the server
    /// admitted in the second before it closed (a window's rebase, made early in the run, counted
    /// the closure too). When the box closed near what the server admitted, the limit is about
    /// there and the curve probes past it slowly for a while; else it probes at a cut's speed.
    fn after_penalty(&mut self, now: Instant) {
        let p = &self.params;
        let known = self.admitted_at_cut >= p.estimate_successes as f64;
        let mut w = self.w_max_at_cut;
        if known {
            w = w.min(self.admitted_at_cut);
        }
        let w = (w * PENALTY_STEP).max(p.min_rate);
        let rate = (w * p.beta).max(p.min_rate);
        self.cut = Some(Cut::new(now, w, rate, p));
        let near = known && self.admitted_at_cut >= PENALTY_NEAR * self.w_max_at_cut;
        self.penalty = near.then_some(now);
    }

    /// A 429 at `now` for a request sent at `sent`; `retry_after` from the answer.
    pub fn on_throttled(
        &mut self,
        now: Instant,
        sent: Instant,
        retry_after: Option<Duration>,
    ) -> Signal {
        self.refused += 1;
        self.trailing.refuse(now);
        if self.cut.is_some_and(|c| sent < c.at) {
            return Signal::Ignored;
        }
        if self.cut.is_some() && self.admitted_since_cut == 0 {
            // Sent before the last probe interval was set: part of it. (A closed run from before
            // the cut is older than every request sent since.)
            if self.last_closed.is_some_and(|at| sent < at) {
                return Signal::Ignored;
            }
            return self.closed(now, retry_after);
        }
        let current = self.rate(now);
        self.track_episode(now);
        let (w_max, rate, floor) = self.next_cut(now, current);
        self.w_max_at_cut = w_max;
        self.admitted_at_cut = self.admitted_per_second(now, 0.05);
        // K of the curve through (0, rate) and (K, w_max): longer when the cut went deeper.
        self.cut = Some(Cut::new(now, w_max, rate, &self.params));
        self.first_cut.get_or_insert(now);
        self.admitted_since_cut = 0;
        self.closed_run = 0;
        self.probe = None;
        // A server that admitted plenty in the last second is no penalty box: no pause.
        let admitting = floor >= self.params.estimate_successes as f64;
        let pause_until = if admitting {
            None
        } else {
            self.escalated(now, rate, retry_after)
        };
        Signal::Cut {
            w_max,
            rate,
            pause_until,
        }
    }

    /// The signal's `w_max` and new rate at `now` (the rate being `current`), and the window
    /// floor they were bounded by.
    fn next_cut(&mut self, now: Instant, current: f64) -> (f64, f64, f64) {
        // Never below what a window admitted within the last second: it frees its slots in the
        // pattern they were taken, so an episode's count can fall far short of its rate, and
        // while it is still full of earlier requests it refuses whatever the rate.
        let floor = self.window_floor(now);
        let estimate = match (self.limit_estimate(now), self.trailing_estimate(now)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .map(|e| e.max(floor))
        .filter(|e| *e < current);
        let p = &self.params;
        // 429s again at about the rate they came at last time: the limit sits a little lower,
        // and a small step down is enough (a sliding window refuses exactly there every time).
        // Up to AGAIN_ABOVE over it: the probe past a w_max 1% below a ceiling reaches the
        // ceiling 1.01% above it, and a full cut there made every other dip a 10% one.
        let again = self
            .cut
            .filter(|c| (0.99..AGAIN_ABOVE).contains(&(current / c.w_max)));
        let w_max = match (estimate, again) {
            (Some(e), _) => e,
            (None, Some(_)) => (current * 0.99).max(floor),
            (None, None) => current.max(floor),
        }
        .max(p.min_rate);
        // Below the estimate by beta; without one, deeper with every signal of the episode.
        let n = if estimate.is_some() {
            1
        } else {
            self.episode_signals.min(32)
        };
        let depth = if estimate.is_none() && n == 1 && again.is_some() {
            REPEAT_BETA
        } else {
            p.beta.powi(n as i32)
        };
        let rate = (w_max * depth).max(p.beta * floor).max(p.min_rate);
        (w_max, rate, floor)
    }

    /// A 429 while the server admits nothing sent since the cut: wait a little longer each time
    /// (never longer than Retry-After says), then probe at the same rate.
    fn closed(&mut self, now: Instant, retry_after: Option<Duration>) -> Signal {
        let p = &self.params;
        if self.closed_run == 0 {
            self.closed_since = now;
        }
        let doubled = p.closed_probe.saturating_mul(1 << self.closed_run.min(16));
        // Within a second a window opens again: probe often, whatever Retry-After says. Closed
        // for longer it is a penalty box: wait as Retry-After says (or twice as long each time).
        let interval = if now.saturating_duration_since(self.closed_since) < CLOSED_WINDOW {
            doubled.min(p.closed_probe * 16)
        } else {
            retry_after.unwrap_or(doubled)
        }
        .min(p.cool_down_max)
        .max(Duration::from_millis(1));
        self.closed_run += 1;
        self.last_closed = Some(now);
        self.probe = Some(interval);
        if self.closed_run == WINDOW_AFTER {
            self.rebase(now);
        }
        Signal::Closed {
            rate: self.rate(now),
        }
    }

    /// A closed run that outlasts a few probes is a window, not an empty bucket (which refills
    /// within one): its limit is what it admitted in the last second. The curve restarts below
    /// that, so the rate is right when the window opens, instead of ten times too high after a
    /// slow start that a window never slowed.
    fn rebase(&mut self, now: Instant) {
        let floor = self.admitted_per_second(now, 1.0);
        let p = &self.params;
        let Some(cut) = self.cut else { return };
        // Only the first cut's: later runs are the trailing estimate's (a sliding window frees
        // its slots in the pattern a slow start took them, so a second run can see few).
        if self.first_cut != Some(cut.at)
            || floor < p.estimate_successes as f64
            || floor >= cut.w_max
        {
            return;
        }
        let rate = (floor * p.beta).max(p.min_rate);
        self.cut = Some(Cut::new(now, floor, rate, p));
    }

    /// Counts this signal into the running episode, or starts a new one.
    fn track_episode(&mut self, now: Instant) {
        let recover = self.params.recover;
        // Within the episode while the curve is still climbing back: once it is at w_max again,
        // the cut worked and a 429 up there is a new episode.
        let within = self.cut.is_some_and(|c| {
            now.saturating_duration_since(c.at) < recover && self.rate(now) < 0.99 * c.w_max
        });
        if within {
            self.episode_signals += 1;
        } else {
            self.episode_start = now;
            self.episode_successes = self.successes;
            self.episode_refused = self.refused;
            self.episode_signals = 1;
        }
    }

    /// Successes per second since the episode's first signal, once the episode is long enough.
    fn limit_estimate(&self, now: Instant) -> Option<f64> {
        let span = now.saturating_duration_since(self.episode_start);
        let admitted = self.successes - self.episode_successes;
        let refused = self.refused - self.episode_refused;
        let p = &self.params;
        if self.episode_signals < 2
            || admitted < p.estimate_successes
            || (refused as f64) < p.estimate_refused * admitted as f64
            || span < Duration::from_millis(1)
        {
            return None;
        }
        // One more than counted: a slight overestimate corrects itself with the next signal, an
        // underestimate would leave the rate probing up from too low.
        Some((admitted + 1) as f64 / span.as_secs_f64())
    }

    /// What the server admitted over the trailing second, once traffic has run a second and the
    /// server was the bottleneck in it (it refused at least `estimate_refused` of what it
    /// admitted, or refused everything for a while). Unlike the episode's count this holds for a
    /// server with a long memory (a window admits its count, then nothing until it ends).
    fn trailing_estimate(&mut self, now: Instant) -> Option<f64> {
        // A full second of traffic, none of it in the slow start (whose own rate is what the
        // server admitted then).
        let steady_since = match self.params.max_rate {
            Some(_) => self.traffic_start?,
            None => self.first_cut?,
        };
        if now.saturating_duration_since(steady_since) < Duration::from_secs(1) {
            return None;
        }
        let w = self.trailing.window(now);
        let closed = self
            .last_closed
            .is_some_and(|at| now.saturating_duration_since(at) <= CLOSED_RECENT);
        let refused = (w.refused as f64) >= self.params.estimate_refused * w.admitted as f64;
        if w.admitted < self.params.estimate_successes || !(closed || refused) {
            return None;
        }
        Some((w.admitted + 1) as f64 / w.span.as_secs_f64().max(1e-3))
    }

    /// What the server admitted in the trailing second, when it was closed within the last three
    /// (a window); else 0. A bucket's limit can drop below what it admitted a second ago, and
    /// the episode estimate finds the new one sooner.
    fn window_floor(&mut self, now: Instant) -> f64 {
        let closed = self
            .last_closed
            .is_some_and(|at| now.saturating_duration_since(at) <= CLOSED_RECENT);
        if closed {
            self.admitted_per_second(now, 1.0)
        } else {
            0.0
        }
    }

    /// Admissions in the trailing second, per second of the time it covers, counted as at least
    /// `least` (a whole second for a window, which admits its count per second however soon;
    /// 50 ms for a penalty box's rate before it closed, which may be early in the run).
    fn admitted_per_second(&mut self, now: Instant, least: f64) -> f64 {
        let w = self.trailing.window(now);
        w.admitted as f64 / w.span.as_secs_f64().max(least)
    }

    /// The pause when cutting no longer helps (see the module docs), else `None`.
    fn escalated(
        &mut self,
        now: Instant,
        rate: f64,
        retry_after: Option<Duration>,
    ) -> Option<Instant> {
        let p = &self.params;
        let at_floor = rate <= p.min_rate;
        if self.episode_signals < p.escalate_after && !at_floor {
            return None;
        }
        let extra = self
            .episode_signals
            .saturating_sub(p.escalate_after)
            .min(16);
        let own = p.cool_down_min.saturating_mul(1 << extra);
        let pause = retry_after.unwrap_or(own).min(p.cool_down_max);
        self.pause_until = self.pause_until.max(now + pause);
        Some(self.pause_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cut_rate(signal: Signal) -> f64 {
        match signal {
            Signal::Cut { rate, .. } => rate,
            other => panic!("expected a cut: {other:?}"),
        }
    }

    #[test]
    fn an_isolated_429_cuts_a_little_and_the_rate_is_back_below_w_max_within_k() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        assert_eq!(c.rate(t0), 100.0);
        let rate = cut_rate(c.on_throttled(t0, t0, Some(Duration::from_secs(1))));
        assert!((rate - 90.0).abs() < 1e-9, "{rate}");
        // Concave: most of the way back after half of K, at w_max after K.
        assert!(c.rate(t0 + ms(1000)) > 98.0, "{}", c.rate(t0 + ms(1000)));
        assert!((c.rate(t0 + ms(2000)) - 100.0).abs() < 1e-9);
        // No pause for an isolated 429, whatever Retry-After says.
        assert_eq!(c.pause_until(), t0);
    }

    #[test]
    fn answers_of_requests_sent_before_the_cut_are_the_same_signal() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        c.on_throttled(t0 + ms(10), t0, None);
        let again = c.on_throttled(t0 + ms(30), t0 + ms(5), None);
        assert_eq!(again, Signal::Ignored);
        assert!((c.rate(t0 + ms(30)) - 90.0).abs() < 0.5);
        // A request sent after the cut and throttled again, while another sent after it got
        // through, is a new signal.
        c.on_success(t0 + ms(35), t0 + ms(15));
        let rate = cut_rate(c.on_throttled(t0 + ms(40), t0 + ms(20), None));
        assert!((rate - 0.81 * c.w_max().unwrap()).abs() < 1e-9, "{rate}");
        assert!(rate < 80.0, "{rate}");
    }

    #[test]
    fn after_reaching_w_max_the_rate_probes_above_it_slowly_then_faster() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(None), t0);
        c.on_request(t0);
        // Traffic keeps up with the slow start: plenty came back in the last 200 ms.
        for i in 0..100 {
            c.on_success(t0 + ms(200 + i * 2), t0 + ms(195 + i * 2));
        }
        let at_429 = c.rate(t0 + ms(400));
        assert!((at_429 - 160.0).abs() < 1e-6, "slow start: {at_429}");
        c.on_throttled(t0 + ms(400), t0 + ms(400), None);
        assert_eq!(c.w_max(), Some(at_429));
        c.cut = Some(Cut {
            at: t0,
            w_max: 100.0,
            k: 2.0,
        });
        let plateau = c.rate(t0 + ms(2500)) - 100.0;
        let probe = c.rate(t0 + ms(4000)) - 100.0;
        let later = c.rate(t0 + ms(6000)) - 100.0;
        assert!(plateau > 0.0 && plateau < 0.1, "{plateau}");
        assert!(probe > 2.0, "{probe}");
        assert!(later > 15.0, "{later}");
    }

    #[test]
    fn in_an_episode_the_admitted_rate_caps_w_max() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(1000.0)), t0);
        let first = cut_rate(c.on_throttled(t0 + ms(10), t0 + ms(10), None));
        assert!((first - 900.0).abs() < 1e-9);
        // 200 ms later, 20 answers were successes and 3 more were 429s (for requests sent before
        // the cut): the server admits 100/s.
        for _ in 0..20 {
            c.on_success(t0 + ms(100), t0 + ms(50));
        }
        for _ in 0..3 {
            assert_eq!(c.on_throttled(t0 + ms(100), t0, None), Signal::Ignored);
        }
        let t1 = t0 + ms(210);
        match c.on_throttled(t1, t1, None) {
            Signal::Cut { w_max, rate, .. } => {
                assert!((w_max - 105.0).abs() < 1e-9, "{w_max}");
                assert!((rate - 0.9 * 105.0).abs() < 1e-9, "{rate}");
            }
            other => panic!("a new signal: {other:?}"),
        }
    }

    #[test]
    fn without_enough_429s_the_successes_are_not_taken_for_the_limit() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        c.on_throttled(t0, t0, None);
        // A second stray 429 a second later, after 70 successes: the client was sending 70/s.
        for _ in 0..70 {
            c.on_success(t0 + ms(1), t0 + ms(1));
        }
        let t1 = t0 + ms(1000);
        match c.on_throttled(t1, t1, None) {
            Signal::Cut { w_max, .. } => assert!(w_max > 95.0, "{w_max}"),
            other => panic!("a new signal: {other:?}"),
        }
    }

    #[test]
    fn a_persistent_run_of_signals_pauses_for_retry_after_and_the_floor_holds() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        let mut t = t0;
        let mut paused = None;
        for _ in 0..8 {
            t += ms(20);
            // One request sent since the last cut got through: the server is open, just slower.
            c.on_success(t, t - ms(5));
            if let Signal::Cut { pause_until, .. } = c.on_throttled(t, t, Some(ms(3000))) {
                paused = pause_until;
            }
        }
        // Too few successes for an estimate: the cuts drive the rate down and requests pause.
        assert_eq!(paused, Some(t + ms(3000)));
        assert!(c.rate(t) < 10.0, "{}", c.rate(t));
    }

    #[test]
    fn a_server_refusing_everything_since_the_cut_is_probed_one_request_at_a_time() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(150.0)), t0);
        cut_rate(c.on_throttled(t0 + ms(10), t0 + ms(5), Some(ms(1000))));
        // A window full until its end: requests sent after the cut are refused too. No deeper
        // cut, one probe per 10 ms, then 20, 40…
        assert_eq!(
            c.on_throttled(t0 + ms(20), t0 + ms(12), Some(ms(1000))),
            Signal::Closed { rate: 100.0 }
        );
        assert_eq!(
            c.on_throttled(t0 + ms(22), t0 + ms(15), None),
            Signal::Ignored
        );
        assert_eq!(
            c.on_throttled(t0 + ms(40), t0 + ms(30), Some(ms(1000))),
            Signal::Closed { rate: 50.0 }
        );
        assert_eq!(c.w_max(), Some(150.0));
        // Within the run's first second probes never wait longer than 160 ms, whatever
        // Retry-After says (a window opens when its second ends).
        for i in 0..4 {
            let t = t0 + ms(100 + i * 200);
            c.on_throttled(t, t - ms(1), Some(ms(1000)));
        }
        assert!((c.rate(t0 + ms(800)) - 1.0 / 0.16).abs() < 1e-9);
        // Closed for over a second: a penalty box. Now Retry-After is the wait.
        let t = t0 + ms(1200);
        c.on_throttled(t, t - ms(1), Some(ms(1000)));
        assert!((c.rate(t) - 1.0).abs() < 1e-9, "{}", c.rate(t));
        // The box opens: a probe gets through and the curve resumes below where the box closed
        // (nothing was admitted before it to say more): 90% of 93% of 150.
        c.on_success(t0 + ms(2300), t0 + ms(2290));
        let resumed = c.rate(t0 + ms(2300));
        let w = 150.0 * PENALTY_STEP;
        assert!((resumed - w * 0.9).abs() < 0.01, "{resumed}");
        // Back at the new w_max after K; where the limit lies below 150 is unknown, so the probe
        // past it climbs as after a cut: +20% four seconds later.
        assert!((c.rate(t0 + ms(4300)) - w).abs() < 0.01);
        assert_eq!(
            c.rate(t0 + ms(8300)),
            150.0,
            "at the configured ceiling, 7.5% above"
        );
    }

    #[test]
    fn after_a_penalty_box_that_closed_near_what_the_server_admitted_the_probe_climbs_slowly() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(110.0)), t0);
        c.on_request(t0);
        // 110/s sent and admitted for two seconds, then a 429 and a box closed for two seconds.
        for i in 0..220 {
            c.on_success(t0 + ms(i * 9 + 5), t0 + ms(i * 9));
        }
        let t = t0 + ms(2000);
        cut_rate(c.on_throttled(t, t - ms(5), Some(ms(2000))));
        for i in 0..8 {
            let t = t0 + ms(2010 + i * 160);
            c.on_throttled(t, t - ms(1), Some(ms(2000)));
        }
        c.on_success(t0 + ms(4100), t0 + ms(4090));
        let w = c.w_max().unwrap();
        assert!(w < 110.0 * PENALTY_STEP + 1.0, "{w}");
        // Back at w_max after K, then eight times slower than after a cut: +0.3% after eight
        // more seconds, where a cut's curve has +20% after four.
        let k = c.cut.unwrap().k;
        let back = t0 + ms(4100) + Duration::from_secs_f64(k);
        let later = c.rate(back + Duration::from_secs(8)) / w;
        assert!((1.0..1.004).contains(&later), "{later}");
    }

    #[test]
    fn after_a_penalty_box_the_curve_resumes_below_what_the_server_admitted_before_it_closed() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(150.0)), t0);
        c.on_request(t0);
        // 100/s admitted for two seconds, then a 429 at 150 and a box closed for two seconds.
        for i in 0..200 {
            c.on_success(t0 + ms(i * 10 + 5), t0 + ms(i * 10));
        }
        cut_rate(c.on_throttled(t0 + ms(2000), t0 + ms(1995), Some(ms(2000))));
        for i in 0..8 {
            let t = t0 + ms(2010 + i * 160);
            c.on_throttled(t, t - ms(1), Some(ms(2000)));
        }
        c.on_success(t0 + ms(4100), t0 + ms(4090));
        // 93% of the 100/s admitted, cut by 10%: met from below, not at 150 × 0.9.
        let resumed = c.rate(t0 + ms(4100));
        assert!(
            (resumed - 100.0 * PENALTY_STEP * 0.9).abs() < 1.5,
            "{resumed}"
        );
        assert!(c.w_max().is_some_and(|w| w < 99.0), "{:?}", c.w_max());
    }

    #[test]
    fn after_a_closed_window_w_max_is_what_the_server_admitted_in_the_trailing_second() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(150.0)), t0);
        c.on_request(t0);
        // A fixed window of 100/s: 100 admitted in the first 670 ms, then closed till 1 s.
        for i in 0..100 {
            c.on_success(t0 + ms(i * 67 / 10 + 5), t0 + ms(i * 67 / 10));
        }
        cut_rate(c.on_throttled(t0 + ms(680), t0 + ms(675), None));
        assert!(matches!(
            c.on_throttled(t0 + ms(700), t0 + ms(690), None),
            Signal::Closed { .. }
        ));
        // The next window: 100 more by 1.74 s at 135/s, then a 429 again.
        for i in 0..100 {
            c.on_success(t0 + ms(1005 + i * 74 / 10), t0 + ms(1000 + i * 74 / 10));
        }
        match c.on_throttled(t0 + ms(1745), t0 + ms(1740), None) {
            Signal::Cut { w_max, rate, .. } => {
                assert!((w_max - 101.0).abs() < 2.0, "{w_max}");
                assert!((rate - 0.9 * w_max).abs() < 1e-9, "{rate}");
            }
            other => panic!("a cut: {other:?}"),
        }
    }

    #[test]
    fn the_slow_start_grows_no_faster_than_twice_what_came_back() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(None), t0);
        c.on_request(t0);
        // A second of a few sequential reads (a graph load): the doubling alone would be at
        // 10 × 2^10, but 5 answers in the last 200 ms allow 2 × 25/s.
        for i in 0..5 {
            c.on_success(t0 + ms(860 + i * 30), t0 + ms(850 + i * 30));
        }
        assert!(
            (c.rate(t0 + ms(1000)) - 50.0).abs() < 1e-9,
            "{}",
            c.rate(t0 + ms(1000))
        );
        // Nothing came back lately: the start rate, not the doubled one.
        assert_eq!(c.rate(t0 + ms(2000)), 10.0);
    }

    #[test]
    fn three_refused_probes_rebase_the_slow_starts_cut_on_what_the_window_admitted() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(None), t0);
        c.on_request(t0);
        // A window admitted 100 in the slow start's first 600 ms, then refused at twice what came
        // back in the last 200 ms (about 260/s; the doubling alone would be at 640/s).
        for i in 0..100 {
            c.on_success(t0 + ms(i * 6 + 3), t0 + ms(i * 6));
        }
        cut_rate(c.on_throttled(t0 + ms(600), t0 + ms(600), None));
        assert!(c.w_max().unwrap() > 200.0, "{:?}", c.w_max());
        for i in 0..3 {
            let t = t0 + ms(610 + i * 30);
            c.on_throttled(t, t - ms(1), None);
        }
        assert_eq!(c.w_max(), Some(100.0));
        // When the window opens the rate is climbing back from 90 toward 100, not from 580.
        c.on_success(t0 + ms(1010), t0 + ms(1005));
        let rate = c.rate(t0 + ms(1010));
        assert!((90.0..96.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_429_back_at_the_rate_of_the_last_one_sets_w_max_a_little_lower_and_cuts_a_little() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        cut_rate(c.on_throttled(t0, t0, None));
        // Back at 100 after K, refused again: the limit sits just below 100.
        let t = t0 + ms(2500);
        c.on_success(t, t - ms(10));
        let rate = cut_rate(c.on_throttled(t, t, None));
        assert!((c.w_max().unwrap() - 99.0).abs() < 1e-9, "{:?}", c.w_max());
        // …and the step down is small: 97% of it, not 90%.
        assert!((rate - 0.97 * 99.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_429_at_the_ceiling_just_above_the_last_w_max_is_the_same_small_step() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        cut_rate(c.on_throttled(t0, t0, None));
        let t = t0 + ms(2500);
        c.on_success(t, t - ms(10));
        cut_rate(c.on_throttled(t, t, None));
        // The probe past w_max 99 reaches the ceiling of 100 (1.01% above) and is refused there:
        // the same limit, not a new one to cut 10% below.
        let t = t + ms(6000);
        assert_eq!(c.rate(t), 100.0);
        c.on_success(t, t - ms(10));
        let rate = cut_rate(c.on_throttled(t, t, None));
        assert!((c.w_max().unwrap() - 99.0).abs() < 1e-9, "{:?}", c.w_max());
        assert!((rate - 0.97 * 99.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_configured_maximum_caps_the_probe() {
        let t0 = Instant::now();
        let mut c = Cubic::new(CubicParams::new(Some(100.0)), t0);
        c.on_throttled(t0, t0, None);
        assert_eq!(c.rate(t0 + Duration::from_secs(60)), 100.0);
    }
}
