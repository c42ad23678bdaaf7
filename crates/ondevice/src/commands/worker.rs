//! `ondevice worker` (hidden): serves one GGUF model on a Unix socket (a named pipe on Windows) for
//! the daemon, speaking `ondevice_runtime::wire`. Started and sandboxed by the supervisor; needs no config file and no
//! home directory. Logs go to stderr, which the supervisor captures. Exits non-zero when the model
//! cannot be loaded; SIGTERM or SIGINT stop it gracefully.

use std::process::ExitCode;

use ondevice_config::LogFormat;

use crate::cli::WorkerArgs;

/// Loads the model, then serves until SIGTERM/SIGINT.
#[cfg(feature = "engine-llama")]
pub fn run(args: &WorkerArgs, format: Option<LogFormat>, level: Option<&str>) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;

    use anyhow::Context;
    use ondevice_engine_llama::{Engine, EngineConfig};

    init_logging(format, level)?;
    // Sandboxed: the report goes to stderr, which the daemon captures and files (`diag crashes`).
    ondevice_diagnostics::crash::install_panic_hook(
        ondevice_diagnostics::crash::HookTarget::Stderr,
        "worker",
        crate::diagnostics::build_tag(),
    );
    check_cpu()?;
    let mut config = EngineConfig::new(&args.model);
    config.threads = args.threads;
    config.ctx_per_slot = args.ctx;
    config.parallel = args.parallel;
    let engine = Arc::new(Engine::load(config)?);
    crash_for_tests();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        ondevice_engine_llama::server::serve(engine, &args.socket, shutdown).await?;
        tracing::info!("worker stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The engine's kernels are built for one x86-64 level (`crate::cpu`); on an older CPU they would
/// die of SIGILL mid-load, so refuse up front with a message the daemon logs.
#[cfg(feature = "engine-llama")]
fn check_cpu() -> anyhow::Result<()> {
    let Some(level) = crate::cpu::own_level() else { return Ok(()) };
    let missing = level.missing_on_host();
    if !missing.is_empty() {
        anyhow::bail!(
            "this CPU lacks {} which this build of the embedded engine needs ({}): install the package's {} \
             worker build beside ondevice, or use an external runtime ([runtimes.NAME])",
            missing.join(", "),
            level.name(),
            crate::cpu::variant_file(crate::cpu::Level::V2),
        );
    }
    tracing::debug!(build = level.name(), "engine kernels match this CPU");
    Ok(())
}

/// Tests of crash capture make a worker die after loading its model, the way a crash inside
/// llama.cpp would: `ONDEVICE_TEST_WORKER_CRASH=abort|segv|panic` (inherited from the daemon).
/// Unset in normal use; any other value is ignored.
#[cfg(feature = "engine-llama")]
fn crash_for_tests() {
    match std::env::var("ONDEVICE_TEST_WORKER_CRASH").as_deref() {
        Ok("abort") => {
            eprintln!("ONDEVICE_TEST_WORKER_CRASH=abort: aborting");
            std::process::abort();
        }
        #[cfg(unix)]
        Ok("segv") => {
            eprintln!("ONDEVICE_TEST_WORKER_CRASH=segv: raising SIGSEGV");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSEGV);
        }
        Ok("panic") => panic!("ONDEVICE_TEST_WORKER_CRASH=panic: panicking"),
        _ => {}
    }
}

/// Without the engine compiled in, the worker cannot run.
#[cfg(not(feature = "engine-llama"))]
pub fn run(_: &WorkerArgs, _: Option<LogFormat>, _: Option<&str>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this ondevice was built without the embedded engine: rebuild with --features engine-llama")
}

/// Completes on the first SIGTERM or SIGINT (Ctrl+C or Ctrl+Break on Windows).
#[cfg(feature = "engine-llama")]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut signals = crate::signals::StopSignals::install()?;
    Ok(async move {
        let name = signals.recv().await;
        tracing::info!("{name}: finishing requests in flight");
    })
}

/// stderr only: `--log-level`, else `$ONDEVICE_LOG`, else `info`.
#[cfg(feature = "engine-llama")]
fn init_logging(format: Option<LogFormat>, level: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    use tracing_subscriber::EnvFilter;

    let level =
        level.map(str::to_owned).or_else(|| std::env::var("ONDEVICE_LOG").ok()).unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&level).with_context(|| format!("invalid log level {level:?}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format.unwrap_or(LogFormat::Text) {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}
