//! The macOS sandbox: rlimits, plus an optional `sandbox-exec` profile for filesystem and network
//! restrictions. macOS has no cgroups: memory (RLIMIT_AS is not enforced by macOS) and CPU
//! bandwidth are reported as missing. Compiled only on macOS; not tested in this repository's CI.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use crate::null::requested;
use crate::unix::HookData;
use crate::{
    Capabilities, ChildHook, DEFAULT_SYSTEM_READ, Limit, Mechanism, Network, Prepared, Protection, Sandbox,
    SandboxError, SandboxMode, SandboxPolicy, finish,
};

/// Detect what this macOS host can enforce.
pub fn detect() -> Capabilities {
    let mut caps = Capabilities::none("macOS: no cgroups; memory and CPU bandwidth limits are not available");
    caps.os = "macos";
    caps.rlimits = true;
    let se = PathBuf::from("/usr/bin/sandbox-exec");
    caps.sandbox_exec = se.is_file().then_some(se);
    caps
}

/// The macOS sandbox.
#[derive(Debug)]
pub struct MacSandbox {
    caps: Capabilities,
}

impl MacSandbox {
    /// Detect and build.
    pub fn new() -> MacSandbox {
        MacSandbox { caps: detect() }
    }
}

impl Default for MacSandbox {
    fn default() -> Self {
        MacSandbox::new()
    }
}

fn quote(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
}

/// A sandbox-exec (SBPL) profile for `policy`.
pub fn profile(policy: &SandboxPolicy) -> String {
    let mut s = String::from("(version 1)\n(allow default)\n");
    if policy.network == Network::None {
        s.push_str("(deny network*)\n");
    }
    if policy.restricts_fs() {
        s.push_str("(deny file-read* file-write*)\n(allow file-read* (literal \"/\")");
        for p in DEFAULT_SYSTEM_READ
            .iter()
            .map(PathBuf::from)
            .chain(["/System", "/Library", "/private/etc", "/private/var/db"].map(PathBuf::from))
            .chain(policy.fs_read.iter().cloned())
        {
            s.push_str(&format!(" (subpath \"{}\")", quote(&p)));
        }
        s.push_str(")\n(allow file-read* file-write*");
        for p in policy.fs_write.iter().map(PathBuf::as_path).chain([std::path::Path::new("/dev")]) {
            s.push_str(&format!(" (subpath \"{}\")", quote(p)));
        }
        s.push_str(")\n");
    }
    s
}

impl Sandbox for MacSandbox {
    fn name(&self) -> &'static str {
        "macos"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare(&self, worker: &str, policy: &SandboxPolicy) -> Result<Prepared, SandboxError> {
        let mut p = Protection::new(policy.mode);
        if policy.mode == SandboxMode::Off {
            return Ok(Prepared::unprotected(p));
        }
        let mut hook = HookData::default();
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        for limit in requested(policy) {
            let rl = match limit {
                Limit::OpenFiles => policy.nofile.map(|v| (libc::RLIMIT_NOFILE, v, "RLIMIT_NOFILE")),
                Limit::AddressSpace => policy.address_space.map(|v| (libc::RLIMIT_AS, v, "RLIMIT_AS")),
                Limit::CpuTime => policy.cpu_time_s.map(|v| (libc::RLIMIT_CPU, v, "RLIMIT_CPU")),
                Limit::CoreSize => policy.core_size.map(|v| (libc::RLIMIT_CORE, v, "RLIMIT_CORE")),
                Limit::FileSize => policy.file_size.map(|v| (libc::RLIMIT_FSIZE, v, "RLIMIT_FSIZE")),
                Limit::PidsMax if !root => policy.pids_max.map(|v| (libc::RLIMIT_NPROC, v, "RLIMIT_NPROC (per user)")),
                _ => None,
            };
            if let Some((res, v, name)) = rl {
                hook.rlimits.push((res, v));
                p.enforce(limit, Mechanism::Rlimit, format!("{name} = {v}"));
            } else if matches!(limit, Limit::Filesystem | Limit::Network) {
                if self.caps.sandbox_exec.is_some() {
                    p.enforce(limit, Mechanism::SandboxExec, "sandbox-exec profile");
                } else {
                    p.miss(limit, "sandbox-exec is not available");
                }
            } else {
                p.miss(limit, "not available on macOS");
            }
        }
        finish(worker, &p)?;
        let mut prepared = Prepared::unprotected(p);
        if let Some(se) = &self.caps.sandbox_exec {
            if policy.restricts_fs() || policy.network == Network::None {
                prepared.wrapper = vec![se.into(), OsString::from("-p"), profile(policy).into()];
            }
        }
        prepared.hook = ChildHook { data: Arc::new(hook) };
        Ok(prepared)
    }
}
