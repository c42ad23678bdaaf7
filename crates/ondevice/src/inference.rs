//! Wires inference: registry models as the orchestrator's model source, engine workers started
//! through the supervisor (one `ondevice worker` process per loaded model, sandboxed), the external
//! runtimes from `[runtimes.NAME]`, and the orchestrator that routes between them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ondevice_config::Settings;
use ondevice_config::inference::KeepAlive;
use ondevice_orchestrator::{HealthPolicy, LocalModel, ModelSource, Options, Orchestrator, Route};
use ondevice_registry::{ModelRef, Registry, RegistryError};
use ondevice_runtime::{BoxFuture, ModelEntry, ModelSpec, Runtime, RuntimeError};
use ondevice_supervisor::{ProbeCheck, ProbeSpec, RestartPolicy, Supervisor, WorkerSpec};

/// The registry seen by the orchestrator.
pub struct RegistryModels(pub Arc<Registry>);

impl ModelSource for RegistryModels {
    fn resolve(&self, name: &str) -> Result<Option<LocalModel>, RuntimeError> {
        let Ok(r) = name.parse::<ModelRef>() else {
            return Ok(None); // not a registry name; maybe a remote runtime's
        };
        match self.0.show(&r) {
            Ok(m) if m.format != "gguf" => Err(RuntimeError::InvalidRequest {
                message: format!(
                    "{} is a {} model; the embedded engine runs GGUF files: convert it to GGUF first",
                    m.reference(),
                    m.format
                ),
            }),
            Ok(m) => {
                // Use time for least-recently-used eviction; a failed write must not fail the request.
                if let Err(e) = self.0.touch(&m) {
                    tracing::warn!(model = %m.reference(), error = %e, "cannot record the model's use time");
                }
                Ok(Some(LocalModel {
                    name: m.reference(),
                    path: self.0.blobs().path(&m.digest),
                    size_bytes: m.size,
                    context_length: m.context_length.and_then(|c| u32::try_from(c).ok()),
                }))
            }
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(RuntimeError::Engine { message: format!("registry: {e}") }),
        }
    }

    fn list(&self) -> Result<Vec<ModelEntry>, RuntimeError> {
        let models = self.0.list().map_err(|e| RuntimeError::Engine { message: format!("registry: {e}") })?;
        Ok(models
            .into_iter()
            .map(|m| ModelEntry {
                name: m.reference(),
                digest: Some(m.digest.to_string()),
                size_bytes: Some(m.size),
                created: Some(m.created_at),
                family: m.architecture,
                quantization: m.quantization,
                parameters: m.parameter_count,
                runtimes: Vec::new(),
            })
            .collect())
    }
}

/// Starts and stops engine workers through the supervisor.
pub struct EngineWorkers {
    supervisor: Supervisor,
    engine: ondevice_config::inference::EngineSettings,
    run_dir: PathBuf,
    /// The worker program: this binary or the worker build for a higher or lower CPU level.
    exe: PathBuf,
}

impl EngineWorkers {
    /// Engine workers whose sockets live in `run_dir` (created 0700).
    pub fn new(supervisor: Supervisor, settings: &Settings, run_dir: &Path) -> anyhow::Result<Self> {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let me = std::env::current_exe().context("cannot locate the ondevice binary to start engine workers")?;
        let host = crate::cpu::host_level();
        let build = crate::cpu::choose_worker(&me, crate::cpu::own_level(), host, &crate::cpu::search_dirs(&me));
        tracing::info!(
            program = %build.program.display(),
            kernels = build.level.map_or(crate::cpu::own_build(), crate::cpu::Level::name),
            host = host.map_or("-", crate::cpu::Level::name),
            "engine workers run this build"
        );
        Ok(EngineWorkers {
            supervisor,
            engine: settings.engine.clone(),
            run_dir: run_dir.to_path_buf(),
            exe: build.program,
        })
    }

    fn worker_name(model: &str) -> String {
        let clean: String =
            model.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
        format!("engine-{}", clean.chars().take(48).collect::<String>())
    }

    /// The socket of a model's worker. Unix socket paths are short (108 bytes), so the name is a hash.
    /// On Windows a named pipe; pipe names are machine-wide, so the run directory (per user and
    /// home) is hashed in too.
    fn socket(&self, model: &str) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        model.hash(&mut h);
        if cfg!(windows) {
            self.run_dir.hash(&mut h);
            return PathBuf::from(format!(r"\\.\pipe\ondevice-engine-{:016x}", h.finish()));
        }
        self.run_dir.join(format!("engine-{:016x}.sock", h.finish()))
    }

    /// Starts (or finds running) the worker serving `spec`; returns its socket path.
    pub async fn start(&self, spec: &ModelSpec) -> Result<PathBuf, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable { adapter: "embedded".into(), reason };
        let path = spec.path.clone().ok_or_else(|| RuntimeError::InvalidRequest {
            message: format!("model {:?} has no local file for the embedded engine", spec.name),
        })?;
        let name = Self::worker_name(&spec.name);
        let socket = self.socket(&spec.name);
        if self.supervisor.worker_status(&name).is_some() {
            return Ok(socket);
        }
        #[cfg(unix)]
        let _ = std::fs::remove_file(&socket);
        let ctx = spec.context_length.map_or(self.engine.context_length, |c| c.min(self.engine.context_length));
        let mut command: Vec<std::ffi::OsString> = vec![
            self.exe.clone().into(),
            "worker".into(),
            "--model".into(),
            path.clone().into(),
            "--socket".into(),
            socket.clone().into(),
            "--ctx".into(),
            ctx.to_string().into(),
            "--parallel".into(),
            self.engine.parallel.to_string().into(),
        ];
        if self.engine.threads > 0 {
            command.extend(["--threads".into(), self.engine.threads.to_string().into()]);
        }
        let mut ws = WorkerSpec::new(&name, command);
        ws.restart = RestartPolicy::OnFailure;
        ws.required = false;
        ws.stop_grace = Duration::from_secs(5);
        let mut readiness = ProbeSpec::new(ProbeCheck::Unix(socket.clone()));
        readiness.period = Duration::from_millis(500);
        ws.readiness = Some(readiness);
        if let Some(digest) = ondevice_diagnostics::crash::digest_of_blob_path(&path) {
            // Crash reports of this worker name the model.
            ondevice_diagnostics::crash::tag_worker_model(&name, &digest);
        }
        let mut sandbox = self.engine.sandbox.clone();
        // The model is read-only for the worker; only its runtime directory is writable.
        sandbox.fs_read.push(path);
        sandbox.fs_read.push(self.exe.clone());
        sandbox.fs_write.push(self.run_dir.clone());
        ws.sandbox = ondevice_supervisor::sandbox_policy(&sandbox);
        self.supervisor.add(ws).await.map_err(|e| unavailable(format!("cannot start the engine worker: {e}")))?;
        Ok(socket)
    }

    /// Stops a model's worker; a missing worker is not an error.
    pub async fn stop(&self, model: &str) {
        let name = Self::worker_name(model);
        if let Err(e) = self.supervisor.remove(&name, Duration::from_secs(5)).await {
            tracing::debug!(worker = %name, error = %e, "engine worker already gone");
        }
        #[cfg(unix)]
        let _ = std::fs::remove_file(self.socket(model));
    }

    /// Whether the worker exists and has not been given up.
    pub fn is_running(&self, model: &str) -> bool {
        self.supervisor
            .worker_status(&Self::worker_name(model))
            .is_some_and(|s| !matches!(s.state.as_str(), "failed" | "stopped" | "exited"))
    }
}

impl ondevice_adapters::embedded::WorkerLauncher for EngineWorkers {
    fn start(&self, model: &ModelSpec) -> BoxFuture<'_, Result<PathBuf, RuntimeError>> {
        let model = model.clone();
        Box::pin(async move { EngineWorkers::start(self, &model).await })
    }

    fn stop(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move {
            EngineWorkers::stop(self, &model).await;
            Ok(())
        })
    }

    fn is_running(&self, model: &str) -> bool {
        EngineWorkers::is_running(self, model)
    }
}

/// Orchestrator options from `[inference]`.
pub fn options(settings: &Settings) -> anyhow::Result<Options> {
    let i = &settings.inference;
    let keep_alive = match KeepAlive::parse(&i.keep_alive).map_err(anyhow::Error::msg)? {
        KeepAlive::For(d) => Some(d),
        KeepAlive::Forever => None,
    };
    Ok(Options {
        keep_alive,
        max_loaded: i.max_loaded_models as usize,
        memory_budget: i.memory_budget.map(|b| b.bytes()),
        max_concurrent: i.max_concurrent as usize,
        queue_depth: i.queue_depth as usize,
        max_tokens: Some(i.max_tokens),
        max_embed_inputs: Some(i.max_embed_inputs as usize),
        default_runtimes: i.default_runtimes.clone(),
        breaker_failures: i.breaker.failures,
        breaker_open: Duration::from_secs(i.breaker.open_s),
        routes: i
            .models
            .iter()
            .map(|(k, v)| (k.clone(), Route { runtimes: v.runtimes.clone(), upstream: v.upstream.clone() }))
            .collect(),
        health: settings
            .runtimes
            .iter()
            .map(|(name, r)| {
                let policy = HealthPolicy {
                    period: Duration::from_secs(r.health.period_s),
                    timeout: Duration::from_secs(r.health.timeout_s),
                    failure_threshold: r.health.failure_threshold,
                };
                (name.clone(), policy)
            })
            .collect(),
        ..Options::default()
    })
}

/// Builds the orchestrator over the embedded engine (workers under `supervisor`, sockets in
/// `run_dir`) and the runtimes of `[runtimes.NAME]`.
pub fn orchestrator(
    settings: &Settings,
    registry: Arc<Registry>,
    supervisor: Supervisor,
    run_dir: &Path,
) -> anyhow::Result<Orchestrator> {
    let launcher = Arc::new(EngineWorkers::new(supervisor, settings, run_dir)?);
    let embedded_options = ondevice_adapters::embedded::EmbeddedOptions {
        load_timeout: Duration::from_secs(settings.engine.load_timeout_s),
        max_embed_input_tokens: Some(settings.inference.max_embed_input_tokens),
        ..Default::default()
    };
    let mut runtimes: Vec<Arc<dyn Runtime>> =
        vec![Arc::new(ondevice_adapters::embedded::EmbeddedAdapter::new("embedded", launcher, embedded_options))];
    for (name, cfg) in &settings.runtimes {
        let key = match &cfg.api_key {
            Some(r) => Some(r.resolve().with_context(|| format!("runtimes.{name}.api_key"))?),
            None => None,
        };
        let adapter = ondevice_adapters::from_config(name, cfg, key)
            .with_context(|| format!("cannot set up runtime {name:?}"))?;
        runtimes.push(adapter);
    }
    Ok(Orchestrator::new(runtimes, Arc::new(RegistryModels(registry)), options(settings)?))
}
