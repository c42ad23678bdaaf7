//! The part of a sandbox that runs in the child, between `fork` and `exec`.
//!
//! Everything that allocates or can fail in complex ways (opening cgroup files, building the
//! landlock ruleset, compiling the seccomp filter) is done in the parent by `prepare`; the child
//! only makes async-signal-safe system calls on prepared data.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Prepared data for the child. Cloning is cheap (shared).
#[derive(Debug, Clone, Default)]
pub struct ChildHook {
    pub(crate) data: Arc<HookData>,
}

#[derive(Debug, Default)]
pub(crate) struct HookData {
    /// Open `cgroup.procs` files; the child writes `0` (itself) to each.
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// `(resource, value)` pairs for setrlimit (soft = hard = value).
    pub(crate) rlimits: Vec<(i32, u64)>,
    /// Flags for `unshare(2)` (e.g. CLONE_NEWNET).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) unshare: i32,
    /// A landlock ruleset to restrict ourselves with.
    #[cfg(target_os = "linux")]
    pub(crate) landlock: Option<OwnedFd>,
    /// A seccomp BPF program to install.
    #[cfg(target_os = "linux")]
    pub(crate) seccomp: Vec<libc::sock_filter>,
    /// File descriptors to keep open across exec (clear CLOEXEC), e.g. bwrap's `--seccomp FD`.
    pub(crate) inherit: Vec<OwnedFd>,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl ChildHook {
    /// Whether the hook does anything.
    pub fn is_empty(&self) -> bool {
        let d = &self.data;
        let base = d.cgroup_procs.is_empty() && d.rlimits.is_empty() && d.unshare == 0 && d.inherit.is_empty();
        #[cfg(target_os = "linux")]
        let base = base && d.landlock.is_none() && d.seccomp.is_empty();
        base
    }

    /// First step in the child, while still privileged: join the cgroups, set rlimits, enter new
    /// namespaces.
    ///
    /// # Safety
    /// Call only in a forked child before `exec` (e.g. from `CommandExt::pre_exec`). It makes only
    /// async-signal-safe system calls and does not allocate.
    pub unsafe fn enter(&self) -> io::Result<()> {
        let d = &self.data;
        for fd in &d.cgroup_procs {
            // SAFETY: writing a 1-byte static buffer to an fd we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for &(res, val) in &d.rlimits {
            let lim = libc::rlimit { rlim_cur: val as libc::rlim_t, rlim_max: val as libc::rlim_t };
            // SAFETY: plain system call with a valid pointer.
            check(unsafe { libc::setrlimit(res as _, &lim) })?;
        }
        for fd in &d.inherit {
            // SAFETY: clearing FD_CLOEXEC on an fd we own.
            check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) })?;
        }
        #[cfg(target_os = "linux")]
        if d.unshare != 0 {
            // SAFETY: plain system call.
            check(unsafe { libc::unshare(d.unshare) })?;
        }
        Ok(())
    }

    /// Second step in the child, after any change of user: landlock and seccomp. Sets
    /// `no_new_privs` when either is used.
    ///
    /// # Safety
    /// As for [`ChildHook::enter`].
    pub unsafe fn restrict(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let d = &self.data;
            if d.landlock.is_none() && d.seccomp.is_empty() {
                return Ok(());
            }
            // SAFETY: plain system calls with valid arguments.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
            if let Some(fd) = &d.landlock {
                // SAFETY: landlock_restrict_self(ruleset_fd, flags).
                let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if !d.seccomp.is_empty() {
                let prog = libc::sock_fprog { len: d.seccomp.len() as u16, filter: d.seccomp.as_ptr() as *mut _ };
                // SAFETY: prog points to a valid filter that outlives the call.
                check(unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _) })?;
            }
        }
        Ok(())
    }
}
