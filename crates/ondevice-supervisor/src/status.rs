//! Status, metrics and events of supervised workers, as plain data.

use std::time::SystemTime;

use ondevice_sandbox::Protection;

/// Lifecycle state of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned; the startup probe (if any) has not succeeded yet.
    Starting,
    /// Started, not ready (readiness probe not passing).
    Running,
    /// Started and ready.
    Ready,
    /// Being stopped (SIGTERM sent, grace period running).
    Stopping,
    /// Waiting to be restarted.
    Backoff,
    /// Exited and not restarted (restart policy).
    Exited,
    /// Stopped on request.
    Stopped,
    /// Given up: the circuit is open (too many restarts) or the worker cannot be started (e.g. the
    /// sandbox refuses). Cleared by `restart_worker`.
    Failed,
}

impl WorkerState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Ready => "ready",
            WorkerState::Stopping => "stopping",
            WorkerState::Backoff => "backoff",
            WorkerState::Exited => "exited",
            WorkerState::Stopped => "stopped",
            WorkerState::Failed => "failed",
        }
    }
}

/// How a worker's process ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitInfo {
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Signal number, if it was killed by a signal.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the worker (cgroup memory limit).
    pub oom: bool,
    /// Why the supervisor ended it, if it did: `"liveness"`, `"startup"`, `"stop"`, `"restart"`.
    pub killed_by: Option<&'static str>,
    /// When it ended.
    pub at: SystemTime,
    /// How long it had run, in milliseconds.
    pub uptime_ms: u64,
}

impl ExitInfo {
    /// Exit code 0 and not killed by the supervisor's probes.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !matches!(self.killed_by, Some("liveness" | "startup"))
    }
}

/// Probe failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ProbeFailures {
    /// Failed startup checks.
    pub startup: u64,
    /// Failed liveness checks.
    pub liveness: u64,
    /// Failed readiness checks.
    pub readiness: u64,
}

/// A worker's status, metrics included.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerStatus {
    /// Name.
    pub name: String,
    /// State.
    pub state: WorkerState,
    /// Whether the worker is ready (readiness probe passing, or started without one).
    pub ready: bool,
    /// Whether the daemon's readiness waits for it.
    pub required: bool,
    /// Current pid.
    pub pid: Option<u32>,
    /// Restarts since the worker was added (the `restarts_total` counter).
    pub restarts: u64,
    /// Consecutive restarts counted for the backoff (reset after a stable uptime).
    pub attempt: u32,
    /// Last exit.
    pub last_exit: Option<ExitInfo>,
    /// Exits since the worker was added that were kills by the kernel's OOM killer (the
    /// `oom_kills_total` counter).
    pub oom_kills: u64,
    /// When the next restart is due (state backoff).
    pub next_restart_at: Option<SystemTime>,
    /// Why the worker failed (state failed).
    pub failure: Option<String>,
    /// Effective sandbox protection of the current or last start.
    pub protection: Option<Protection>,
    /// Probe failure counters.
    pub probe_failures: ProbeFailures,
    /// When the current process started.
    pub started_at: Option<SystemTime>,
}

impl WorkerStatus {
    pub(crate) fn new(name: &str, required: bool) -> WorkerStatus {
        WorkerStatus {
            name: name.to_string(),
            state: WorkerState::Starting,
            ready: false,
            required,
            pid: None,
            restarts: 0,
            attempt: 0,
            last_exit: None,
            oom_kills: 0,
            next_restart_at: None,
            failure: None,
            protection: None,
            probe_failures: ProbeFailures::default(),
            started_at: None,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// State changed.
    State {
        /// Previous state.
        from: WorkerState,
        /// New state.
        to: WorkerState,
    },
    /// A process was spawned.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// The process exited.
    Exited {
        /// How.
        exit: ExitInfo,
    },
    /// A restart was scheduled.
    RestartScheduled {
        /// After this many milliseconds.
        delay_ms: u64,
    },
    /// The circuit opened: the worker is given up.
    GaveUp,
    /// A probe check failed.
    ProbeFailed {
        /// `startup`, `liveness` or `readiness`.
        probe: &'static str,
        /// Why.
        reason: String,
    },
    /// Readiness changed.
    Ready {
        /// Now ready?
        ready: bool,
    },
}

/// An event of one worker, as sent on [`crate::Supervisor::subscribe`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// Worker name.
    pub worker: String,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: SystemTime,
}
