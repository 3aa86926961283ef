//! `cxrel` binary: parse the command line, load settings, start telemetry, run the subcommand.

use clap::Parser;

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
            tracing::error!(error = format!("{error:#}"), "cxrel failed");
            eprintln!("cxrel: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
