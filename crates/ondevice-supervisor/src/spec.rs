//! Worker specifications: the supervisor's domain form of `[workers.NAME]`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use ondevice_sandbox::SandboxPolicy;

/// When a worker is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: the worker stays exited.
    Never,
    /// When it exits with a non-zero code, is killed by a signal, or fails its liveness probe.
    #[default]
    OnFailure,
    /// Whenever it exits.
    Always,
}

/// Exponential backoff between restarts, with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Growth factor per consecutive restart (>= 1.0).
    pub factor: f64,
    /// Fraction of the delay taken off at random (0.0 = no jitter, 0.2 = up to 20% shorter).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(30), factor: 2.0, jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay before restart number `attempt` (0-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let f = self.factor.max(1.0).powi(attempt.min(1000) as i32);
        let ms = (self.initial.as_secs_f64() * 1000.0 * f).min(self.max.as_secs_f64() * 1000.0);
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    /// The delay before restart number `attempt`, with jitter: in `[base * (1 - jitter), base]`,
    /// so with a factor >= 1 / (1 - jitter) successive delays still grow.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let mut b = [0u8; 4];
        let r =
            if getrandom::fill(&mut b).is_ok() { f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) } else { 0.5 };
        base.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * r)
    }
}

/// Restart intensity: more than `count` restarts within `within` opens the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxRestarts {
    /// Restarts allowed within the window.
    pub count: u32,
    /// The window.
    pub within: Duration,
}

impl Default for MaxRestarts {
    fn default() -> Self {
        MaxRestarts { count: 5, within: Duration::from_secs(60) }
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    /// HTTP GET; 200–399 is success.
    Http(String),
    /// TCP connect to `host:port`.
    Tcp(String),
    /// Unix-domain socket connect; on Windows, open of the named pipe at this path
    /// (`\\.\pipe\NAME`).
    Unix(PathBuf),
    /// Run a command; exit code 0 is success.
    Exec(Vec<OsString>),
    /// `grpc.health.v1.Health/Check` over plaintext HTTP/2 to `host:port`; SERVING is success.
    Grpc(String),
}

/// A probe with Kubernetes-style timing.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    /// What to check.
    pub check: ProbeCheck,
    /// Delay before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive failures that count as failed.
    pub failure_threshold: u32,
    /// Consecutive successes that count as succeeded (readiness).
    pub success_threshold: u32,
}

impl ProbeSpec {
    /// A probe with the Kubernetes defaults: period 10 s, timeout 1 s, failure threshold 3,
    /// success threshold 1.
    pub fn new(check: ProbeCheck) -> ProbeSpec {
        ProbeSpec {
            check,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

/// An action run on a lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// Run a command with `ONDEVICE_*` environment variables describing the event.
    Exec(Vec<OsString>),
    /// POST a JSON body describing the event.
    Webhook(String),
}

/// Hooks per lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// After the worker's process is spawned.
    pub on_start: Vec<Hook>,
    /// After the worker's process exits (any reason).
    pub on_exit: Vec<Hook>,
    /// When a restart is scheduled.
    pub on_restart: Vec<Hook>,
    /// When the circuit opens and the worker is given up.
    pub on_give_up: Vec<Hook>,
}

/// Everything needed to run and supervise one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// Unique name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<OsString>,
    /// Extra environment variables (the daemon's environment is inherited).
    pub env: BTreeMap<OsString, OsString>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Run as this user (name or numeric uid); needs root.
    pub user: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Backoff between restarts.
    pub backoff: Backoff,
    /// Restart intensity before the circuit opens.
    pub max_restarts: MaxRestarts,
    /// Uptime after which the backoff and intensity counters reset.
    pub stable_after: Duration,
    /// Startup probe: holds off liveness and readiness until it succeeds.
    pub startup: Option<ProbeSpec>,
    /// Liveness probe: failure restarts the worker.
    pub liveness: Option<ProbeSpec>,
    /// Readiness probe: failure only marks the worker not ready.
    pub readiness: Option<ProbeSpec>,
    /// Lifecycle hooks.
    pub hooks: Hooks,
    /// Sandbox policy.
    pub sandbox: SandboxPolicy,
    /// Whether the daemon's readiness waits for this worker.
    pub required: bool,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_grace: Duration,
}

impl WorkerSpec {
    /// A spec with defaults: restart on failure, default backoff and intensity, no probes, no
    /// hooks, sandbox mode auto with nothing requested, 5 s grace, stable after 60 s.
    pub fn new(name: impl Into<String>, command: impl IntoIterator<Item = impl Into<OsString>>) -> WorkerSpec {
        WorkerSpec {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            restart: RestartPolicy::OnFailure,
            backoff: Backoff::default(),
            max_restarts: MaxRestarts::default(),
            stable_after: Duration::from_secs(60),
            startup: None,
            liveness: None,
            readiness: None,
            hooks: Hooks::default(),
            sandbox: SandboxPolicy::default(),
            required: false,
            stop_grace: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_up_to_the_max_and_jitter_only_shortens() {
        let b =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(1000), factor: 3.0, jitter: 0.2 };
        let ms: Vec<u128> = (0..5).map(|i| b.base_delay(i).as_millis()).collect();
        assert_eq!(ms, [100, 300, 900, 1000, 1000]);
        for i in 0..50 {
            let d = b.delay(i % 3);
            let base = b.base_delay(i % 3);
            assert!(d <= base && d >= base.mul_f64(0.8), "{d:?} outside [{:?}, {base:?}]", base.mul_f64(0.8));
        }
        let zero = Backoff { initial: Duration::ZERO, ..b };
        assert_eq!(zero.delay(7), Duration::ZERO);
    }
}
