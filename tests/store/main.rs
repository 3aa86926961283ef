//! The data-store client (`cxrel::store`) against emulator processes and the local Redis: auth,
//! records, faults, hostile answers, metrics and logs, and the rate budget (local and shared).

#[path = "../helpers/mod.rs"]
mod helpers;
mod support;

mod auth;
mod bounds;
mod faults;
mod graph_cache;
mod observability;
mod rate_adaptation;
mod records;
mod redis_budget;
