//! The `cxrel` subcommands driven as an operator runs them: the real binary, its exit codes and
//! output, against the local RabbitMQ and emulator processes.

#[path = "../helpers/mod.rs"]
mod helpers;

mod bench;
mod demo;
mod log_output;
mod operator;
mod validate;
mod webhooks;
