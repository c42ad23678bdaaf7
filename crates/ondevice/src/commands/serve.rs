//! `ondevice serve`: wires the store, the verifier and the edge, then serves until SIGTERM/SIGINT
//! (Ctrl+C on Windows) or a stop request on the control socket, and stops gracefully.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ondevice_auth::{Bootstrap, Verifier};
use ondevice_config::Resolved;
use ondevice_registry::Registry;
use ondevice_registry::RegistryModels;
use ondevice_server::{AppState, DaemonEvent, EdgeOptions, Services, control, listener};
use ondevice_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::signals::StopSignals;
use crate::supervision::SupervisedWorkers;

pub fn run(resolved: Resolved) -> anyhow::Result<ExitCode> {
    let paths = resolved.paths.clone();
    create_private_dir(&paths.home)?;
    let _log = crate::logging::init(&resolved.settings.log, Some(&paths.logs()))?;
    crate::diagnostics::install_daemon_panic_hook(&paths.home);
    let _lock = PidLock::acquire(&paths.pid_file(), &paths.home)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ondevice-edge")
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(resolved))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(resolved: Resolved) -> anyhow::Result<()> {
    let settings = &resolved.settings;
    let paths = &resolved.paths;
    let store = Arc::new(Store::open(&paths.database())?);
    // Every outbound connection passes one gate: offline mode and the egress ledger.
    crate::egress::install(store.clone(), settings.network.offline);
    let verifier = Arc::new(Verifier::new(store.clone(), settings.auth.enabled)?);
    let registry = Arc::new(Registry::new(store.clone(), &paths.home)?);
    if settings.auth.enabled {
        match verifier.ensure_bootstrap(&paths.bootstrap_token())? {
            Bootstrap::Created => {
                tracing::info!(path = %paths.bootstrap_token().display(), "wrote a new bootstrap token")
            }
            Bootstrap::Reused => {}
        }
    } else {
        tracing::warn!("auth is disabled: every local process can use this daemon");
    }
    let tls = match &settings.server.tls {
        Some(t) => Some(listener::tls_acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let tcp = TcpListener::bind(settings.server.listen.0)
        .await
        .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    let addr = tcp.local_addr()?;
    let shutdown = CancellationToken::new();
    let options = EdgeOptions {
        listen: addr,
        allowed_hosts: settings.server.allowed_hosts.clone(),
        cors_origins: settings.server.cors_origins.clone(),
        body_limit: settings.server.body_limit.bytes(),
        max_concurrent_requests: settings.server.max_concurrent_requests,
        tls: tls.is_some(),
        ui: (&settings.ui).into(),
    };
    let workers = Arc::new(SupervisedWorkers::start(settings, &paths.logs().join("workers")).await?);
    crate::diagnostics::watch_worker_crashes(workers.supervisor(), &paths.home);
    let orchestrator = crate::inference::orchestrator(
        settings,
        registry.clone(),
        workers.supervisor().clone(),
        &paths.home.join("run"),
    )?;
    // Eviction to make room for a pull leaves loaded models alone.
    registry.set_in_use(Arc::new(orchestrator.loaded_names()));
    // Background jobs (pulls, ...): resumes unfinished ones; stopped (and left resumable) by the
    // shutdown token.
    // Diagnostics bundles are a job kind too (`POST /api/v1/diagnostics/bundle`).
    let bundles = crate::diagnostics::DaemonBundles::new(resolved.clone());
    let diagnostics_kind = Arc::new(ondevice_diagnostics::job::DiagnosticsKind::new(&paths.home, bundles.clone()));
    // Vector collections: embeddings through the orchestrator; indexing and re-embedding are job kinds.
    let vectors =
        super::vector::collections(settings, &paths.home, store.clone(), Arc::new(orchestrator.clone())).await?;
    let (index_kind, reembed_kind) = (vectors.index_kind(), vectors.reembed_kind());
    // Quantizations into the registry: `ondevice quantize-task` run by the supervisor, sandboxed.
    let quantize_kind = ondevice_quantize::job::QuantizeKind::new(
        registry.clone(),
        workers.supervisor().clone(),
        super::quantize::task_config(settings)?,
    );
    let (jobs, pulls) = super::models::start_jobs(settings, registry.clone(), shutdown.clone(), |b| {
        b.kind(diagnostics_kind).kind(index_kind).kind(reembed_kind).kind(quantize_kind)
    })
    .await?;
    let quantizer = ondevice_quantize::job::Quantizer::new(registry.clone(), jobs.clone());
    vectors.set_jobs(jobs.clone());
    // Prompt packs: versions in the registry's blob store (GC roots), token counts and
    // embeddings for budgets through the orchestrator.
    let prompts = ondevice_prompts::Prompts::new(
        Arc::new(ondevice_prompts::Library::new(registry.clone())),
        Some(Arc::new(orchestrator.clone())),
    );
    // The doctor and telemetry views (`/api/v1/diagnostics/doctor`, `/api/v1/telemetry`).
    let inspect = super::diag::DaemonInspect::new(resolved.clone(), store.clone(), addr);
    let services = Services {
        prompts: Some(Arc::new(prompts)),
        inference: Some(Arc::new(orchestrator.clone())),
        jobs: Some(Arc::new(jobs.clone())),
        vectors: Some(Arc::new(vectors.clone())),
        pulls: Some(Arc::new(pulls)),
        diagnostics: Some(Arc::new(ondevice_diagnostics::job::Diagnostics::new(jobs.clone(), &paths.home))),
        quantize: Some(Arc::new(quantizer)),
        inspect: Some(inspect.clone()),
        ..Services::new(verifier.clone(), Arc::new(RegistryModels::new(registry)), workers.clone())
    };
    let state = AppState::new(services, options, shutdown.clone());
    bundles.attach(state.clone(), jobs.clone());
    inspect.attach(state.clone());
    crate::commands::telemetry::spawn_uploader(&resolved, store.clone(), &state, shutdown.clone());
    workers.forward_events(state.clone());
    let (app, health) = ondevice_server::router(state.clone()).await;

    let control_listener = control::bind(&paths.control_socket())?;
    let control_task = tokio::spawn(control::serve(control_listener, state.clone()));
    std::fs::write(paths.listen_file(), format!("{addr}\n"))
        .with_context(|| format!("cannot write {}", paths.listen_file().display()))?;
    tokio::spawn(stop_on_signals(shutdown.clone()));
    let flusher = tokio::spawn(flush_last_used(verifier.clone(), shutdown.clone()));

    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "ondevice ready");
    println!("ondevice listening on {scheme}://{addr}");
    if settings.auth.enabled {
        println!("bootstrap token: {}", paths.bootstrap_token().display());
    }
    let _ = std::io::stdout().flush();

    let grace = Duration::from_secs(settings.server.shutdown_grace_s);
    let stopping = {
        let shutdown = shutdown.clone();
        let state = state.clone();
        let workers = workers.clone();
        async move {
            shutdown.cancelled().await;
            state.publish(DaemonEvent::now("daemon.stopping", serde_json::json!({})));
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            orchestrator.shutdown().await;
            workers.shutdown(grace).await;
        }
    };
    tokio::join!(listener::serve(tcp, tls, app, shutdown.clone(), grace), stopping);
    // Upgraded connections (WebSockets) and gRPC streams are not tracked by the listener.
    state.tasks().close();
    if tokio::time::timeout(grace, state.tasks().wait()).await.is_err() {
        tracing::warn!("streams still open after the grace period; closing them");
    }
    jobs.wait().await;
    if let Err(e) = vectors.flush().await {
        tracing::warn!(error = %e, "cannot save the vector indexes (they are rebuilt from the database at the next start)");
    }
    let _ = flusher.await;
    let _ = control_task.await;
    let _ = std::fs::remove_file(paths.listen_file());
    #[cfg(unix)]
    let _ = std::fs::remove_file(paths.control_socket());
    tracing::info!("ondevice stopped");
    Ok(())
}

async fn stop_on_signals(shutdown: CancellationToken) {
    let mut signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    tokio::select! {
        name = signals.recv() => tracing::info!("{name}: stopping gracefully (again to force)"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
    signals.recv().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

async fn flush_last_used(verifier: Arc<Verifier>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let v = verifier.clone();
        match tokio::task::spawn_blocking(move || v.flush_last_used()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record key use"),
            Err(e) => tracing::warn!(error = %e, "key use flush task failed"),
            Ok(Ok(_)) => {}
        }
        if stop {
            return;
        }
    }
}

/// Creates the data directory readable only by its owner. On Windows it inherits the ACL of its
/// parent, which for the default home (in the user's profile) is private to the user.
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// The pid file, locked for the daemon's lifetime so two daemons never share a home: an exclusive
/// `flock` on Unix; on Windows the file is held open without write sharing, so a second daemon
/// cannot open it for writing.
struct PidLock {
    #[cfg(unix)]
    _lock: nix::fcntl::Flock<File>,
    #[cfg(windows)]
    _lock: File,
}

impl PidLock {
    fn acquire(path: &Path, home: &Path) -> anyhow::Result<PidLock> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(windows)]
        {
            use std::os::windows::fs::OpenOptionsExt;
            const FILE_SHARE_READ: u32 = 1;
            options.share_mode(FILE_SHARE_READ);
        }
        let taken = |pid: String| {
            anyhow::anyhow!(
                "another ondevice daemon (pid {}) is running with home {}: stop it with `ondevice daemon stop`",
                pid.trim(),
                home.display()
            )
        };
        #[cfg(unix)]
        let mut lock = {
            use nix::fcntl::{Flock, FlockArg};
            use std::io::Read;
            let file = options.open(path).with_context(|| format!("cannot open {}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((mut f, _)) => {
                    let mut pid = String::new();
                    let _ = f.read_to_string(&mut pid);
                    return Err(taken(pid));
                }
            }
        };
        #[cfg(windows)]
        let mut lock = {
            const ERROR_SHARING_VIOLATION: i32 = 32;
            match options.open(path) {
                Ok(file) => file,
                Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION) => {
                    return Err(taken(std::fs::read_to_string(path).unwrap_or_default()));
                }
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            }
        };
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        lock.sync_all()?;
        Ok(PidLock { _lock: lock })
    }
}
