//! `cxrel worker`, the main job: consume → parse → validate → plan → apply → publish, with retries
//! through hold queues, dead letters, webhooks, per-parent exclusion and graceful shutdown.

pub mod acks;
pub mod consumer;
pub mod identity;
pub mod journal;
pub mod metrics;
pub mod run;
pub mod settle;

pub use consumer::{Consumer, ConsumerConfig, JobHandler};
pub use run::{Application, build};
