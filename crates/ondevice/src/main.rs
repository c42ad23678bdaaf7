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
    // Before any C code runs (it uses x86-64-v2's instructions on x86-64 Linux).
    if let Err(e) = cpu::check_baseline() {
        eprintln!("error: {e}");
        return ExitCode::from(cpu::BASELINE_EXIT);
    }
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
