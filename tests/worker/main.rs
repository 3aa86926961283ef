//! `cxrel worker` end to end: real worker processes, emulator processes and the local RabbitMQ
//! (and Redis for the shared budget), each test under its own queue prefix.

#[path = "../helpers/mod.rs"]
mod helpers;

mod bad_input;
mod flow;
mod integrity;
mod paths;
mod resilience;
mod shared_budget;
mod topology;
mod webhook_redaction;
