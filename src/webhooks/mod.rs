//! Outgoing webhooks (SPEC §7): Standard Webhooks signing (shared with the emulator's receiver) and
//! the bounded delivery queue.

pub mod delivery;
pub mod redeliver;
pub mod signing;

pub use delivery::{WebhookQueue, WebhookWorker};
