//! `ondevice generate-assets --out DIR` (hidden): writes the man pages (`man/*.1`, one per
//! subcommand) and the shell completions (`completions/`: bash, zsh, fish, PowerShell) generated
//! from the clap definition in `cli.rs`. The installers call it at package-build time, so the
//! shipped docs always match the binary. Needs no config, no home and no daemon.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The binary's name as users type it (and as the completion scripts register it).
const BIN: &str = "ondevice";

pub fn run(out: &Path) -> anyhow::Result<ExitCode> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("cannot write man pages to {}", man.display()))?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::PowerShell] {
        clap_complete::generate_to(shell, &mut cmd, BIN, &completions)
            .with_context(|| format!("cannot write {shell} completions to {}", completions.display()))?;
    }
    println!("wrote man pages to {} and completions to {}", man.display(), completions.display());
    Ok(ExitCode::SUCCESS)
}
