//! One module per subcommand; `run` resolves the config once and dispatches.

mod assets;
mod client;
pub(crate) mod collections;
mod config;
mod daemon;
mod diag;
pub(crate) mod index;
mod jobs;
mod keys;
mod models;
pub(crate) mod prompts;
mod ps;
mod quantize;
mod quantize_task;
mod run;
pub(crate) mod search;
mod serve;
mod stop;
mod telemetry;
mod ui;
mod vector;
mod worker;

use std::process::ExitCode;

use anyhow::Context;
use ondevice_config::{Environment, Overrides, Resolved};

use crate::cli::{Cli, Command, ConfigCommand};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let listen = match &cli.command {
        Command::Serve(a) => a.listen,
        Command::Daemon(crate::cli::DaemonCommand::Start(a)) => a.listen,
        _ => None,
    };
    let overrides = Overrides {
        listen,
        log_format: cli.log_format,
        log_level: cli.log_level.clone(),
        config_file: cli.config.clone(),
    };
    // `config check` validates a file on its own, without the environment.
    if let Command::Config(ConfigCommand::Check { file }) = &cli.command {
        return config::check(file);
    }
    // Installer assets come from the CLI definition alone: no config, no home.
    if let Command::GenerateAssets { out } = &cli.command {
        return assets::run(out);
    }
    // A quantize task, like a model worker below, is started by the supervisor with everything it
    // needs on its command line.
    if let Command::QuantizeTask { request } = &cli.command {
        return quantize_task::run(request);
    }
    // A model worker is started by the supervisor with everything it needs on its command line.
    if let Command::Worker(args) = &cli.command {
        return worker::run(args, cli.log_format, cli.log_level.as_deref());
    }
    if !matches!(cli.command, Command::Serve(_)) {
        restore_default_sigpipe();
    }
    let resolved = ondevice_config::load(&Environment::from_process(), &overrides)?;
    match cli.command {
        Command::Serve(_) => serve::run(resolved),
        Command::Daemon(cmd) => with_runtime(daemon::run(resolved, cmd, overrides)),
        Command::Keys(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(keys::run(resolved, cmd))
        }
        Command::Models(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(models::run(resolved, cmd))
        }
        Command::Jobs(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(jobs::run(resolved, cmd))
        }
        Command::Collections(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(collections::run(resolved, cmd))
        }
        Command::Index(args) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(index::run(resolved, args))
        }
        Command::Search(args) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(search::run(resolved, args))
        }
        Command::Prompts(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(prompts::run(resolved, cmd))
        }
        Command::Run(args) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(run::run(resolved, args))
        }
        Command::Quantize(args) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(quantize::run(resolved, args))
        }
        Command::Ps(flag) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(ps::run(resolved, flag))
        }
        Command::Stop { model } => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(stop::run(resolved, model))
        }
        Command::Diag(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(diag::run(resolved, cmd))
        }
        Command::Telemetry(cmd) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            telemetry::run(resolved, cmd)
        }
        Command::Ui(flag) => {
            let _guard = crate::logging::init(&quiet(&resolved), None)?;
            with_runtime(ui::run(resolved, flag))
        }
        Command::Config(cmd) => config::run(resolved, cmd),
        Command::GenerateAssets { out } => assets::run(&out),
        Command::QuantizeTask { request } => quantize_task::run(&request),
        Command::Worker(args) => worker::run(&args, cli.log_format, cli.log_level.as_deref()),
    }
}

/// Client commands log only warnings unless asked otherwise.
fn quiet(resolved: &Resolved) -> ondevice_config::LogSettings {
    let mut s = resolved.settings.log.clone();
    if s.level == "info" {
        s.level = "warn".to_owned();
    }
    s
}

fn with_runtime<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// Client commands exit quietly when their output pipe closes (`ondevice models list | head`),
/// like other Unix tools. The daemon keeps Rust's default (SIGPIPE ignored): a client that goes
/// away must never kill it. Windows has no SIGPIPE.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: called on the main thread before any other thread exists; SIG_DFL installs no
        // Rust code as a handler.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
}
