//! Request statistics for tests and benchmarks: counts by route template and status, successful
//! PATCHes, issued tokens, 429s, injected errors, and the most record-API requests seen in any
//! sliding 1-second window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::state::{Shared, lock};

const WINDOW: Duration = Duration::from_secs(1);
const UNMATCHED: &str = "(unmatched)";

/// How the token endpoint authenticated the client (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClientMethod {
    #[serde(rename = "client_secret_basic")]
    Basic,
    #[serde(rename = "client_secret_post")]
    Post,
}

/// Method → status → count, of one route template.
type ByMethod = HashMap<Method, BTreeMap<u16, u64>>;

#[derive(Debug, Default)]
pub struct Stats {
    /// Route template → method → status → count; looked up by `&str`, so no allocation per request.
    by_route: Mutex<HashMap<String, ByMethod>>,
    window: Mutex<Window>,
    patches: AtomicU64,
    /// Tokens issued to a client authenticated by HTTP Basic / by form fields.
    tokens_basic: AtomicU64,
    tokens_post: AtomicU64,
    throttled: AtomicU64,
    injected: AtomicU64,
}

/// Arrival times of record-API requests in the last second, and the largest count seen.
#[derive(Debug, Default)]
struct Window {
    arrivals: VecDeque<Instant>,
    max: usize,
}

impl Window {
    /// Counts an arrival at `now`; the window (now − 1s, now] is exact, so the maximum over all
    /// arrivals is the maximum over every 1-second interval.
    fn arrive(&mut self, now: Instant) {
        while let Some(&first) = self.arrivals.front() {
            if now.duration_since(first) < WINDOW {
                break;
            }
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
        self.max = self.max.max(self.arrivals.len());
    }
}

impl Stats {
    pub fn api_request_arrived(&self) {
        lock(&self.window).arrive(Instant::now());
    }

    pub fn patch_applied(&self) {
        self.patches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_issued(&self, client: ClientMethod) {
        let by_method = match client {
            ClientMethod::Basic => &self.tokens_basic,
            ClientMethod::Post => &self.tokens_post,
        };
        by_method.fetch_add(1, Ordering::Relaxed);
    }

    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error_injected(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, method: Method, path: &str, status: u16) {
        let mut by_route = lock(&self.by_route);
        let methods = match by_route.get_mut(path) {
            Some(methods) => methods,
            None => by_route.entry(path.to_owned()).or_default(),
        };
        *methods
            .entry(method)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    pub fn reset(&self) {
        lock(&self.by_route).clear();
        *lock(&self.window) = Window::default();
        for counter in [
            &self.patches,
            &self.tokens_basic,
            &self.tokens_post,
            &self.throttled,
            &self.injected,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The JSON of `GET /_emulator/stats`.
    pub fn snapshot(&self) -> Value {
        let by_route = lock(&self.by_route).clone();
        let mut requests = serde_json::Map::new();
        let mut total = 0;
        for (path, methods) in by_route {
            for (method, statuses) in methods {
                total += statuses.values().sum::<u64>();
                let statuses: serde_json::Map<String, Value> = statuses
                    .into_iter()
                    .map(|(s, n)| (s.to_string(), n.into()))
                    .collect();
                requests.insert(format!("{method} {path}"), statuses.into());
            }
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (basic, post) = (get(&self.tokens_basic), get(&self.tokens_post));
        json!({
            "requests_total": total,
            "requests": requests,
            "patch_count": get(&self.patches),
            "token_count": basic + post,
            "token_client_auth": {
                "client_secret_basic": basic,
                "client_secret_post": post,
            },
            "throttled_count": get(&self.throttled),
            "injected_error_count": get(&self.injected),
            "max_requests_in_1s": lock(&self.window).max,
        })
    }
}

/// Middleware on every route: counts the answer under "METHOD /route/{template}".
pub async fn count_requests(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let path = path.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    state.stats.count(method, path, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_largest_count_within_one_second() {
        let mut w = Window::default();
        let t0 = Instant::now();
        for ms in [0, 100, 200, 900] {
            w.arrive(t0 + Duration::from_millis(ms));
        }
        assert_eq!(w.max, 4);
        // At 1150ms the arrivals at 0 and 100 are out: {200, 900, 1150}.
        w.arrive(t0 + Duration::from_millis(1150));
        assert_eq!(w.arrivals.len(), 3);
        assert_eq!(w.max, 4);
    }

    #[test]
    fn statistics_group_by_route_and_status() {
        let stats = Stats::default();
        stats.count(Method::GET, "/x", 200);
        stats.count(Method::GET, "/x", 200);
        stats.count(Method::GET, "/x", 404);
        let snap = stats.snapshot();
        assert_eq!(snap["requests"]["GET /x"]["200"], 2);
        assert_eq!(snap["requests_total"], 3);
    }
}
