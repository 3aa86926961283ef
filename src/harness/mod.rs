//! A whole cxrel installation on one machine, for `cxrel demo` and `cxrel bench`: the emulator in
//! this process, workers as child processes (so their memory is their own), and an event tap that
//! tells when each job has settled.
//!
//! Files: [`emulator`] the in-process emulator and its control API, [`workers`] worker child
//! processes, [`tap`] the result-event listener.

pub mod emulator;
pub mod sample;
pub mod tap;
pub mod workers;

/// A fresh, readable queue prefix: `{base}-{8 hex}`, so runs never share queues.
pub fn fresh_prefix(base: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}-{}", &id[..8])
}
