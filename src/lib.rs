//! cxrel: a queue-driven worker that validates bulk parent–child relationship jobs against a record
//! data store's schema and live graph, applies them with version-checked PATCHes under one rate
//! limit, publishes CloudEvents, delivers signed webhooks and dead-letters what fails.
//!
//! Module map, in the order a job flows (each depends only on those above it or beside it):
//! - [`worker`]: consume (single active consumer, bounded in-flight), then settle the outcome:
//!   events, retry copy or dead letter, confirmed before the ack; the write-intent log on the
//!   broker (`worker::journal`) that lets the replica taking over undo a dead one's half-written job.
//! - [`job`]: parse the message into domain types (SPEC §1); [`trace`]: its W3C trace context.
//! - [`pipeline`]: one job through check-and-reserve → confirm → apply → compensate, against each
//!   data store's live graph (`pipeline::datastore`); write intents (`pipeline::intent`).
//! - [`graph`]: the relationship graph, the rules of SPEC §2, reservations and the PATCH planner
//!   (pure, no I/O); [`schema`]: a data store's schema and constraints.
//! - [`store`]: the data-store client (auth, adaptive rate budget, retries, bounded answers).
//! - [`events`]: CloudEvents result events with ids stable across redelivery (SPEC §6);
//!   [`webhooks`]: Standard Webhooks signing and delivery.
//! - [`amqp`]: broker connection, topology (SPEC §5), confirmed publishing, `x-cxrel-*` headers.
//! - Plumbing: [`settings`], [`secret`], [`telemetry`], [`shutdown`], [`error`] (the Permanent /
//!   Transient class), [`http`] (`/healthz`, `/readyz`, `/metrics`).
//!
//! Operator and integration tools:
//! - [`cli`]: the `cxrel` subcommands (SPEC §9), one file each; [`jobfile`]: streamed job files.
//! - [`dlq`]: the dead-letter engine; [`console`]: its web page and JSON API.
//! - [`contracts`]: JSON Schemas and AsyncAPI generated from the wire types (`cxrel schema`).
//! - `emulator`, `harness`, `bench` (the `tools` feature, on by default): the bundled data-store
//!   emulator, a local installation for demo and bench, and throughput measurements.

pub mod worker;

pub mod job;
pub mod pipeline;
pub mod trace;

pub mod graph;
pub mod schema;
pub mod store;

pub mod events;
pub mod webhooks;

pub mod amqp;

pub mod error;
pub mod http;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub mod cli;
pub mod console;
pub mod contracts;
pub mod dlq;
pub mod jobfile;

#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "tools")]
pub mod emulator;
#[cfg(feature = "tools")]
pub mod harness;
