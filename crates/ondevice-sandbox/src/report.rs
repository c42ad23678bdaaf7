//! Reports as plain data: what the host can do ([`Capabilities`]) and what one worker gets
//! ([`Protection`]).

use std::fmt;
use std::path::PathBuf;

use crate::SandboxMode;

/// A kind of protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Hard memory limit.
    MemoryMax,
    /// Memory throttling threshold.
    MemoryHigh,
    /// CPU bandwidth.
    CpuMax,
    /// Process/thread count.
    PidsMax,
    /// Open files.
    OpenFiles,
    /// Virtual address space.
    AddressSpace,
    /// CPU time.
    CpuTime,
    /// Core dump size.
    CoreSize,
    /// Written file size.
    FileSize,
    /// Filesystem access restricted to the allowed paths.
    Filesystem,
    /// Network denied.
    Network,
    /// Dangerous system calls denied.
    Syscalls,
    /// The whole process tree can be killed at once, even processes that left the group.
    TreeKill,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Limit::MemoryMax => "memory_max",
            Limit::MemoryHigh => "memory_high",
            Limit::CpuMax => "cpu_max",
            Limit::PidsMax => "pids_max",
            Limit::OpenFiles => "nofile",
            Limit::AddressSpace => "address_space",
            Limit::CpuTime => "cpu_time",
            Limit::CoreSize => "core_size",
            Limit::FileSize => "file_size",
            Limit::Filesystem => "filesystem",
            Limit::Network => "network",
            Limit::Syscalls => "syscalls",
            Limit::TreeKill => "tree_kill",
        };
        f.write_str(s)
    }
}

/// The mechanism enforcing a protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// Linux cgroup v2.
    CgroupV2,
    /// Linux cgroup v1.
    CgroupV1,
    /// setrlimit.
    Rlimit,
    /// Linux landlock.
    Landlock,
    /// Linux seccomp filter.
    Seccomp,
    /// Linux private network namespace.
    NetNamespace,
    /// bubblewrap.
    Bubblewrap,
    /// firejail.
    Firejail,
    /// Windows Job Object.
    JobObject,
    /// macOS sandbox-exec profile.
    SandboxExec,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Mechanism::CgroupV2 => "cgroup-v2",
            Mechanism::CgroupV1 => "cgroup-v1",
            Mechanism::Rlimit => "rlimit",
            Mechanism::Landlock => "landlock",
            Mechanism::Seccomp => "seccomp",
            Mechanism::NetNamespace => "net-namespace",
            Mechanism::Bubblewrap => "bubblewrap",
            Mechanism::Firejail => "firejail",
            Mechanism::JobObject => "job-object",
            Mechanism::SandboxExec => "sandbox-exec",
        };
        f.write_str(s)
    }
}

/// A protection in effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Enforced {
    /// What is limited.
    pub limit: Limit,
    /// By what.
    pub mechanism: Mechanism,
    /// The value or a short description, e.g. `"67108864 bytes"`.
    pub detail: String,
}

/// A requested protection that is not in effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Missing {
    /// What was requested.
    pub limit: Limit,
    /// Why it is not enforced.
    pub reason: String,
}

/// The effective protection of one worker start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Protection {
    /// The mode the worker was started in.
    pub mode: SandboxMode,
    /// Protections in effect.
    pub enforced: Vec<Enforced>,
    /// Requested protections not in effect (only possible in mode `auto`).
    pub missing: Vec<Missing>,
}

impl Protection {
    /// An empty report for `mode`.
    pub fn new(mode: SandboxMode) -> Protection {
        Protection { mode, enforced: Vec::new(), missing: Vec::new() }
    }

    /// Record an enforced protection.
    pub fn enforce(&mut self, limit: Limit, mechanism: Mechanism, detail: impl Into<String>) {
        self.enforced.push(Enforced { limit, mechanism, detail: detail.into() });
    }

    /// Record a missing protection.
    pub fn miss(&mut self, limit: Limit, reason: impl Into<String>) {
        self.missing.push(Missing { limit, reason: reason.into() });
    }

    /// The mechanism enforcing `limit`, if any.
    pub fn mechanism(&self, limit: Limit) -> Option<Mechanism> {
        self.enforced.iter().find(|e| e.limit == limit).map(|e| e.mechanism)
    }
}

/// What a cgroup v2 hierarchy offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CgroupV2Info {
    /// Mount point (from /proc/self/mountinfo).
    pub mount: PathBuf,
    /// This process's cgroup, relative to the mount.
    pub own: PathBuf,
    /// Controllers listed in the root's `cgroup.controllers`.
    pub controllers: Vec<String>,
    /// Whether `cgroup.kill` exists (Linux 5.14+).
    pub kill: bool,
}

impl CgroupV2Info {
    /// Whether the hierarchy has controller `name`.
    pub fn has(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }
}

/// The cgroup v1 hierarchies that are mounted, by controller.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct CgroupV1Info {
    /// The `memory` hierarchy mount.
    pub memory: Option<PathBuf>,
    /// The `pids` hierarchy mount.
    pub pids: Option<PathBuf>,
    /// The `cpu` hierarchy mount.
    pub cpu: Option<PathBuf>,
}

/// What this host can enforce.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Operating system family, e.g. `"linux"`.
    pub os: &'static str,
    /// cgroup v2, if mounted.
    pub cgroup_v2: Option<CgroupV2Info>,
    /// cgroup v1 hierarchies, if any are mounted.
    pub cgroup_v1: Option<CgroupV1Info>,
    /// Which cgroup version enforces memory, pids and cpu limits: `(controller, mechanism)`.
    pub cgroup_choice: Vec<(String, Mechanism)>,
    /// Whether we can write cgroup files (root or a delegated subtree).
    pub cgroup_writable: bool,
    /// setrlimit is available.
    pub rlimits: bool,
    /// Landlock ABI version, if landlock is enabled.
    pub landlock_abi: Option<u32>,
    /// seccomp filters are available.
    pub seccomp: bool,
    /// A private network namespace can be created (root, or unprivileged user namespaces).
    pub net_namespace: bool,
    /// Path of `bwrap`, if installed.
    pub bwrap: Option<PathBuf>,
    /// Path of `firejail`, if installed.
    pub firejail: Option<PathBuf>,
    /// Windows Job Objects are available.
    pub job_objects: bool,
    /// macOS `sandbox-exec`, if present.
    pub sandbox_exec: Option<PathBuf>,
    /// Notes a person reads (why something is unavailable).
    pub notes: Vec<String>,
}

impl Capabilities {
    /// Capabilities of a host where nothing can be enforced.
    pub fn none(note: &str) -> Capabilities {
        Capabilities {
            os: std::env::consts::OS,
            cgroup_v2: None,
            cgroup_v1: None,
            cgroup_choice: Vec::new(),
            cgroup_writable: false,
            rlimits: false,
            landlock_abi: None,
            seccomp: false,
            net_namespace: false,
            bwrap: None,
            firejail: None,
            job_objects: false,
            sandbox_exec: None,
            notes: vec![note.to_string()],
        }
    }

    /// The mechanism chosen for cgroup controller `name` (`memory`, `pids`, `cpu`).
    pub fn cgroup_for(&self, name: &str) -> Option<Mechanism> {
        self.cgroup_choice.iter().find(|(c, _)| c == name).map(|(_, m)| *m)
    }
}

/// Find an executable by name in `PATH`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
