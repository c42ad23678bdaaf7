//! `ondevice serve`: wires the store, the verifier and the edge, then serves until SIGTERM/SIGINT
//! or a stop request on the control socket, and stops gracefully.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use ondevice_auth::{Bootstrap, Verifier};
use ondevice_config::Resolved;
use ondevice_registry::Registry;
use ondevice_server::{AppState, DaemonEvent, EdgeOptions, control, listener};
use ondevice_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::supervision::SupervisedWorkers;

pub fn run(resolved: Resolved) -> anyhow::Result<ExitCode> {
    let paths = resolved.paths.clone();
    create_private_dir(&paths.home)?;
    let _log = crate::logging::init(&resolved.settings.log, Some(&paths.logs()))?;
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
    let verifier = Arc::new(Verifier::new(store.clone(), settings.auth.enabled)?);
    let registry = Arc::new(Registry::new(store, &paths.home)?);
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
    };
    let workers = Arc::new(SupervisedWorkers::start(settings, &paths.logs().join("workers")).await?);
    let orchestrator = crate::inference::orchestrator(
        settings,
        registry.clone(),
        workers.supervisor().clone(),
        &paths.home.join("run"),
    )?;
    // Model pulls: resumes unfinished ones; stopped (and left resumable) by the shutdown token.
    let jobs = super::models::start_jobs(settings, registry.clone(), shutdown.clone()).await?;
    let state = AppState::new(verifier.clone(), registry, options, workers.clone(), shutdown.clone())
        .with_inference(Arc::new(orchestrator.clone()))
        .with_jobs(jobs.clone());
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
    let _ = flusher.await;
    let _ = control_task.await;
    let _ = std::fs::remove_file(paths.listen_file());
    let _ = std::fs::remove_file(paths.control_socket());
    tracing::info!("ondevice stopped");
    Ok(())
}

async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
        _ = int.recv() => tracing::info!("SIGINT: stopping gracefully (again to force)"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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

/// Creates the data directory readable only by its owner.
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// The pid file, locked for the daemon's lifetime so two daemons never share a home.
struct PidLock {
    _lock: Flock<File>,
}

impl PidLock {
    fn acquire(path: &Path, home: &Path) -> anyhow::Result<PidLock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut f, _)) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                bail!(
                    "another ondevice daemon (pid {}) is running with home {}: stop it with `ondevice daemon stop`",
                    pid.trim(),
                    home.display()
                );
            }
        };
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        lock.sync_all()?;
        Ok(PidLock { _lock: lock })
    }
}
