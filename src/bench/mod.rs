//! `cxrel bench` measurements: the broker ceiling, and (with the worker) end-to-end throughput,
//! latency, data-store requests per operation and peak memory.
//!
//! Files: [`scenario`] the data store and jobs, [`run`] one run end to end, [`figures`] what a run achieved,
//! [`broker`] the raw broker ceiling.

pub mod broker;
pub mod figures;
pub mod run;
pub mod scenario;
