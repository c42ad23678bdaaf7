//! Landlock rulesets built with raw system calls: read-only paths, read-write paths, and (ABI 4+)
//! no TCP bind/connect. The ruleset is built in the parent; the child only calls
//! `landlock_restrict_self`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::SandboxError;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The landlock ABI version of the running kernel, `None` if landlock is unavailable.
pub fn abi() -> Option<u32> {
    // SAFETY: with a null attr and size 0, the VERSION flag only queries.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if r > 0 { Some(r as u32) } else { None }
}

fn fs_mask(abi: u32) -> u64 {
    let mut m = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        m |= REFER;
    }
    if abi >= 3 {
        m |= TRUNCATE;
    }
    if abi >= 5 {
        m |= IOCTL_DEV;
    }
    m
}

/// What a ruleset is asked to do.
#[derive(Debug, Default)]
pub struct Rules<'a> {
    /// Restrict the filesystem at all.
    pub restrict_fs: bool,
    /// Readable (and executable) paths.
    pub read: Vec<&'a Path>,
    /// Readable and writable paths.
    pub write: Vec<&'a Path>,
    /// Deny TCP bind and connect (ABI 4+).
    pub deny_tcp: bool,
}

fn sys_err(call: &'static str) -> SandboxError {
    SandboxError::Sys { call, source: io::Error::last_os_error() }
}

/// Build a ruleset for `rules` on a kernel with landlock ABI `abi`. Paths that do not exist are
/// skipped (a missing `/lib64` is normal).
pub fn build(abi: u32, rules: &Rules<'_>) -> Result<OwnedFd, SandboxError> {
    let fs = if rules.restrict_fs { fs_mask(abi) } else { 0 };
    let net = if rules.deny_tcp && abi >= 4 { NET_BIND_TCP | NET_CONNECT_TCP } else { 0 };
    let attr = RulesetAttr { handled_access_fs: fs, handled_access_net: net, scoped: 0 };
    let size = if abi >= 4 { 16usize } else { 8 };
    // SAFETY: attr is valid for `size` bytes (a prefix of the struct understood by this ABI).
    let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const RulesetAttr, size, 0u32) };
    if fd < 0 {
        return Err(sys_err("landlock_create_ruleset"));
    }
    // SAFETY: the kernel returned a fresh fd (close-on-exec) that we now own.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if rules.restrict_fs {
        let file_bits = EXECUTE
            | READ_FILE
            | WRITE_FILE
            | if abi >= 3 { TRUNCATE } else { 0 }
            | if abi >= 5 { IOCTL_DEV } else { 0 };
        let read_bits = EXECUTE | READ_FILE | READ_DIR;
        for (paths, bits) in [(&rules.read, read_bits), (&rules.write, fs)] {
            for path in paths.iter() {
                let Ok(f) = File::options().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path) else {
                    continue;
                };
                let is_dir = f.metadata().map(|m| m.is_dir()).unwrap_or(false);
                let allowed = if is_dir { bits } else { bits & file_bits };
                add_path(&ruleset, &f, allowed)?;
            }
        }
    }
    Ok(ruleset)
}

fn add_path(ruleset: &OwnedFd, f: &File, allowed: u64) -> Result<(), SandboxError> {
    let attr = PathBeneathAttr { allowed_access: allowed, parent_fd: f.as_raw_fd() };
    // SAFETY: attr is a valid packed landlock_path_beneath_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if r < 0 { Err(sys_err("landlock_add_rule")) } else { Ok(()) }
}
