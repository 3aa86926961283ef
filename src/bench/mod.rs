//! `cxrel bench` measurements: the broker ceiling, and (with the worker) end-to-end throughput,
//! latency, data-store requests per operation and peak memory.

pub mod broker;
