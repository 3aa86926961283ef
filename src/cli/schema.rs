//! `cxrel schema job|event|dead-letter|asyncapi [--format json|yaml]`: prints a contract document
//! generated from the code and the loaded settings (limits, id format, prefix, broker).

use std::io::Write;

use clap::Args;

use crate::contracts::{self, Document, Format};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which document to print.
    #[arg(value_enum)]
    pub document: Document,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

pub async fn run(args: SchemaArgs, settings: Settings) -> anyhow::Result<i32> {
    let value = contracts::generate(args.document, &settings)?;
    let text = contracts::render(&value, args.format)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}
