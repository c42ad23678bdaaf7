//! `[workers.NAME]`: processes the daemon supervises (its own engine workers and any the user
//! declares). These are the TOML-facing types; values are validated while deserializing, so a bad
//! value's error carries its position in the file. The supervisor converts them into its own
//! `WorkerSpec`.
//!
//! ```toml
//! [workers.llama]
//! command = ["llama-server", "--port", "8081"]
//! restart = "on-failure"
//! backoff = { initial_ms = 200, max_ms = 30000, factor = 2.0 }
//! max_restarts = { count = 5, within_s = 60 }
//! liveness = { http = "http://127.0.0.1:8081/health", period_s = 5, failure_threshold = 3 }
//! sandbox = { mode = "auto", memory_max = "4GiB", pids_max = 64, network = "none" }
//! ```

pub use crate::units::{ByteSize, ByteSizeError};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One supervised worker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Program and arguments, e.g. `["llama-server", "--port", "8081"]`. Required, non-empty.
    #[serde(deserialize_with = "non_empty_command")]
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// When to restart the worker after it exits: `never`, `on-failure` (non-zero exit, signal,
    /// failed liveness probe) or `always`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Exponential backoff between restarts (a random jitter of up to 20% is taken off each delay).
    #[serde(default)]
    pub backoff: Backoff,
    /// Restart intensity: more than `count` restarts within `within_s` seconds opens the circuit
    /// and the worker is given up until `ondevice daemon restart-worker NAME`.
    #[serde(default)]
    pub max_restarts: MaxRestarts,
    /// Seconds of uptime after which the backoff and restart-intensity counters reset.
    #[serde(default = "default_stable_after_s")]
    pub stable_after_s: u64,
    /// Seconds between SIGTERM and SIGKILL of the whole process tree when stopping.
    #[serde(default = "default_stop_grace_s")]
    pub stop_grace_s: u64,
    /// Startup probe: liveness and readiness probes wait until it succeeds; reaching its failure
    /// threshold restarts the worker.
    #[serde(default)]
    pub startup: Option<Probe>,
    /// Liveness probe: reaching its failure threshold restarts the worker.
    #[serde(default)]
    pub liveness: Option<Probe>,
    /// Readiness probe: failing marks the worker not ready (no restart); `/readyz` waits for
    /// required workers to be ready.
    #[serde(default)]
    pub readiness: Option<Probe>,
    /// Resource limits and isolation.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Commands and webhooks run on lifecycle events.
    #[serde(default)]
    pub hooks: Hooks,
    /// Extra environment variables (the daemon's environment is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the daemon's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Run as this user (name or numeric uid); the daemon must run as root.
    #[serde(default)]
    pub user: Option<String>,
    /// Whether the daemon's `/readyz` waits for this worker to be ready.
    #[serde(default)]
    pub required: bool,
}

fn default_stable_after_s() -> u64 {
    60
}

fn default_stop_grace_s() -> u64 {
    5
}

fn non_empty_command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() || v[0].is_empty() {
        return Err(serde::de::Error::custom("command must name a program: command = [\"program\", \"arg\", ...]"));
    }
    Ok(v)
}

/// When a worker is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    Never,
    /// Restart after a non-zero exit, a signal, or a failed liveness/startup probe.
    #[default]
    OnFailure,
    /// Restart after every exit.
    Always,
}

/// Exponential backoff: delay = min(initial_ms × factor^n, max_ms), minus up to 20% jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(default)]
pub struct Backoff {
    /// Delay before the first restart, in milliseconds (0 restarts at once).
    pub initial_ms: u64,
    /// Upper bound of the delay, in milliseconds; must be >= `initial_ms`.
    pub max_ms: u64,
    /// Growth factor per consecutive restart; must be >= 1.0.
    #[schemars(range(min = 1.0))]
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial_ms: 200, max_ms: 30_000, factor: 2.0 }
    }
}

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default = "initial")]
            initial_ms: u64,
            #[serde(default = "max")]
            max_ms: u64,
            #[serde(default = "factor")]
            factor: f64,
        }
        fn initial() -> u64 {
            Backoff::default().initial_ms
        }
        fn max() -> u64 {
            Backoff::default().max_ms
        }
        fn factor() -> f64 {
            Backoff::default().factor
        }
        let r = Raw::deserialize(d)?;
        if r.factor.is_nan() || r.factor < 1.0 {
            return Err(serde::de::Error::custom(format!("backoff factor must be >= 1.0, got {}", r.factor)));
        }
        if r.initial_ms > r.max_ms {
            return Err(serde::de::Error::custom(format!(
                "backoff initial_ms ({}) must not exceed max_ms ({})",
                r.initial_ms, r.max_ms
            )));
        }
        Ok(Backoff { initial_ms: r.initial_ms, max_ms: r.max_ms, factor: r.factor })
    }
}

/// Restart intensity limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxRestarts {
    /// Restarts allowed within the window.
    pub count: u32,
    /// The window, in seconds.
    pub within_s: u64,
}

impl Default for MaxRestarts {
    fn default() -> Self {
        MaxRestarts { count: 5, within_s: 60 }
    }
}

/// What a probe checks: exactly one of `http`, `tcp`, `unix`, `exec`, `grpc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    /// HTTP GET of this URL; a 2xx or 3xx status is success.
    Http(String),
    /// TCP connect to `host:port`.
    Tcp(String),
    /// Connect to this Unix-domain socket.
    Unix(PathBuf),
    /// Run this command; exit code 0 is success.
    Exec(Vec<String>),
    /// `grpc.health.v1.Health/Check` to `host:port` (plaintext HTTP/2); SERVING is success.
    Grpc(String),
}

/// A probe (Kubernetes semantics), e.g.
/// `{ http = "http://127.0.0.1:8081/health", period_s = 5, failure_threshold = 3 }`.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields, extend("minProperties" = 1))]
pub struct Probe {
    /// URL for an HTTP GET check; 2xx/3xx is success.
    #[schemars(default)]
    pub http: Option<String>,
    /// `host:port` for a TCP connect check.
    #[schemars(default)]
    pub tcp: Option<String>,
    /// Path of a Unix-domain socket to connect to.
    #[schemars(default)]
    pub unix: Option<PathBuf>,
    /// Command to run; exit code 0 is success.
    #[schemars(default)]
    pub exec: Option<Vec<String>>,
    /// `host:port` of a gRPC server to ask `grpc.health.v1.Health/Check`.
    #[schemars(default)]
    pub grpc: Option<String>,
    /// Seconds before the first check.
    #[schemars(default)]
    pub initial_delay_s: f64,
    /// Seconds between checks.
    #[schemars(default = "ten")]
    pub period_s: f64,
    /// Seconds a check may take.
    #[schemars(default = "one_f")]
    pub timeout_s: f64,
    /// Consecutive failures that count as failed.
    #[schemars(default = "three", range(min = 1))]
    pub failure_threshold: u32,
    /// Consecutive successes that count as succeeded (readiness).
    #[schemars(default = "one_u", range(min = 1))]
    pub success_threshold: u32,
}

impl Probe {
    /// The check (exactly one is set after deserializing).
    pub fn check(&self) -> ProbeCheck {
        if let Some(u) = &self.http {
            ProbeCheck::Http(u.clone())
        } else if let Some(a) = &self.tcp {
            ProbeCheck::Tcp(a.clone())
        } else if let Some(p) = &self.unix {
            ProbeCheck::Unix(p.clone())
        } else if let Some(c) = &self.exec {
            ProbeCheck::Exec(c.clone())
        } else {
            ProbeCheck::Grpc(self.grpc.clone().unwrap_or_default())
        }
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ProbeRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unix: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc: Option<String>,
    #[serde(default)]
    initial_delay_s: f64,
    #[serde(default = "ten")]
    period_s: f64,
    #[serde(default = "one_f")]
    timeout_s: f64,
    #[serde(default = "three")]
    failure_threshold: u32,
    #[serde(default = "one_u")]
    success_threshold: u32,
}

fn ten() -> f64 {
    10.0
}
fn one_f() -> f64 {
    1.0
}
fn three() -> u32 {
    3
}
fn one_u() -> u32 {
    1
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = ProbeRaw::deserialize(d)?;
        let set = [r.http.is_some(), r.tcp.is_some(), r.unix.is_some(), r.exec.is_some(), r.grpc.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(D::Error::custom("a probe needs exactly one of http, tcp, unix, exec, grpc"));
        }
        if r.exec.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(D::Error::custom("probe exec must name a program"));
        }
        match &r.http {
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return Err(D::Error::custom(format!("probe http must be an http:// or https:// URL, got {u:?}")));
            }
            _ => {}
        }
        for (name, v) in [("period_s", r.period_s), ("timeout_s", r.timeout_s)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(D::Error::custom(format!("probe {name} must be a positive number of seconds")));
            }
        }
        if !(r.initial_delay_s.is_finite() && r.initial_delay_s >= 0.0) {
            return Err(D::Error::custom("probe initial_delay_s must be >= 0"));
        }
        if r.failure_threshold == 0 || r.success_threshold == 0 {
            return Err(D::Error::custom("probe thresholds must be >= 1"));
        }
        Ok(Probe {
            http: r.http,
            tcp: r.tcp,
            unix: r.unix,
            exec: r.exec,
            grpc: r.grpc,
            initial_delay_s: r.initial_delay_s,
            period_s: r.period_s,
            timeout_s: r.timeout_s,
            failure_threshold: r.failure_threshold,
            success_threshold: r.success_threshold,
        })
    }
}

impl Serialize for Probe {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ProbeRaw {
            http: self.http.clone(),
            tcp: self.tcp.clone(),
            unix: self.unix.clone(),
            exec: self.exec.clone(),
            grpc: self.grpc.clone(),
            initial_delay_s: self.initial_delay_s,
            period_s: self.period_s,
            timeout_s: self.timeout_s,
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
        }
        .serialize(s)
    }
}

/// How strictly the sandbox is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Enforce what this host can; warn about the rest (reported in the worker's protection).
    #[default]
    Auto,
    /// Refuse to start the worker if any requested protection cannot be enforced.
    On,
    /// No sandbox.
    Off,
}

/// Network access of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The host's network.
    #[default]
    Host,
    /// No network (private network namespace, or landlock TCP rules).
    None,
}

/// External sandbox wrapper program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WrapperKind {
    /// Built-in mechanisms only.
    #[default]
    None,
    /// bubblewrap (`bwrap`).
    Bwrap,
    /// firejail.
    Firejail,
}

/// `[workers.NAME.sandbox]`: resource limits and isolation. See docs/sandbox.md.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// `auto` (enforce what the host can, warn about the rest), `on` (refuse to start unless
    /// everything requested is enforced) or `off`.
    #[serde(default)]
    pub mode: SandboxMode,
    /// Hard memory limit, e.g. `"64MiB"`, `"1GiB"`, `"512M"`; beyond it the kernel OOM-kills the
    /// worker (cgroup `memory.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
    /// Memory throttling threshold (cgroup v2 `memory.high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_high: Option<ByteSize>,
    /// CPU limit: `"50%"` (of one core) or a number of cores such as `1.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuLimit>,
    /// Maximum number of processes and threads (cgroup `pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// Maximum open files (RLIMIT_NOFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    /// Maximum virtual address space (RLIMIT_AS), e.g. `"8GiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space: Option<ByteSize>,
    /// Maximum CPU time in seconds (RLIMIT_CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_s: Option<u64>,
    /// Maximum core dump size (RLIMIT_CORE); default `"0"`: no core dumps.
    #[serde(default = "zero_bytes", skip_serializing_if = "Option::is_none")]
    pub core_size: Option<ByteSize>,
    /// Maximum size of a file the worker writes (RLIMIT_FSIZE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<ByteSize>,
    /// `host` or `none` (no network at all).
    #[serde(default)]
    pub network: NetworkMode,
    /// Paths the worker may read (model files). When this or `fs_write` is set, everything
    /// else except the system directories (/usr, /lib, /etc, ...) is invisible to the worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs_read: Vec<PathBuf>,
    /// Paths the worker may read and write (e.g. one scratch directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs_write: Vec<PathBuf>,
    /// Deny dangerous system calls (ptrace, mount, kexec, bpf, keyctl, module loading, ...).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Wrap the command in an external sandbox: `none`, `bwrap` or `firejail`.
    #[serde(default)]
    pub wrapper: WrapperKind,
}

fn zero_bytes() -> Option<ByteSize> {
    Some(ByteSize(0))
}

fn yes() -> bool {
    true
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            mode: SandboxMode::Auto,
            memory_max: None,
            memory_high: None,
            cpu_max: None,
            pids_max: None,
            nofile: None,
            address_space: None,
            cpu_time_s: None,
            core_size: zero_bytes(),
            file_size: None,
            network: NetworkMode::Host,
            fs_read: Vec::new(),
            fs_write: Vec::new(),
            seccomp: true,
            wrapper: WrapperKind::None,
        }
    }
}

/// A CPU limit in thousandths of a core: `"50%"` is 500, `1.5` (cores) is 1500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(with = "CpuSchema")]
pub struct CpuLimit {
    /// Thousandths of one core.
    pub millicores: u32,
}

#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum CpuSchema {
    /// Cores, e.g. 1.5.
    Cores(f64),
    /// Percent of one core, e.g. "50%", or cores as text, e.g. "1.5".
    Text(#[schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]+)?\s*%?\s*$"))] String),
}

impl CpuLimit {
    fn from_cores<E: serde::de::Error>(cores: f64) -> Result<CpuLimit, E> {
        if !(cores.is_finite() && cores > 0.0 && cores <= 4096.0) {
            return Err(E::custom(format!("cpu_max must be between 0 and 4096 cores, got {cores}")));
        }
        Ok(CpuLimit { millicores: ((cores * 1000.0).round() as u32).max(1) })
    }
}

impl<'de> Deserialize<'de> for CpuLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = CpuLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU limit such as \"50%\" or 1.5 (cores)")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<CpuLimit, E> {
                CpuLimit::from_cores(v)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CpuLimit, E> {
                CpuLimit::from_cores(v as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CpuLimit, E> {
                CpuLimit::from_cores(v as f64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CpuLimit, E> {
                let t = v.trim();
                let bad =
                    || E::custom(format!("invalid cpu_max {v:?}: expected \"50%\" or a number of cores like 1.5"));
                match t.strip_suffix('%') {
                    Some(p) => CpuLimit::from_cores(p.trim().parse::<f64>().map_err(|_| bad())? / 100.0),
                    None => CpuLimit::from_cores(t.parse::<f64>().map_err(|_| bad())?),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for CpuLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(f64::from(self.millicores) / 1000.0)
    }
}

/// One hook action: `{ exec = ["cmd", "arg"] }` or `{ webhook = "http://..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum HookAction {
    /// Run a command; it receives `ONDEVICE_WORKER`, `ONDEVICE_EVENT`, `ONDEVICE_PID`,
    /// `ONDEVICE_EXIT_CODE`, `ONDEVICE_EXIT_SIGNAL`, `ONDEVICE_OOM`, `ONDEVICE_RESTARTS`.
    Exec(Vec<String>),
    /// POST a JSON body `{worker, event, pid, exit_code, signal, oom, restarts, delay_ms}`.
    Webhook(String),
}

/// `[workers.NAME.hooks]`: actions per lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// After the worker's process starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_start: Vec<HookAction>,
    /// After it exits (with its exit code or signal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_exit: Vec<HookAction>,
    /// When a restart is scheduled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_restart: Vec<HookAction>,
    /// When the circuit opens and the worker is given up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_give_up: Vec<HookAction>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        workers: BTreeMap<String, WorkerConfig>,
    }

    fn parse(text: &str) -> Result<Doc, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn interface_example_parses() {
        let doc = parse(
            r#"
[workers.NAME]
command = ["program", "arg"]          # required
restart = "on-failure"                # never | on-failure | always
backoff = { initial_ms = 200, max_ms = 30000, factor = 2.0 }
max_restarts = { count = 5, within_s = 60 }   # beyond it: circuit open, worker given up
liveness = { http = "http://127.0.0.1:8080/health", period_s = 5, failure_threshold = 3 }
sandbox = { mode = "auto", memory_max = "64MiB", pids_max = 32, network = "none" }
"#,
        )
        .unwrap();
        let w = &doc.workers["NAME"];
        assert_eq!(w.command, ["program", "arg"]);
        assert_eq!(w.restart, RestartPolicy::OnFailure);
        assert_eq!(w.max_restarts, MaxRestarts { count: 5, within_s: 60 });
        let l = w.liveness.as_ref().unwrap();
        assert_eq!(l.check(), ProbeCheck::Http("http://127.0.0.1:8080/health".into()));
        assert_eq!((l.period_s, l.failure_threshold, l.timeout_s), (5.0, 3, 1.0));
        assert_eq!(w.sandbox.memory_max, Some(ByteSize(64 << 20)));
        assert_eq!(w.sandbox.network, NetworkMode::None);
        assert!(w.sandbox.seccomp);
    }

    #[test]
    fn full_table_round_trips() {
        let text = r#"
[workers.full]
command = ["llama-server"]
restart = "always"
stable_after_s = 30
stop_grace_s = 2
env = { A = "1" }
cwd = "/srv"
user = "nobody"
required = true
startup = { exec = ["test", "-e", "/tmp/x"], period_s = 0.5 }
readiness = { grpc = "127.0.0.1:9000", success_threshold = 2 }
liveness = { unix = "/run/x.sock" }
[workers.full.sandbox]
mode = "on"
memory_max = "1GiB"
memory_high = "512M"
cpu_max = "50%"
nofile = 1024
fs_read = ["/models"]
fs_write = ["/scratch"]
wrapper = "bwrap"
[workers.full.hooks]
on_exit = [{ exec = ["logger", "exited"] }, { webhook = "http://127.0.0.1:9/hook" }]
on_give_up = [{ webhook = "http://127.0.0.1:9/giveup" }]
"#;
        let doc = parse(text).unwrap();
        let w = &doc.workers["full"];
        assert_eq!(w.sandbox.cpu_max, Some(CpuLimit { millicores: 500 }));
        assert_eq!(w.sandbox.memory_high, Some(ByteSize(512 << 20)));
        assert_eq!(w.hooks.on_exit[1], HookAction::Webhook("http://127.0.0.1:9/hook".into()));
        assert_eq!(w.readiness.as_ref().unwrap().check(), ProbeCheck::Grpc("127.0.0.1:9000".into()));
        let back: WorkerConfig = toml::from_str(&toml::to_string(w).unwrap()).unwrap();
        assert_eq!(&back, w);
    }

    #[test]
    fn sizes_and_cpu() {
        for (s, v) in [
            ("64MiB", 64u64 << 20),
            ("1GiB", 1 << 30),
            ("512M", 512 << 20),
            ("100KB", 100_000),
            ("1.5G", 3 << 29),
            ("4096", 4096),
            (" 2 KiB ", 2048),
        ] {
            assert_eq!(s.parse::<ByteSize>().unwrap().0, v, "{s}");
        }
        for s in ["", "MiB", "-1M", "12XB", "1.5"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        #[derive(Deserialize)]
        struct C {
            c: CpuLimit,
        }
        let cpu = |t: &str| toml::from_str::<C>(t).map(|c| c.c.millicores).map_err(|e| e.to_string());
        assert_eq!(cpu("c = 1.5"), Ok(1500));
        assert_eq!(cpu("c = 2"), Ok(2000));
        assert_eq!(cpu("c = \"250%\""), Ok(2500));
        assert!(cpu("c = \"fast\"").unwrap_err().contains("invalid cpu_max"));
        assert!(cpu("c = 0").is_err());
    }

    #[test]
    fn errors_carry_the_position() {
        let e = parse("[workers.w]\ncommand = [\"x\"]\nsandbox = { memory_max = \"64 parsecs\" }\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("invalid size"), "{e}");
        let e = parse("[workers.w]\ncommand = [\"x\"]\nbackoff = { initial_ms = 10, max_ms = 100, factor = 0.5 }\n")
            .unwrap_err();
        assert!(e.contains("line 3") && e.contains("factor must be >= 1.0"), "{e}");
        let e = parse("[workers.w]\ncommand = [\"x\"]\n\nbackoff = { initial_ms = 1000, max_ms = 100 }\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("must not exceed max_ms"), "{e}");
        let e = parse("[workers.w]\ncommand = []\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("command must name a program"), "{e}");
        let e =
            parse("[workers.w]\ncommand = [\"x\"]\nliveness = { http = \"http://a\", tcp = \"b:1\" }\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("exactly one"), "{e}");
        let e = parse("[workers.w]\ncommand = [\"x\"]\nsandbox = { memroy_max = \"1G\" }\n").unwrap_err();
        assert!(e.contains("unknown field") && e.contains("memroy_max"), "{e}");
        let e = parse("[workers.w]\nrestart = \"sometimes\"\ncommand = [\"x\"]\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse("[workers.w]\nrestart = \"never\"\n").unwrap_err().contains("missing field `command`"));
    }

    #[test]
    fn schema_documents_every_field() {
        let schema = schemars::schema_for!(WorkerConfig);
        let json = serde_json::to_value(&schema).unwrap();
        let props = json["properties"].as_object().unwrap();
        for key in ["command", "restart", "backoff", "max_restarts", "liveness", "sandbox", "hooks", "env", "required"]
        {
            assert!(props.contains_key(key), "{key} missing from the schema");
            assert!(props[key].get("description").is_some(), "{key} has no description");
        }
        let defs = json["$defs"].as_object().unwrap();
        let probe = defs["Probe"]["properties"].as_object().unwrap();
        assert!(probe.contains_key("http") && probe.contains_key("grpc") && probe.contains_key("period_s"));
        let sandbox = defs["SandboxConfig"]["properties"].as_object().unwrap();
        assert!(sandbox.contains_key("memory_max") && sandbox.contains_key("wrapper"));
    }
}
