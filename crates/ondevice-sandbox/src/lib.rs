//! Resource limits and isolation for ondevice worker processes.
//!
//! The supervisor asks a [`Sandbox`] to [`prepare`](Sandbox::prepare) a worker's [`SandboxPolicy`]
//! before each spawn. The answer, a [`Prepared`], carries
//!
//! * a [`Protection`] report: which limits are enforced and by which mechanism, and which are not
//!   and why (this is what `ondevice daemon status` shows),
//! * a [`ChildHook`] the supervisor runs in the child between `fork` and `exec` (cgroup join,
//!   rlimits, network namespace, landlock, seccomp),
//! * an optional wrapper command prefix (bubblewrap, firejail, sandbox-exec),
//! * control over the worker's cgroup or job: kill the whole tree, count OOM kills, clean up.
//!
//! This crate never spawns processes itself: the supervisor is the only crate that does.
//!
//! Platforms: Linux ([`linux::LinuxSandbox`]: cgroup v2 with cgroup v1 fallback, rlimits, landlock,
//! seccomp, network namespace, bubblewrap/firejail), macOS (rlimits and an optional `sandbox-exec`
//! profile), Windows (Job Objects). Anything else gets [`NullSandbox`], which enforces nothing and
//! says so.
#![warn(missing_docs)]

mod null;
mod policy;
mod report;

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "macos")]
pub mod macos;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
pub mod windows;

pub use null::NullSandbox;
pub use policy::{CpuMax, DEFAULT_SYSTEM_READ, Network, SandboxMode, SandboxPolicy, Wrapper};
pub use report::{Capabilities, CgroupV1Info, CgroupV2Info, Enforced, Limit, Mechanism, Missing, Protection};
#[cfg(unix)]
pub use unix::ChildHook;

use std::ffi::OsString;
use std::path::PathBuf;

/// Errors of the sandbox crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// `mode = "on"` and some requested protection cannot be enforced on this host.
    #[error(
        "worker {worker}: sandbox mode is \"on\" but these protections cannot be enforced on this host: {}; use mode = \"auto\" to run with reduced protection",
        missing.iter().map(|m| format!("{} ({})", m.limit, m.reason)).collect::<Vec<_>>().join(", ")
    )]
    Unenforceable {
        /// Worker name.
        worker: String,
        /// What is missing and why.
        missing: Vec<Missing>,
    },
    /// A filesystem operation on a cgroup, a policy path or a device failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "write cgroup file".
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call, e.g. "landlock_create_ruleset".
        call: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The requested wrapper (bwrap, firejail, sandbox-exec) is not installed.
    #[error("wrapper {0} is not installed; install it or set wrapper = \"none\"")]
    WrapperMissing(&'static str),
}

impl SandboxError {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SandboxError::Io { action, path: path.into(), source }
    }
}

/// A platform sandbox: detects what the host can enforce and prepares workers.
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    /// Short name of the implementation, e.g. `"linux"`, `"null"`.
    fn name(&self) -> &'static str;
    /// What this host can enforce (computed once at construction).
    fn capabilities(&self) -> &Capabilities;
    /// Prepare one start of worker `worker` under `policy`.
    ///
    /// In mode `on`, fails with [`SandboxError::Unenforceable`] when a requested protection cannot
    /// be enforced; in mode `auto`, logs a warning and records it in [`Protection::missing`].
    fn prepare(&self, worker: &str, policy: &SandboxPolicy) -> Result<Prepared, SandboxError>;
}

/// Platform-specific control of a prepared worker: the cgroup or job it runs in.
pub(crate) trait Control: Send + Sync + std::fmt::Debug {
    /// Record the spawned child (Windows assigns it to its job here).
    fn after_spawn(&mut self, _pid: u32) -> Result<(), SandboxError> {
        Ok(())
    }
    /// Kill every process of the worker's group. Returns `true` when the kill went through a
    /// mechanism that reaches every descendant (cgroup, job), `false` if nothing was done.
    fn kill_all(&self) -> Result<bool, SandboxError> {
        Ok(false)
    }
    /// How many times the kernel's OOM killer killed a process of this worker.
    fn oom_kills(&self) -> u64 {
        0
    }
    /// Remove the cgroup or close the job. Called once, after the worker has exited.
    fn release(&mut self) {}
}

#[derive(Debug)]
struct NoControl;
impl Control for NoControl {}

/// One start of a worker, prepared: the report, the in-child hook, the wrapper and the control.
#[derive(Debug)]
pub struct Prepared {
    /// What is enforced for this start, and what is not.
    pub protection: Protection,
    wrapper: Vec<OsString>,
    #[cfg(unix)]
    hook: ChildHook,
    control: Box<dyn Control>,
    released: bool,
}

impl Prepared {
    /// A preparation that enforces nothing (mode `off` or the null sandbox).
    pub fn unprotected(protection: Protection) -> Prepared {
        Prepared {
            protection,
            wrapper: Vec::new(),
            #[cfg(unix)]
            hook: ChildHook::default(),
            control: Box::new(NoControl),
            released: false,
        }
    }

    /// The argv to execute: the wrapper prefix (if any) followed by `argv`.
    pub fn wrap_argv(&self, argv: &[OsString]) -> Vec<OsString> {
        let mut out = self.wrapper.clone();
        out.extend(argv.iter().cloned());
        out
    }

    /// The hook to run in the child between `fork` and `exec`.
    #[cfg(unix)]
    pub fn child_hook(&self) -> ChildHook {
        self.hook.clone()
    }

    /// Tell the sandbox the pid of the spawned child (needed on Windows to assign the job).
    pub fn after_spawn(&mut self, pid: u32) -> Result<(), SandboxError> {
        self.control.after_spawn(pid)
    }

    /// Kill every process in the worker's cgroup or job. Returns `true` if such a kill was done.
    pub fn kill_all(&self) -> Result<bool, SandboxError> {
        self.control.kill_all()
    }

    /// Number of OOM kills recorded for this start (from `memory.events` or `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        self.control.oom_kills()
    }

    /// Remove the cgroup or job. Blocks briefly (bounded) while the kernel reaps the last
    /// processes. Also done on drop.
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if !self.released {
            self.released = true;
            self.control.release();
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// Detect what this host can enforce.
pub fn detect() -> Capabilities {
    #[cfg(target_os = "linux")]
    {
        linux::detect()
    }
    #[cfg(target_os = "macos")]
    {
        macos::detect()
    }
    #[cfg(windows)]
    {
        windows::detect()
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    {
        Capabilities::none("unsupported platform")
    }
}

/// The best sandbox for this platform.
pub fn host_sandbox() -> Box<dyn Sandbox> {
    #[cfg(target_os = "linux")]
    {
        Box::new(linux::LinuxSandbox::new(linux::LinuxOptions::default()))
    }
    #[cfg(target_os = "macos")]
    {
        Box::new(macos::MacSandbox::new())
    }
    #[cfg(windows)]
    {
        Box::new(windows::WindowsSandbox::new())
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    {
        Box::new(NullSandbox::new())
    }
}

/// Shared decision for every implementation: given what was requested and what could not be
/// enforced, fail in mode `on`, warn in mode `auto`.
pub(crate) fn finish(worker: &str, protection: &Protection) -> Result<(), SandboxError> {
    if protection.missing.is_empty() {
        return Ok(());
    }
    match protection.mode {
        SandboxMode::On => {
            Err(SandboxError::Unenforceable { worker: worker.to_string(), missing: protection.missing.clone() })
        }
        SandboxMode::Auto => {
            for m in &protection.missing {
                tracing::warn!(worker, limit = %m.limit, reason = %m.reason, "sandbox protection not enforced");
            }
            Ok(())
        }
        SandboxMode::Off => Ok(()),
    }
}
