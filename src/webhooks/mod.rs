//! Outgoing webhooks (SPEC §7): Standard Webhooks signing, shared with the emulator's receiver.

pub mod signing;
