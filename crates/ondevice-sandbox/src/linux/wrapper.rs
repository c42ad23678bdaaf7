//! Command prefixes for bubblewrap and firejail.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::{Network, SandboxPolicy};

/// `bwrap ... --` for `policy`. Without filesystem rules the root is bound read-only as a whole
/// (with `/tmp` private), so the worker still runs; with rules only the system paths, `fs_read`
/// (read-only) and `fs_write` (read-write) exist inside.
pub(super) fn bwrap(path: &Path, policy: &SandboxPolicy, read: &[PathBuf], seccomp: Option<&OwnedFd>) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![path.into(), "--die-with-parent".into(), "--new-session".into()];
    if policy.restricts_fs() {
        for p in read.iter().filter(|p| p.exists()) {
            if p == Path::new("/dev") || p == Path::new("/proc") {
                continue;
            }
            a.extend(["--ro-bind".into(), p.into(), p.into()]);
        }
    } else {
        a.extend(["--ro-bind".into(), "/".into(), "/".into(), "--tmpfs".into(), "/tmp".into()]);
    }
    for p in &policy.fs_write {
        a.extend(["--bind".into(), p.into(), p.into()]);
    }
    a.extend(["--dev".into(), "/dev".into(), "--proc".into(), "/proc".into()]);
    if policy.network == Network::None {
        a.push("--unshare-net".into());
    }
    if let Some(fd) = seccomp {
        a.extend(["--seccomp".into(), fd.as_raw_fd().to_string().into()]);
    }
    a.push("--".into());
    a
}

/// `firejail ... --` for `policy`.
pub(super) fn firejail(path: &Path, policy: &SandboxPolicy) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![path.into(), "--quiet".into(), "--noprofile".into(), "--seccomp".into()];
    if policy.network == Network::None {
        a.push("--net=none".into());
    }
    if policy.restricts_fs() {
        for p in &policy.fs_read {
            a.push(format!("--read-only={}", p.display()).into());
        }
        for p in &policy.fs_write {
            a.push(format!("--read-write={}", p.display()).into());
        }
    }
    a.push("--".into());
    a
}
