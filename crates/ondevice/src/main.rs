//! `ondevice`: parses the command line, resolves config, initialises logging and runs one
//! subcommand from `commands/`. Everything else lives in the library crates.

mod cli;
mod commands;
mod cpu;
mod diagnostics;
mod egress;
mod inference;
mod logging;
mod signals;
mod supervision;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
