//! Supervises ondevice worker processes, and is the only crate of ondevice that spawns
//! processes.
//!
//! A [`Supervisor`] runs each [`WorkerSpec`] in a task: spawn (sandboxed through
//! [`ondevice_sandbox`], in its own process group, stdout/stderr to a rotating log), watch the exit
//! and the probes, restart according to the [`RestartPolicy`] with exponential [`Backoff`], open
//! the circuit after too many restarts ([`MaxRestarts`]) until [`Supervisor::restart_worker`], fire
//! [`Hooks`], and report [`WorkerStatus`] and [`Event`]s as plain data.
//!
//! [`Supervisor::run_task`] runs a one-shot [`TaskSpec`] (a converter, quantizer or indexer) under
//! the same sandbox and spawn path, and reports a [`TaskOutcome`]: exit code or signal, OOM kill,
//! timeout, cancellation, the tail of stderr (module `task`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ondevice_supervisor::SupervisorError> {
//! use ondevice_supervisor::{Supervisor, SupervisorOptions, WorkerSpec};
//! let sup = Supervisor::new("/tmp/logs", SupervisorOptions::default())?;
//! sup.add(WorkerSpec::new("sleeper", ["sleep", "1000"])).await?;
//! for w in sup.status() { println!("{} {:?}", w.name, w.state); }
//! sup.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod hooks;
mod logs;
mod probe;
mod process;
mod spec;
mod status;
mod task;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ondevice_sandbox::Sandbox;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, sandbox_policy};
pub use hooks::HookEvent;
pub use logs::{LogRotation, RotatingLog};
pub use process::{process_alive, spawn_detached};
pub use spec::{Backoff, Hook, Hooks, MaxRestarts, ProbeCheck, ProbeSpec, RestartPolicy, WorkerSpec};
pub use status::{Event, EventKind, ExitInfo, ProbeFailures, WorkerState, WorkerStatus};
pub use task::{MAX_LINE, TaskError, TaskLine, TaskOutcome, TaskSpec, TaskStdout, TaskStream};

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A worker with this name is already supervised.
    #[error("worker {0} already exists; remove it first")]
    Duplicate(String),
    /// No worker with this name.
    #[error("no worker named {0}")]
    NotFound(String),
    /// The worker spec is unusable.
    #[error("worker {worker}: {reason}")]
    InvalidSpec {
        /// Worker name.
        worker: String,
        /// What is wrong.
        reason: String,
    },
    /// The user to run as does not exist.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// A process could not be spawned.
    #[error("worker {worker}: cannot spawn {}: {source}", program.display())]
    Spawn {
        /// Worker name (or "daemon").
        worker: String,
        /// Program.
        program: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor has been shut down.
    #[error("the supervisor is shut down")]
    ShutDown,
}

/// Options of a [`Supervisor`].
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Log rotation of the per-worker logs.
    pub log_rotation: LogRotation,
    /// Capacity of the event channel (slow subscribers miss events beyond it).
    pub event_capacity: usize,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions { log_rotation: LogRotation::default(), event_capacity: 1024 }
    }
}

#[derive(Debug)]
struct Entry {
    status: Arc<Mutex<WorkerStatus>>,
    cmds: mpsc::Sender<worker::Command>,
    task: tokio::task::JoinHandle<()>,
}

/// Supervises a set of workers. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log_dir: PathBuf,
    opts: SupervisorOptions,
    sandbox: Arc<dyn Sandbox>,
    clients: probe::Clients,
    events: broadcast::Sender<Event>,
    workers: Mutex<BTreeMap<String, Entry>>,
}

impl Supervisor {
    /// A supervisor with the host's sandbox ([`ondevice_sandbox::host_sandbox`]), writing worker
    /// logs to `log_dir`. Must be called inside a tokio runtime.
    pub fn new(log_dir: impl Into<PathBuf>, opts: SupervisorOptions) -> Result<Supervisor, SupervisorError> {
        Self::with_sandbox(log_dir, opts, Arc::from(ondevice_sandbox::host_sandbox()))
    }

    /// A supervisor with a given sandbox (e.g. [`ondevice_sandbox::NullSandbox`]).
    pub fn with_sandbox(
        log_dir: impl Into<PathBuf>,
        opts: SupervisorOptions,
        sandbox: Arc<dyn Sandbox>,
    ) -> Result<Supervisor, SupervisorError> {
        let log_dir = log_dir.into();
        std::fs::create_dir_all(&log_dir).map_err(|e| SupervisorError::Io {
            action: "create log dir",
            path: log_dir.clone(),
            source: e,
        })?;
        let (events, _) = broadcast::channel(opts.event_capacity.max(16));
        Ok(Supervisor {
            inner: Arc::new(Inner {
                log_dir,
                opts,
                sandbox,
                clients: probe::Clients::new(),
                events,
                workers: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The sandbox in use (its [`capabilities`](Sandbox::capabilities) describe the host).
    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.inner.sandbox
    }

    /// The per-worker log directory.
    pub fn log_dir(&self) -> &Path {
        &self.inner.log_dir
    }

    /// The log file of worker `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.inner.log_dir.join(format!("{name}.log"))
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start supervising `spec` (the worker starts immediately).
    pub async fn add(&self, spec: WorkerSpec) -> Result<(), SupervisorError> {
        let invalid = |reason: &str| SupervisorError::InvalidSpec { worker: spec.name.clone(), reason: reason.into() };
        if spec.command.is_empty() {
            return Err(invalid("command is empty"));
        }
        if spec.name.is_empty() || spec.name.contains(['/', '\\']) || spec.name.starts_with('.') {
            return Err(invalid("name must be non-empty, without '/' or '\\', and not start with '.'"));
        }
        let mut workers = self.workers();
        if workers.contains_key(&spec.name) {
            return Err(SupervisorError::Duplicate(spec.name));
        }
        let log = RotatingLog::open(&self.inner.log_dir, &spec.name, self.inner.opts.log_rotation)
            .map_err(|e| SupervisorError::Io { action: "open log file", path: self.log_path(&spec.name), source: e })?;
        let status = Arc::new(Mutex::new(WorkerStatus::new(&spec.name, spec.required)));
        let (tx, rx) = mpsc::channel(8);
        let ctx = worker::Ctx {
            status: status.clone(),
            events: self.inner.events.clone(),
            sandbox: self.inner.sandbox.clone(),
            clients: self.inner.clients.clone(),
            log,
            _rotation: self.inner.opts.log_rotation,
        };
        let name = spec.name.clone();
        let task = tokio::spawn(worker::supervise(spec, ctx, rx));
        workers.insert(name, Entry { status, cmds: tx, task });
        Ok(())
    }

    /// Stop worker `name` (SIGTERM, `grace`, SIGKILL of the tree) and forget it.
    pub async fn remove(&self, name: &str, grace: Duration) -> Result<(), SupervisorError> {
        let entry = self.workers().remove(name).ok_or_else(|| SupervisorError::NotFound(name.to_string()))?;
        stop_entry(entry, grace).await;
        Ok(())
    }

    /// Status of every worker, by name.
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.workers().values().map(|e| e.status.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    /// Status of worker `name`.
    pub fn worker_status(&self, name: &str) -> Option<WorkerStatus> {
        self.workers().get(name).map(|e| e.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Whether worker `name` is ready.
    pub fn ready(&self, name: &str) -> bool {
        self.worker_status(name).is_some_and(|s| s.ready)
    }

    /// Whether every worker marked `required` is ready (for `/readyz`).
    pub fn required_ready(&self) -> bool {
        self.status().iter().filter(|s| s.required).all(|s| s.ready)
    }

    /// Restart worker `name` now: closes an open circuit, resets the backoff and intensity
    /// counters, and stops the running process (if any) gracefully first.
    pub async fn restart_worker(&self, name: &str) -> Result<(), SupervisorError> {
        let tx =
            self.workers().get(name).map(|e| e.cmds.clone()).ok_or_else(|| SupervisorError::NotFound(name.into()))?;
        tx.send(worker::Command::Restart).await.map_err(|_| SupervisorError::ShutDown)
    }

    /// Subscribe to the event stream (state changes, starts, exits, probe failures, give-ups).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Run `spec` once, sandboxed like a worker (this supervisor's sandbox), and report how it
    /// ended. The process is forked by the spawner thread with the parent-death signal, so it dies
    /// with a killed daemon, and runs in its own process group and cgroup, both killed when it
    /// ends (background children included) and the cgroup removed.
    ///
    /// `cancel` stops it (SIGTERM to the group, [`TaskSpec::stop_grace`], SIGKILL to the group and
    /// the cgroup) and the outcome says `cancelled`; [`TaskSpec::timeout`] does the same with
    /// `timed_out`. Dropping the returned future kills it too. Errors are failures to start: an
    /// invalid spec, a missing program, an unknown user, a sandbox that cannot be set up (or, in
    /// mode `on`, cannot enforce the policy), a failed spawn, or `cancel` fired before the spawn.
    pub async fn run_task(&self, spec: TaskSpec, cancel: CancellationToken) -> Result<TaskOutcome, TaskError> {
        task::run(self.inner.sandbox.clone(), spec, cancel).await
    }

    /// Stop every worker (in parallel) with `grace` before SIGKILL, and forget them.
    pub async fn shutdown(&self, grace: Duration) {
        let entries: Vec<Entry> = std::mem::take(&mut *self.workers()).into_values().collect();
        let mut set = tokio::task::JoinSet::new();
        for e in entries {
            set.spawn(stop_entry(e, grace));
        }
        while set.join_next().await.is_some() {}
    }
}

async fn stop_entry(entry: Entry, grace: Duration) {
    let (done, wait) = oneshot::channel();
    if entry.cmds.send(worker::Command::Stop { grace, done }).await.is_ok() {
        let _ = wait.await;
    }
    let _ = entry.task.await;
}
