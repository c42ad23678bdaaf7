//! What goes into a diagnostics bundle, gathered from this binary's parts: build, machine,
//! config, environment, logs, crash reports, registry integrity and jobs from the home, plus the
//! daemon's status, metrics and jobs when a daemon provides them ([`DaemonData`]). Used by
//! `ondevice diag bundle` (daemon data over the API) and by the daemon's `diagnostics` job
//! (daemon data in process). Everything passes through one [`Redactor`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_diagnostics::crash::{BuildTag, CrashStore};
use ondevice_diagnostics::{BundleCaps, BundleSummary, BundleWriter, Redactor};

/// What a running daemon adds to a bundle.
#[derive(Debug, Default, Clone)]
pub struct DaemonData {
    /// `GET /api/v1/status`.
    pub status: Option<serde_json::Value>,
    /// `GET /metrics`.
    pub metrics: Option<String>,
    /// `GET /api/v1/jobs`.
    pub jobs: Option<serde_json::Value>,
    /// Why there is no daemon data, if there is none.
    pub missing: Option<String>,
}

/// The version of llama.cpp bindings compiled in (from Cargo.lock at build time).
pub const LLAMA_CPP: &str = env!("ONDEVICE_LLAMA_CPP");
/// The source commit, when built from a git checkout.
pub const COMMIT: &str = env!("ONDEVICE_COMMIT");

/// The build's tag for crash reports.
pub fn build_tag() -> BuildTag {
    BuildTag {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: (!COMMIT.is_empty()).then(|| COMMIT.to_owned()),
        engine_cpu: Some(crate::cpu::own_build().to_owned()),
    }
}

/// Version and build facts.
pub fn build_info() -> serde_json::Value {
    let exe = std::env::current_exe().ok();
    let worker_builds: Vec<serde_json::Value> = exe
        .as_deref()
        .map(|exe| {
            let dirs = crate::cpu::search_dirs(exe);
            crate::cpu::Level::ALL
                .into_iter()
                .filter(|l| dirs.iter().any(|d| d.join(crate::cpu::variant_file(*l)).is_file()))
                .map(|l| serde_json::json!(l.name()))
                .collect()
        })
        .unwrap_or_default();
    let chosen = exe.as_deref().map(|exe| {
        let w = crate::cpu::choose_worker(
            exe,
            crate::cpu::own_level(),
            crate::cpu::host_level(),
            &crate::cpu::search_dirs(exe),
        );
        w.level.map_or_else(|| crate::cpu::own_build().to_owned(), |l| l.name().to_owned())
    });
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": (!COMMIT.is_empty()).then_some(COMMIT),
        "features": features(),
        "llama_cpp": LLAMA_CPP,
        "engine_cpu": crate::cpu::own_build(),
        "worker_builds_beside": worker_builds,
        "worker_build_chosen": chosen,
        "host_cpu_level": crate::cpu::host_level().map(|l| l.name()),
        "target": format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    })
}

fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "engine-llama") {
        f.push("engine-llama");
    }
    f
}

/// The redactor for this home and environment: the bootstrap token, `ONDEVICE_API_KEY`, every
/// secret-named environment variable's value and the resolved runtime keys are literals; the home
/// and the user's home directory are paths.
pub fn redactor(resolved: &Resolved) -> Redactor {
    let mut r = Redactor::new();
    if let Ok(t) = std::fs::read_to_string(resolved.paths.bootstrap_token()) {
        r.secret(&t, "token");
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    for v in Redactor::secrets_of_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        r.secret(v, "env-secret");
    }
    for c in resolved.settings.registry.credentials.values() {
        if let Ok(k) = c.token.resolve() {
            r.secret(k.expose(), "registry-credential");
        }
    }
    for cfg in resolved.settings.runtimes.values() {
        if let Some(Ok(k)) = cfg.api_key.as_ref().map(|k| k.resolve()) {
            r.secret(k.expose(), "runtime-key");
        }
    }
    if let Some(file) = &resolved.config_file {
        r.path(&std::path::absolute(file).unwrap_or_else(|_| file.clone()), "$ONDEVICE_CONFIG");
    }
    let home = std::path::absolute(&resolved.paths.home).unwrap_or_else(|_| resolved.paths.home.clone());
    r.path(&home, "$ONDEVICE_HOME");
    if let Ok(c) = std::fs::canonicalize(&home) {
        r.path(&c, "$ONDEVICE_HOME");
    }
    if let Some(user_home) = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")) {
        r.path(Path::new(&user_home), "~");
    }
    r
}

/// Writes a bundle to `out` (blocking: run it on a blocking thread).
pub fn assemble(resolved: &Resolved, daemon: DaemonData, out: &Path) -> anyhow::Result<BundleSummary> {
    let home = &resolved.paths.home;
    let mut w =
        BundleWriter::new(redactor(resolved), BundleCaps::default(), format!("ondevice {}", env!("CARGO_PKG_VERSION")));
    w.json("build.json", &build_info());
    w.json("system.json", &serde_json::to_value(ondevice_diagnostics::system::collect(home)).unwrap_or_default());
    let mut config = format!(
        "# source: {}\n",
        resolved
            .config_file
            .as_ref()
            .map_or_else(|| "defaults (no config file)".to_owned(), |p| p.display().to_string())
    );
    config.push_str(&ondevice_config::to_redacted_toml(&resolved.settings));
    w.text("config.toml", &config);
    w.json("environment.json", &environment());
    match (&daemon.status, &daemon.missing) {
        (Some(s), _) => w.json("daemon/status.json", s),
        (None, why) => w.omit("daemon/status.json", why.clone().unwrap_or_else(|| "no daemon".into())),
    }
    match &daemon.metrics {
        Some(m) => w.text("daemon/metrics.txt", m),
        None => w.omit("daemon/metrics.txt", daemon.missing.clone().unwrap_or_else(|| "no daemon".into())),
    }
    let jobs = daemon.jobs.clone().or_else(|| jobs_from_store(resolved).ok());
    match jobs {
        Some(j) => w.json("jobs.json", &j),
        None => w.omit("jobs.json", "the job table cannot be read"),
    }
    match registry_report(resolved) {
        Ok(r) => w.json("registry.json", &r),
        Err(e) => w.omit("registry.json", format!("the registry cannot be read: {e:#}")),
    }
    let crashes = CrashStore::new(home);
    for p in crashes.files() {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        w.crash_report(&format!("crashes/{name}"), &p);
    }
    let logs = resolved.paths.logs();
    w.logs_from_dir("logs/daemon", &logs, |n| n.starts_with("ondevice") && n.contains(".log"));
    w.logs_from_dir("logs/workers", &logs.join("workers"), |n| n.contains(".log"));
    match crate::egress::ledger_json(resolved, 1000) {
        Ok(v) => w.json("egress.json", &v),
        Err(e) => w.omit("egress.json", format!("the egress ledger cannot be read: {e:#}")),
    }
    let summary = w.write(out).with_context(|| format!("cannot write the bundle {}", out.display()))?;
    Ok(summary)
}

/// `ONDEVICE_*` and the telemetry switches, secret-named values replaced.
fn environment() -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in std::env::vars() {
        if k.starts_with("ONDEVICE_") || k == "DO_NOT_TRACK" {
            let v =
                if ondevice_diagnostics::redact::is_secret_name(&k) { "[REDACTED:secret-value]".to_owned() } else { v };
            m.insert(k, serde_json::Value::String(v));
        }
    }
    serde_json::Value::Object(m)
}

fn open_registry(resolved: &Resolved) -> anyhow::Result<ondevice_registry::Registry> {
    let db = resolved.paths.database();
    anyhow::ensure!(db.is_file(), "no database yet");
    let store = Arc::new(ondevice_store::Store::open(&db)?);
    Ok(ondevice_registry::Registry::new(store, &resolved.paths.home)?)
}

/// Each model with whether its blob is present with the recorded size (no re-hash: bounded time;
/// `ondevice models verify` re-hashes).
fn registry_report(resolved: &Resolved) -> anyhow::Result<serde_json::Value> {
    let reg = open_registry(resolved)?;
    let models: Vec<serde_json::Value> = reg
        .list()?
        .into_iter()
        .map(|m| {
            let path = reg.blobs().path(&m.digest);
            let status = match std::fs::metadata(&path) {
                Err(_) => "missing".to_owned(),
                Ok(md) if md.len() == m.size || m.format != "gguf" => "present".to_owned(),
                Ok(md) => format!("size mismatch: {} bytes on disk, {} recorded", md.len(), m.size),
            };
            serde_json::json!({
                "model": m.reference(),
                "digest": m.digest.to_string(),
                "format": m.format,
                "size": m.size,
                "pinned": m.pinned,
                "blob": status,
            })
        })
        .collect();
    Ok(serde_json::json!({ "check": "presence and size (no re-hash)", "models": models }))
}

fn jobs_from_store(resolved: &Resolved) -> anyhow::Result<serde_json::Value> {
    let db = resolved.paths.database();
    anyhow::ensure!(db.is_file(), "no database yet");
    let store = ondevice_store::Store::open(&db)?;
    let rows = store.list_jobs(None, None)?;
    Ok(serde_json::json!(
        rows.iter()
            .rev()
            .take(100)
            .map(|r| serde_json::json!({
                "id": r.id, "kind": r.kind, "state": r.state, "error": r.error,
                "done": r.done, "total": r.total, "unit": r.unit,
                "created_at": r.created_at, "finished_at": r.finished_at,
            }))
            .collect::<Vec<_>>()
    ))
}

/// The jobs list as the API gives it, without specs (they may hold URLs): id, kind, state,
/// progress, error, times.
pub fn jobs_summary(list: &serde_json::Value) -> serde_json::Value {
    let items = list.get("jobs").or(Some(list)).and_then(|v| v.as_array()).cloned().unwrap_or_default();
    serde_json::json!(
        items
            .iter()
            .rev()
            .take(100)
            .map(|j| serde_json::json!({
                "id": j["id"], "kind": j["kind"], "state": j["state"], "error": j["error"],
                "progress": j["progress"], "created_at": j["created_at"], "finished_at": j["finished_at"],
            }))
            .collect::<Vec<_>>()
    )
}

/// A default file name for a bundle in the current directory.
pub fn default_output() -> PathBuf {
    PathBuf::from(format!("ondevice-diagnostics-{}.tar.gz", ondevice_diagnostics::now_unix()))
}

/// Files a crash report whenever a supervised worker dies of a crash signal or a panic (see
/// `ondevice_diagnostics::crash::from_worker_exit`); the worker's own panic report, printed on its
/// stderr, is taken from its log. Runs until the supervisor's event channel closes.
pub fn watch_worker_crashes(supervisor: &ondevice_supervisor::Supervisor, home: &Path) {
    use ondevice_diagnostics::crash::{WorkerExit, from_worker_exit, read_log_tail};
    use ondevice_supervisor::EventKind;
    let mut rx = supervisor.subscribe();
    let store = CrashStore::new(home);
    let sup = supervisor.clone();
    tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let EventKind::Exited { exit } = &ev.kind else { continue };
            let exit =
                WorkerExit { code: exit.code, signal: exit.signal, killed_by_supervisor: exit.killed_by.is_some() };
            let (store, log, worker) = (store.clone(), sup.log_path(&ev.worker), ev.worker.clone());
            let filed = tokio::task::spawn_blocking(move || {
                let tail = read_log_tail(&log, 64 * 1024);
                let report = from_worker_exit(&worker, exit, &tail, &build_tag(), |id| store.contains(id))?;
                Some((worker, store.write(&report).map(|p| (p, report.summary()))))
            })
            .await;
            match filed {
                Ok(Some((worker, Ok((path, summary))))) => {
                    tracing::error!(%worker, report = %path.display(), "worker crashed: {summary}; see `ondevice diag crashes`");
                }
                Ok(Some((worker, Err(e)))) => tracing::warn!(%worker, error = %e, "cannot write a crash report"),
                Ok(None) | Err(_) => {}
            }
        }
    });
}

/// The daemon's panic hook: a report under `$ONDEVICE_HOME/crashes` for every panic (a panic in
/// a request or job task is that task's failure; the report says where it happened).
pub fn install_daemon_panic_hook(home: &Path) {
    use ondevice_diagnostics::crash::{HookTarget, install_panic_hook};
    install_panic_hook(HookTarget::Store(CrashStore::new(home)), "daemon", build_tag());
}

/// The daemon's [`BundleMaker`](ondevice_diagnostics::job::BundleMaker): the same bundle as
/// `ondevice diag bundle`, with the daemon's status, metrics and jobs taken in process. The edge
/// state and the queue exist only after the job kinds are registered, so they are set later.
pub struct DaemonBundles {
    resolved: Resolved,
    state: std::sync::OnceLock<ondevice_server::AppState>,
    jobs: std::sync::OnceLock<ondevice_jobs::Jobs>,
}

impl DaemonBundles {
    /// Bundles of this daemon's home and config.
    pub fn new(resolved: Resolved) -> Arc<DaemonBundles> {
        Arc::new(DaemonBundles { resolved, state: std::sync::OnceLock::new(), jobs: std::sync::OnceLock::new() })
    }

    /// Sets the edge state and the queue once they exist.
    pub fn attach(&self, state: ondevice_server::AppState, jobs: ondevice_jobs::Jobs) {
        let _ = self.state.set(state);
        let _ = self.jobs.set(jobs);
    }

    async fn daemon_data(&self) -> DaemonData {
        let Some(state) = self.state.get() else {
            return DaemonData { missing: Some("the daemon is still starting".into()), ..DaemonData::default() };
        };
        let status = serde_json::to_value(state.status()).ok();
        let metrics = Some(state.metrics().render(&state.status_source().workers()));
        let jobs = match self.jobs.get() {
            Some(j) => j.list(&ondevice_jobs::JobFilter::default()).await.ok().map(|list| {
                serde_json::json!(
                    list.iter()
                        .rev()
                        .take(100)
                        .map(|s| serde_json::json!({
                            "id": s.id, "kind": s.kind, "state": s.state.as_str(), "error": s.error,
                            "progress": {"done": s.progress.done, "total": s.progress.total, "unit": s.progress.unit},
                            "created_at": s.created_at, "finished_at": s.finished_at,
                        }))
                        .collect::<Vec<_>>()
                )
            }),
            None => None,
        };
        DaemonData { status, metrics, jobs, missing: None }
    }
}

impl ondevice_diagnostics::job::BundleMaker for DaemonBundles {
    fn make(
        &self,
        out: PathBuf,
    ) -> ondevice_jobs::BoxFuture<'_, Result<BundleSummary, ondevice_diagnostics::DiagError>> {
        Box::pin(async move {
            let daemon = self.daemon_data().await;
            let resolved = self.resolved.clone();
            let target = out.clone();
            let made = tokio::task::spawn_blocking(move || assemble(&resolved, daemon, &target)).await;
            let failed =
                |e: String| ondevice_diagnostics::DiagError::Io { path: out.clone(), source: std::io::Error::other(e) };
            match made {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(failed(format!("{e:#}"))),
                Err(e) => Err(failed(e.to_string())),
            }
        })
    }
}
