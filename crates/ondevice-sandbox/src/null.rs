//! The null sandbox: enforces nothing and reports every requested protection as missing.

use crate::{Capabilities, Limit, Prepared, Protection, Sandbox, SandboxError, SandboxMode, SandboxPolicy, finish};

/// A sandbox that enforces nothing. Used on unsupported platforms and in tests; it reports
/// honestly that every requested protection is missing, so mode `on` refuses to start.
#[derive(Debug)]
pub struct NullSandbox {
    caps: Capabilities,
}

impl NullSandbox {
    /// A null sandbox.
    pub fn new() -> NullSandbox {
        NullSandbox { caps: Capabilities::none("null sandbox: no protection mechanism is used") }
    }
}

impl Default for NullSandbox {
    fn default() -> Self {
        NullSandbox::new()
    }
}

/// The protections `policy` asks for, in report order.
pub(crate) fn requested(policy: &SandboxPolicy) -> Vec<Limit> {
    let mut out = Vec::new();
    let mut push = |cond: bool, l: Limit| {
        if cond {
            out.push(l)
        }
    };
    push(policy.memory_max.is_some(), Limit::MemoryMax);
    push(policy.memory_high.is_some(), Limit::MemoryHigh);
    push(policy.cpu_max.is_some(), Limit::CpuMax);
    push(policy.pids_max.is_some(), Limit::PidsMax);
    push(policy.nofile.is_some(), Limit::OpenFiles);
    push(policy.address_space.is_some(), Limit::AddressSpace);
    push(policy.cpu_time_s.is_some(), Limit::CpuTime);
    push(policy.core_size.is_some(), Limit::CoreSize);
    push(policy.file_size.is_some(), Limit::FileSize);
    push(policy.restricts_fs(), Limit::Filesystem);
    push(policy.network == crate::Network::None, Limit::Network);
    push(policy.seccomp, Limit::Syscalls);
    out
}

impl Sandbox for NullSandbox {
    fn name(&self) -> &'static str {
        "null"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare(&self, worker: &str, policy: &SandboxPolicy) -> Result<Prepared, SandboxError> {
        let mut p = Protection::new(policy.mode);
        if policy.mode != SandboxMode::Off {
            for l in requested(policy) {
                p.miss(l, "no sandbox mechanism on this platform");
            }
        }
        finish(worker, &p)?;
        Ok(Prepared::unprotected(p))
    }
}
