//! The requested protection for one worker (the domain form of `[workers.NAME.sandbox]`).

use std::path::PathBuf;

/// How strictly the requested protection is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Enforce what the host can; log a warning and report what it cannot.
    #[default]
    Auto,
    /// Refuse to start a worker whose requested protection cannot all be enforced.
    On,
    /// Enforce nothing.
    Off,
}

/// Network access of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network, unrestricted.
    #[default]
    Host,
    /// No network: a private network namespace (only a down loopback), or landlock TCP rules.
    None,
}

/// An external sandbox program to wrap the worker's command in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wrapper {
    /// No wrapper: the built-in mechanisms only.
    #[default]
    None,
    /// bubblewrap (`bwrap`): mount namespace with the allowed paths bound, optional network namespace.
    Bwrap,
    /// firejail.
    Firejail,
}

/// CPU bandwidth limit, in thousandths of a CPU ("millicores"): 500 is half a core, 2000 two cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CpuMax {
    /// Thousandths of one CPU.
    pub millicores: u32,
}

/// Read-only paths every filesystem-restricted worker may read (and execute) in addition to
/// `fs_read`, so that programs and their shared libraries load.
pub const DEFAULT_SYSTEM_READ: &[&str] =
    &["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev"];

/// The protection requested for a worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SandboxPolicy {
    /// auto, on or off.
    pub mode: SandboxMode,
    /// Hard memory limit in bytes (cgroup memory.max; OOM kill beyond it).
    pub memory_max: Option<u64>,
    /// Memory throttling threshold in bytes (cgroup v2 memory.high).
    pub memory_high: Option<u64>,
    /// CPU bandwidth limit.
    pub cpu_max: Option<CpuMax>,
    /// Maximum number of processes and threads (cgroup pids.max).
    pub pids_max: Option<u64>,
    /// Maximum open file descriptors (RLIMIT_NOFILE).
    pub nofile: Option<u64>,
    /// Maximum virtual address space in bytes (RLIMIT_AS).
    pub address_space: Option<u64>,
    /// Maximum CPU time in seconds (RLIMIT_CPU).
    pub cpu_time_s: Option<u64>,
    /// Maximum core dump size in bytes (RLIMIT_CORE); `Some(0)` disables core dumps.
    pub core_size: Option<u64>,
    /// Maximum size in bytes of a file the worker writes (RLIMIT_FSIZE).
    pub file_size: Option<u64>,
    /// Network access.
    pub network: Network,
    /// Paths readable (not writable). When this or `fs_write` is non-empty, the filesystem is
    /// restricted to these, `fs_write` and [`DEFAULT_SYSTEM_READ`].
    pub fs_read: Vec<PathBuf>,
    /// Paths readable and writable (e.g. one scratch dir).
    pub fs_write: Vec<PathBuf>,
    /// Install the seccomp deny-list (ptrace, mount, kexec, bpf, keyctl, module loading, ...).
    pub seccomp: bool,
    /// External wrapper program.
    pub wrapper: Wrapper,
}

impl SandboxPolicy {
    /// Whether the filesystem is to be restricted.
    pub fn restricts_fs(&self) -> bool {
        !self.fs_read.is_empty() || !self.fs_write.is_empty()
    }
}
