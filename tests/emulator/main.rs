//! The bundled emulator (`cxrel emulator`) over real HTTP, one emulator process per test.

#[path = "../helpers/mod.rs"]
mod helpers;

mod auth;
mod bad_input;
mod faults;
mod records;
mod webhooks;
