//! The command line (SPEC §9): global options, one subcommand per file in this folder.

/// `println!` for a command's output. A reader that goes away (`cxrel dlq list | head`) ends the
/// output, not the command: `println!` would panic, and a replay or purge that has done its work
/// must still finish and write its audit line.
macro_rules! outln {
    () => {
        $crate::cli::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*), true)
    };
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*), false)
    };
}

#[cfg(feature = "tools")]
mod bench;
mod console;
#[cfg(feature = "tools")]
mod demo;
mod dlq;
#[cfg(feature = "tools")]
mod emulator;
mod enqueue;
mod schema;
mod topology;
mod validate;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::settings::{Settings, SettingsError, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "cxrel",
    version,
    about = "Bulk relationship jobs from RabbitMQ to a record data store"
)]
pub struct Cli {
    /// Settings file layered over config/default.toml and config/{CXREL_ENV}.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume jobs: validate, apply, publish events, retry and dead-letter (the main job).
    Worker,
    /// Publish jobs from a file (JSON array, object or JSON Lines; `-` = stdin) to the jobs queue.
    Enqueue(enqueue::EnqueueArgs),
    /// Dry run: what a job file would apply or have rejected against the live data store (read-only).
    Validate(validate::ValidateArgs),
    /// Inspect, replay, purge or export dead letters.
    Dlq(dlq::DlqArgs),
    /// Serve the dead-letter console (page and JSON API) on [console].listen.
    Console(console::ConsoleArgs),
    /// Manage the broker topology (queues and exchanges named from [amqp].prefix).
    Topology(topology::TopologyArgs),
    #[cfg(feature = "tools")]
    /// Run the bundled data-store emulator (auth, records API, faults, webhook receiver).
    Emulator(emulator::EmulatorArgs),
    #[cfg(feature = "tools")]
    /// Run emulator, worker and a sample batch on this machine and print what happened.
    Demo(demo::DemoArgs),
    #[cfg(feature = "tools")]
    /// Throughput run: emulator, worker processes and enqueue; jobs/s, latency, memory, broker ceiling.
    Bench(bench::BenchArgs),
    /// Print a contract generated from the code: job, event or dead-letter JSON Schema, or AsyncAPI.
    Schema(schema::SchemaArgs),
}

impl Cli {
    /// Loads settings from the layers of SPEC §8, `CXREL_ENV` naming the environment file.
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let sources = Sources {
            env_name: std::env::var("CXREL_ENV").ok(),
            config_dir: None,
            file: self.config.clone(),
            text: None,
        };
        Settings::load(&sources)
    }
}

/// Runs the chosen subcommand; the returned code becomes the process exit code.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<i32> {
    match cli.command {
        Command::Worker => worker::run(settings).await,
        #[cfg(feature = "tools")]
        Command::Emulator(args) => emulator::run(args, settings).await,
        Command::Enqueue(args) => enqueue::run(args, settings).await,
        Command::Dlq(args) => dlq::run(args, settings).await,
        Command::Console(args) => console::run(args, settings).await,
        Command::Topology(args) => topology::run(args, settings).await,
        #[cfg(feature = "tools")]
        Command::Demo(args) => demo::run(args, settings).await,
        #[cfg(feature = "tools")]
        Command::Bench(args) => bench::run(args, settings).await,
        Command::Validate(args) => validate::run(args, settings).await,
        Command::Schema(args) => schema::run(args, settings).await,
    }
}

/// Writes command output to stdout; a closed pipe is not an error (see [`outln!`]), other write
/// errors are reported on stderr.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| match newline {
        true => stdout.write_all(b"\n"),
        false => Ok(()),
    });
    if let Err(error) = written
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("cxrel: cannot write the output: {error}");
    }
}
