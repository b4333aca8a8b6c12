//! `callledger`: the command line of call-ledger. Parses flags, installs logging, and hands each
//! subcommand to the module that owns it; errors become a message and a non-zero exit code.

mod backup;
mod cli;
mod client;
mod ledger;
mod offline;
mod out;
mod serve;
mod watchdog;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: sled frees on its epoch collector what other threads
/// allocated, and glibc spent a third of a rebuild's CPU on that (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    if !matches!(cli.command, cli::Command::Serve(_)) {
        // `serve` installs its own; the others say only what went wrong or what they repaired
        // (a damaged projection rebuilt, say), on stderr, unless RUST_LOG asks for more.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sled=off"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    let at = ledger::Location {
        data: cli.data.clone(),
        log: cli.log.clone(),
        nats: cli.nats.clone(),
        wait_for_nats: false,
    };
    match cli.command {
        cli::Command::Serve(args) => serve::run(&cli.data, &cli.log, &cli.nats, args),
        cli::Command::Import(args) => offline::import(&at, args),
        cli::Command::Export => offline::export(&at),
        cli::Command::Rebuild => offline::rebuild(&at),
        cli::Command::Verify => offline::verify(&at),
        cli::Command::Stats => offline::stats(&at),
        cli::Command::Get { id, query } => offline::get(&at, &id, query.as_deref()),
        cli::Command::List { query } => offline::list(&at, query.as_deref()),
        cli::Command::Calls(args) => client::run(&cli.nats, args),
        cli::Command::Backup { dir, token } => backup::backup(&at, &cli.nats, token, &dir),
        cli::Command::Restore { source } => backup::restore(&at, &source),
    }
}
