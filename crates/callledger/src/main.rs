//! `callledger`: the command line of call-ledger. Parses flags, installs logging, and hands each
//! subcommand to the module that owns it; errors become a message and a non-zero exit code.

mod cli;
mod client;
mod ledger;
mod offline;
mod serve;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Serve(args) => serve::run(&cli.data, args),
        cli::Command::Import(args) => offline::import(&cli.data, args),
        cli::Command::Export => offline::export(&cli.data),
        cli::Command::Rebuild => offline::rebuild(&cli.data),
        cli::Command::Verify => offline::verify(&cli.data),
        cli::Command::Stats => offline::stats(&cli.data),
        cli::Command::Get { id, query } => offline::get(&cli.data, &id, query.as_deref()),
        cli::Command::List { query } => offline::list(&cli.data, query.as_deref()),
        cli::Command::Calls(args) => client::run(args),
    }
}
