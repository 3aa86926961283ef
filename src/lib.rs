//! cxrel: a queue-driven worker that validates bulk parent–child relationship jobs against a record
//! data store's schema and live graph, applies them with version-checked PATCHes under one rate
//! limit, publishes CloudEvents, delivers signed webhooks and dead-letters what fails.
//!
//! Module map (a job flows top to bottom):
//! - [`settings`], [`secret`], [`telemetry`], [`shutdown`]: start-up plumbing.
//! - [`cli`]: the `cxrel` subcommands (SPEC §9), one file each.
//! - [`contracts`]: JSON Schemas and the AsyncAPI document generated from the wire types (`cxrel schema`).
//! - [`emulator`]: the bundled data-store emulator (auth, records API, faults, webhook receiver).
//! - [`error`]: the Permanent / Transient class shared by every stage's errors.
//! - [`schema`]: a data store's schema, wire JSON and effective relationship constraints.
//! - [`job`]: job messages parsed at the boundary into domain types (SPEC §1).
//! - [`graph`]: per-data-store relationship graph, validation of SPEC §2 and the PATCH planner.
//! - [`amqp`]: broker connection, topology (SPEC §5), confirmed publishing, `x-cxrel-*` headers.
//! - [`events`]: CloudEvents result events with ids stable across redelivery (SPEC §6).
//! - [`jobfile`]: streamed reading of job files (JSON array, JSON Lines, object stream).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics` of the worker.
//! - [`bench`]: throughput measurements, including the raw broker ceiling.
//! - [`harness`]: a local installation (emulator, worker processes, event tap) for demo and bench.
//! - [`store`]: the data-store client (auth, adaptive rate budget, retries, records API).
//! - [`dlq`]: the dead-letter engine: browse, summary, replay (confirm before ack), purge, export.
//! - [`console`]: `cxrel console`, the dead-letter page and JSON API on the `dlq` engine.
//! - [`pipeline`]: one job through parse → validate → plan → apply → publish.
//! - [`webhooks`]: Standard Webhooks signing and delivery.
//! - [`worker`]: the consume loop, per-parent locks, outcome settlement (ack / retry / dead letter).

pub mod amqp;
pub mod bench;
pub mod cli;
pub mod console;
pub mod contracts;
pub mod dlq;
pub mod emulator;
pub mod error;
pub mod events;
pub mod graph;
pub mod harness;
pub mod http;
pub mod job;
pub mod jobfile;
pub mod pipeline;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod worker;
