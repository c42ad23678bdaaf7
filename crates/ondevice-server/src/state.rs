//! Shared state of the edge and the seam through which services report status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ondevice_auth::Verifier;
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::metrics::Metrics;
use ondevice_jobs::JobService;
use ondevice_registry::ModelService;
use ondevice_registry::jobs::PullService;
use ondevice_runtime::Inference;
use ondevice_vector::VectorService;

/// The services the edge calls, each behind the small contract its domain crate defines. The
/// binary builds them (`commands/serve.rs`) and hands them over once, at construction; the edge
/// never names a concrete registry, queue or orchestrator. A service left `None` makes its routes
/// answer 503 (tests wire only what they exercise).
pub struct Services {
    /// Verifies keys on every surface.
    pub verifier: Arc<Verifier>,
    /// The model registry (native models routes, gRPC `ModelsService`).
    pub models: Arc<dyn ModelService>,
    /// Workers and sandbox status.
    pub status: Arc<dyn StatusSource>,
    /// The inference facade (the orchestrator) that the OpenAI, Ollama, native, WebSocket and
    /// gRPC surfaces call; without it they answer 503 `runtime_unavailable`.
    pub inference: Option<Arc<dyn Inference>>,
    /// The durable job queue (`/api/v1/jobs`, gRPC `JobsService`).
    pub jobs: Option<Arc<dyn JobService>>,
    /// Pulls, a kind of job (`/api/v1/models/pull`, the catalog).
    pub pulls: Option<Arc<dyn PullService>>,
    /// Vector collections (`/api/v1/collections`).
    pub vectors: Option<Arc<dyn VectorService>>,
    /// Diagnostics bundles, a kind of job (`/api/v1/diagnostics`).
    pub diagnostics: Option<Arc<dyn ondevice_diagnostics::job::DiagnosticsService>>,
    /// The doctor's checks and telemetry's status and preview (`/api/v1/diagnostics/doctor`,
    /// `/api/v1/telemetry`), read-only.
    pub inspect: Option<Arc<dyn ondevice_diagnostics::inspect::InspectService>>,
    /// Prompt packs (`/api/v1/prompts`, gRPC `PromptService`).
    pub prompts: Option<Arc<dyn ondevice_prompts::PromptService>>,
    /// Quantizations into the registry, a kind of job (`/api/v1/quantize`).
    pub quantize: Option<Arc<dyn ondevice_quantize::job::QuantizeService>>,
}

impl Services {
    /// The required services; every optional one unset.
    pub fn new(verifier: Arc<Verifier>, models: Arc<dyn ModelService>, status: Arc<dyn StatusSource>) -> Services {
        Services {
            verifier,
            models,
            status,
            inference: None,
            jobs: None,
            pulls: None,
            vectors: None,
            diagnostics: None,
            inspect: None,
            prompts: None,
            quantize: None,
        }
    }
}

/// One supervised worker as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    /// Worker name.
    pub name: String,
    /// `starting`, `running`, `ready`, `backoff`, `stopped`, `failed`, ...
    pub state: String,
    /// Restarts so far.
    pub restarts: u32,
    /// Exits so far that were kills for memory (the sandbox's limit or the kernel's OOM killer).
    pub oom_kills: u64,
    /// The last exit: exit code or signal, and whether the sandbox killed it for memory.
    pub last_exit: Option<ExitView>,
    /// Unix seconds of the next restart, when one is scheduled.
    pub next_restart_at: Option<i64>,
    /// What the sandbox enforces for this worker on this host.
    pub protection: serde_json::Value,
    /// Whether the worker counts for `/readyz`.
    pub required: bool,
    /// Whether the worker passes its readiness probe.
    pub ready: bool,
    /// Failed probe checks so far.
    pub probe_failures: ProbeFailuresView,
}

/// Failed probe checks of a worker, by probe.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct ProbeFailuresView {
    /// Startup probe failures.
    pub startup: u64,
    /// Liveness probe failures.
    pub liveness: u64,
    /// Readiness probe failures.
    pub readiness: u64,
}

/// How a worker last exited.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExitView {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if it was killed.
    pub signal: Option<i32>,
    /// Killed by the memory limit.
    pub oom: bool,
}

/// Where the daemon's status comes from beyond the edge itself (the supervisor, later the
/// orchestrator). The daemon wires the real source; [`NoWorkers`] says honestly there are none.
pub trait StatusSource: Send + Sync {
    /// Every worker.
    fn workers(&self) -> Vec<WorkerView>;
    /// Whether every required worker is ready.
    fn ready(&self) -> bool {
        self.workers().iter().filter(|w| w.required).all(|w| w.ready)
    }
    /// What the host's sandbox can enforce (detection report), `null` if unknown.
    fn sandbox(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restarts a worker now, closing its circuit if it was given up.
    fn restart_worker<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { Err(ApiError::NotFound(format!("no worker named {name:?}"))) })
    }
}

/// A boxed future, for the object-safe async methods of [`StatusSource`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A status source for a daemon that supervises no workers.
#[derive(Debug, Default)]
pub struct NoWorkers;

impl StatusSource for NoWorkers {
    fn workers(&self) -> Vec<WorkerView> {
        Vec::new()
    }
}

/// An event pushed to WebSocket and gRPC watchers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DaemonEvent {
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// Kind such as `daemon.stopping` or `worker.state`.
    pub kind: String,
    /// Payload.
    pub data: serde_json::Value,
}

impl DaemonEvent {
    /// An event stamped now.
    pub fn now(kind: &str, data: serde_json::Value) -> DaemonEvent {
        let timestamp_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        DaemonEvent { timestamp_ms, kind: kind.to_owned(), data }
    }
}

/// Settings of the edge that handlers need, resolved at start.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// The address actually bound (port 0 resolved).
    pub listen: SocketAddr,
    /// Host names accepted besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// CORS origins.
    pub cors_origins: Vec<String>,
    /// Largest body in bytes.
    pub body_limit: u64,
    /// Requests at once.
    pub max_concurrent_requests: u32,
    /// Whether TLS is on.
    pub tls: bool,
    /// The web console (`[ui]`).
    pub ui: crate::ui::UiOptions,
}

/// State shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub services: Services,
    pub metrics: Metrics,
    pub options: EdgeOptions,
    pub started: Instant,
    pub shutdown: CancellationToken,
    pub events: broadcast::Sender<DaemonEvent>,
    pub permits: Arc<Semaphore>,
    pub openapi_json: std::sync::OnceLock<String>,
    pub tasks: tokio_util::task::TaskTracker,
    pub sessions: ondevice_auth::Sessions,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("listen", &self.inner.options.listen).finish_non_exhaustive()
    }
}

impl AppState {
    /// The edge's state over the services the binary built.
    pub fn new(services: Services, options: EdgeOptions, shutdown: CancellationToken) -> AppState {
        let (events, _) = broadcast::channel(256);
        AppState {
            inner: Arc::new(Inner {
                services,
                metrics: Metrics::new(),
                permits: Arc::new(Semaphore::new(options.max_concurrent_requests as usize)),
                sessions: ondevice_auth::Sessions::new(options.ui.limits),
                options,
                started: Instant::now(),
                shutdown,
                events,
                openapi_json: std::sync::OnceLock::new(),
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// The inference facade, when one is wired.
    pub fn inference(&self) -> Option<&Arc<dyn Inference>> {
        self.inner.services.inference.as_ref()
    }

    /// The inference facade, or the error every inference route answers without one.
    pub(crate) fn require_inference(&self) -> Result<Arc<dyn Inference>, ApiError> {
        self.inference().cloned().ok_or(ApiError::NoInference)
    }

    /// The job queue, or the error job routes answer without one.
    pub(crate) fn require_jobs(&self) -> Result<&Arc<dyn JobService>, ApiError> {
        self.inner.services.jobs.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The prompt library, or the error prompt routes answer without one.
    pub(crate) fn require_prompts(&self) -> Result<&Arc<dyn ondevice_prompts::PromptService>, ApiError> {
        self.inner.services.prompts.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The pull starter, or the error pull routes answer without one.
    pub(crate) fn require_pulls(&self) -> Result<&Arc<dyn PullService>, ApiError> {
        self.inner.services.pulls.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The quantization service, or the error its routes answer without one.
    pub(crate) fn require_quantize(&self) -> Result<&Arc<dyn ondevice_quantize::job::QuantizeService>, ApiError> {
        self.inner.services.quantize.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The doctor and telemetry views, or the error their routes answer without them.
    pub(crate) fn require_inspect(&self) -> Result<&Arc<dyn ondevice_diagnostics::inspect::InspectService>, ApiError> {
        self.inner.services.inspect.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The diagnostics service, or the error its routes answer without one.
    pub(crate) fn require_diagnostics(
        &self,
    ) -> Result<&Arc<dyn ondevice_diagnostics::job::DiagnosticsService>, ApiError> {
        self.inner.services.diagnostics.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The vector store, or the error collection routes answer without one.
    pub(crate) fn require_vectors(&self) -> Result<&Arc<dyn VectorService>, ApiError> {
        self.inner.services.vectors.as_ref().ok_or(ApiError::Overloaded { retry_after_s: 5 })
    }

    /// The status source (workers).
    pub fn status_source(&self) -> &Arc<dyn StatusSource> {
        &self.inner.services.status
    }

    /// The model registry.
    pub fn models(&self) -> &Arc<dyn ModelService> {
        &self.inner.services.models
    }

    /// The verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.inner.services.verifier
    }

    /// The web console's sessions and login links.
    pub(crate) fn sessions(&self) -> &ondevice_auth::Sessions {
        &self.inner.sessions
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Publishes an event to watchers (dropped when nobody listens).
    pub fn publish(&self, event: DaemonEvent) {
        let _ = self.inner.events.send(event);
    }

    /// The token cancelled when the daemon stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Long-lived sessions (WebSockets, gRPC streams) that outlive their HTTP connection's
    /// tracking; the daemon waits for them on shutdown.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.inner.tasks
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The daemon's status as the API and the control socket report it.
    pub fn status(&self) -> crate::routes::status::StatusResponse {
        let s = &self.inner;
        crate::routes::status::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: s.started.elapsed().as_secs(),
            listen_address: s.options.listen.to_string(),
            tls: s.options.tls,
            auth_enabled: s.services.verifier.enabled(),
            ready: s.services.status.ready() && !s.shutdown.is_cancelled(),
            workers: s.services.status.workers(),
            sandbox: s.services.status.sandbox(),
        }
    }
}
