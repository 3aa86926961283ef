//! `cxrel` binary: parse the command line, load settings, start telemetry, run the subcommand.

use clap::Parser;

/// mimalloc instead of glibc malloc: the worker allocates per delivery, request and event on
/// several threads, and glibc spent ~15% of its CPU in malloc/free (README, `cxrel bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = cxrel::cli::Cli::parse();
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("cxrel: {error}");
            std::process::exit(2);
        }
    };
    cxrel::telemetry::init(&settings.log);
    let code = match cxrel::cli::run(cli, settings).await {
        Ok(code) => code,
        Err(error) => {
            let error = cxrel::error::one_line(error.as_ref());
            tracing::error!(error, "cxrel failed");
            eprintln!("cxrel: {error}");
            1
        }
    };
    std::process::exit(code);
}
