//! The Linux sandbox: cgroup v2 (primary) with a cgroup v1 fallback per controller, rlimits,
//! landlock, a seccomp deny-list, a private network namespace, and optional bubblewrap/firejail.

pub mod cgroup;
pub mod landlock;
pub mod seccomp;
mod wrapper;

use std::ffi::OsString;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::null::requested;
use crate::report::which;
use crate::unix::HookData;
use crate::{
    Capabilities, CgroupV1Info, CgroupV2Info, ChildHook, Control, DEFAULT_SYSTEM_READ, Limit, Mechanism, Network,
    Prepared, Protection, Sandbox, SandboxError, SandboxMode, SandboxPolicy, Wrapper, finish,
};
use cgroup::{Cgroup1, Cgroup2};

/// Options of the Linux sandbox.
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// Name of the directory holding the workers' cgroups: `<v2 own cgroup>/<name>` and
    /// `<v1 mount>/<name>`.
    pub cgroup_base: String,
}

impl Default for LinuxOptions {
    fn default() -> Self {
        LinuxOptions { cgroup_base: "ondevice".to_string() }
    }
}

/// Unescape the octal escapes (`\040`) of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text into `(v2 mount, v1 mounts by controller)`.
pub fn parse_mountinfo(text: &str) -> (Option<PathBuf>, Vec<(String, PathBuf)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(unescape(pre[4]));
        match post[0] {
            "cgroup2" if v2.is_none() => v2 = Some(mount),
            "cgroup" => {
                for opt in post[2].split(',') {
                    if matches!(opt, "memory" | "pids" | "cpu") {
                        v1.push((opt.to_string(), mount.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_v2() -> PathBuf {
    fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(|p| PathBuf::from(p.trim()))))
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn euid_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn writable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn read_num(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Detect what this Linux host can enforce.
pub fn detect() -> Capabilities {
    let mut caps = Capabilities::none("");
    caps.notes.clear();
    caps.os = "linux";
    let (v2, v1) = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let root = euid_is_root();
    if let Some(mount) = v2 {
        let controllers: Vec<String> = fs::read_to_string(mount.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let own = own_v2();
        let kill =
            mount.join(own.strip_prefix("/").unwrap_or(&own)).join("cgroup.kill").exists() || kernel_at_least(5, 14);
        let lacking: Vec<&str> =
            ["memory", "cpu", "pids"].into_iter().filter(|c| !controllers.iter().any(|x| x == c)).collect();
        if !lacking.is_empty() {
            caps.notes.push(format!("cgroup v2 at {} has no {} controller(s)", mount.display(), lacking.join("/")));
        }
        caps.cgroup_writable = root || writable(&mount.join(own.strip_prefix("/").unwrap_or(&own)));
        caps.cgroup_v2 = Some(CgroupV2Info { mount, own, controllers, kill });
    }
    if !v1.is_empty() {
        let get = |c: &str| v1.iter().find(|(n, _)| n == c).map(|(_, m)| m.clone());
        caps.cgroup_v1 = Some(CgroupV1Info { memory: get("memory"), pids: get("pids"), cpu: get("cpu") });
        caps.cgroup_writable |= root;
    }
    for c in ["memory", "pids", "cpu"] {
        if caps.cgroup_v2.as_ref().is_some_and(|v| v.has(c)) {
            caps.cgroup_choice.push((c.to_string(), Mechanism::CgroupV2));
        } else if let Some(v1) = &caps.cgroup_v1 {
            let m = match c {
                "memory" => &v1.memory,
                "pids" => &v1.pids,
                _ => &v1.cpu,
            };
            if m.is_some() {
                caps.cgroup_choice.push((c.to_string(), Mechanism::CgroupV1));
                caps.notes.push(format!("cgroup v1 {c} hierarchy used for {c} limits"));
            }
        }
    }
    if !caps.cgroup_writable {
        caps.notes.push("cgroups are not writable by this user (run as root or delegate a subtree)".into());
    }
    caps.rlimits = true;
    caps.landlock_abi = landlock::abi();
    if caps.landlock_abi.is_none() {
        caps.notes.push("landlock is not enabled in this kernel".into());
    }
    caps.seccomp = seccomp::available();
    let userns = read_num("/proc/sys/user/max_user_namespaces").unwrap_or(0) > 0
        && read_num("/proc/sys/kernel/unprivileged_userns_clone").unwrap_or(1) != 0;
    caps.net_namespace = fs::metadata("/proc/self/ns/net").is_ok() && (root || userns);
    caps.bwrap = which("bwrap");
    caps.firejail = which("firejail");
    caps
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(r) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut it = r.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The Linux sandbox.
#[derive(Debug)]
pub struct LinuxSandbox {
    caps: Capabilities,
    opts: LinuxOptions,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl LinuxSandbox {
    /// Detect the host, remove the worker cgroups that dead daemons left behind
    /// ([`remove_stale_cgroups`]), and build the sandbox.
    pub fn new(opts: LinuxOptions) -> LinuxSandbox {
        let caps = detect();
        if caps.cgroup_writable {
            for dir in remove_stale_cgroups(&cgroup_bases(&caps, &opts.cgroup_base)) {
                tracing::info!(dir = %dir.display(), "removed the cgroup of a worker whose daemon is gone");
            }
        }
        LinuxSandbox { caps, opts }
    }

    /// Build with given capabilities (tests; or to disable a mechanism by hand).
    pub fn with_capabilities(caps: Capabilities, opts: LinuxOptions) -> LinuxSandbox {
        LinuxSandbox { caps, opts }
    }
}

/// For the child between fork and exec (async-signal-safe, allocates nothing): have the kernel
/// SIGKILL this process when its parent dies (`PR_SET_PDEATHSIG`), and fail with `ESRCH` if the
/// parent, process `parent`, is already gone, since then no signal will come. Call it after any
/// change of user, which clears the setting. The signal comes when the parent *thread* exits
/// (prctl(2)), so the parent must fork from a thread that lives as long as the process.
pub fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls without pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// The directories that hold the workers' cgroups: `<base>` in the daemon's own cgroup v2 and in
/// each cgroup v1 hierarchy.
pub fn cgroup_bases(caps: &Capabilities, base: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v2) = &caps.cgroup_v2 {
        dirs.push(v2.mount.join(v2.own.strip_prefix("/").unwrap_or(&v2.own)).join(base));
    }
    if let Some(v1) = &caps.cgroup_v1 {
        for mount in [&v1.memory, &v1.pids, &v1.cpu].into_iter().flatten() {
            let dir = mount.join(base);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Removes the worker cgroups (`<base dir>/<worker>.<daemon pid>.<n>`) whose daemon is no longer
/// running: a daemon killed with SIGKILL cleans up nothing, and while its workers die with it
/// (`PR_SET_PDEATHSIG`), their own children do not. What still runs in such a cgroup is killed,
/// then the directory is removed. Cgroups of a running process (a live daemon, or a pid reused
/// since) and cgroups with processes of another pid namespace (listed as pid 0) are left alone.
/// Returns the directories removed.
pub fn remove_stale_cgroups(base_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for base in base_dirs {
        let Ok(entries) = fs::read_dir(base) else { continue };
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name();
            let Some(daemon) = name.to_str().and_then(leaf_daemon) else { continue };
            if !dir.is_dir() || daemon == std::process::id() || pid_running(daemon) {
                continue;
            }
            if cgroup::procs(&dir).contains(&0) {
                continue;
            }
            match cgroup::kill_and_remove(&dir) {
                Ok(()) => removed.push(dir),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a stale cgroup"),
            }
        }
    }
    removed
}

/// The daemon pid in a leaf name made by [`leaf_name`].
fn leaf_daemon(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '.');
    let (seq, pid, worker) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = !worker.is_empty() && seq.parse::<u64>().is_ok();
    pid.parse::<u32>().ok().filter(|&p| valid && p > 0)
}

/// Whether process `pid` exists in our pid namespace and is not a zombie (a dead daemon its parent
/// has not reaped yet).
fn pid_running(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(raw, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[derive(Debug, Default)]
struct LinuxControl {
    v2: Option<Cgroup2>,
    v1: Option<Cgroup1>,
}

impl Control for LinuxControl {
    fn kill_all(&self) -> Result<bool, SandboxError> {
        let mut done = false;
        if let Some(c) = &self.v2 {
            c.kill()?;
            done = true;
        }
        if let Some(c) = &self.v1 {
            c.kill();
            done = true;
        }
        Ok(done)
    }

    fn oom_kills(&self) -> u64 {
        self.v2.as_ref().map_or(0, Cgroup2::oom_kills) + self.v1.as_ref().map_or(0, Cgroup1::oom_kills)
    }

    fn release(&mut self) {
        if let Some(c) = self.v2.take() {
            if !cgroup::procs(c.dir()).is_empty() {
                let _ = c.kill();
            }
            if let Err(e) = c.remove() {
                tracing::warn!(dir = %c.dir().display(), error = %e, "could not remove cgroup");
            }
        }
        if let Some(c) = self.v1.take() {
            c.kill();
            if let Err(e) = c.remove() {
                tracing::warn!(error = %e, "could not remove cgroup v1 directory");
            }
        }
    }
}

impl Drop for LinuxControl {
    /// Also covers the error paths of `prepare`, where no `Prepared` owns the cgroups yet.
    fn drop(&mut self) {
        self.release();
    }
}

fn leaf_name(worker: &str) -> String {
    let clean: String =
        worker.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{clean}.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn human(bytes: u64) -> String {
    if bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

impl Sandbox for LinuxSandbox {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare(&self, worker: &str, policy: &SandboxPolicy) -> Result<Prepared, SandboxError> {
        let mut p = Protection::new(policy.mode);
        if policy.mode == SandboxMode::Off {
            return Ok(Prepared::unprotected(p));
        }
        let caps = &self.caps;
        let mut hook = HookData::default();
        let mut control = LinuxControl::default();
        let leaf = leaf_name(worker);

        // Wrapper first: it decides who handles the filesystem, the network and seccomp.
        let mut wrap = match policy.wrapper {
            Wrapper::None => None,
            Wrapper::Bwrap => match &caps.bwrap {
                Some(path) => Some((Wrapper::Bwrap, path.clone())),
                None if policy.mode == SandboxMode::On => {
                    return Err(SandboxError::WrapperMissing("bwrap"));
                }
                None => {
                    tracing::warn!(worker, "bwrap is not installed; using the built-in mechanisms");
                    None
                }
            },
            Wrapper::Firejail => match &caps.firejail {
                Some(path) => Some((Wrapper::Firejail, path.clone())),
                None if policy.mode == SandboxMode::On => {
                    return Err(SandboxError::WrapperMissing("firejail"));
                }
                None => {
                    tracing::warn!(worker, "firejail is not installed; using the built-in mechanisms");
                    None
                }
            },
        };

        // cgroups: one v2 directory for tracking/kill (+ v2 controllers), v1 for the rest.
        let want = |c: &str| match c {
            "memory" => policy.memory_max.is_some() || policy.memory_high.is_some(),
            "pids" => policy.pids_max.is_some(),
            _ => policy.cpu_max.is_some(),
        };
        if caps.cgroup_writable {
            if let Some(v2) = &caps.cgroup_v2 {
                let ctrls: Vec<&str> = ["memory", "pids", "cpu"]
                    .into_iter()
                    .filter(|c| want(c) && caps.cgroup_for(c) == Some(Mechanism::CgroupV2))
                    .collect();
                let base = v2.own.join(&self.opts.cgroup_base);
                match Cgroup2::create(&v2.mount, &v2.own, &base, &leaf, &ctrls) {
                    Ok(cg) => {
                        hook.cgroup_procs.push(cg.procs_fd()?);
                        control.v2 = Some(cg);
                    }
                    Err(e) => {
                        tracing::warn!(worker, error = %e, "cannot create a cgroup v2 directory")
                    }
                }
            }
            if let Some(v1) = &caps.cgroup_v1 {
                let mut cg = Cgroup1::new();
                for (c, mount) in [("memory", &v1.memory), ("pids", &v1.pids), ("cpu", &v1.cpu)] {
                    let track = c == "pids" && control.v2.is_none();
                    let Some(m) = mount else { continue };
                    if !((want(c) && caps.cgroup_for(c) == Some(Mechanism::CgroupV1)) || track) {
                        continue;
                    }
                    if let Err(e) = cg.add(c, m, &self.opts.cgroup_base, &leaf) {
                        tracing::warn!(worker, error = %e, "cannot create a cgroup v1 directory");
                    }
                }
                if cg.dirs().next().is_some() {
                    hook.cgroup_procs.extend(cg.procs_fds()?);
                    control.v1 = Some(cg);
                }
            }
        }
        let v2_has = |c: &str| control.v2.is_some() && caps.cgroup_for(c) == Some(Mechanism::CgroupV2);
        let v1_has = |c: &str| control.v1.as_ref().is_some_and(|g| g.dirs().any(|(n, _)| n == c));
        if control.v2.as_ref().is_some_and(Cgroup2::has_kill) {
            p.enforce(Limit::TreeKill, Mechanism::CgroupV2, "cgroup.kill");
        } else if control.v2.is_some() {
            p.enforce(Limit::TreeKill, Mechanism::CgroupV2, "kill every pid in cgroup.procs");
        } else if control.v1.is_some() {
            p.enforce(Limit::TreeKill, Mechanism::CgroupV1, "kill every pid in cgroup.procs");
        }

        let mut rl: Vec<(i32, u64)> = Vec::new();
        if let Some(b) = policy.memory_max {
            if v2_has("memory") {
                control.v2.as_ref().map(|c| c.set_memory_max(b)).transpose()?;
                p.enforce(Limit::MemoryMax, Mechanism::CgroupV2, format!("memory.max = {}", human(b)));
            } else if v1_has("memory") {
                control.v1.as_ref().map(|c| c.set_memory_max(b)).transpose()?;
                p.enforce(Limit::MemoryMax, Mechanism::CgroupV1, format!("memory.limit_in_bytes = {}", human(b)));
            } else {
                rl.push((libc::RLIMIT_AS as i32, b));
                p.enforce(
                    Limit::MemoryMax,
                    Mechanism::Rlimit,
                    format!("RLIMIT_AS = {} (virtual memory, approximate)", human(b)),
                );
            }
        }
        if let Some(b) = policy.memory_high {
            if v2_has("memory") {
                control.v2.as_ref().map(|c| c.set_memory_high(b)).transpose()?;
                p.enforce(Limit::MemoryHigh, Mechanism::CgroupV2, format!("memory.high = {}", human(b)));
            } else {
                p.miss(Limit::MemoryHigh, "needs the cgroup v2 memory controller");
            }
        }
        if let Some(c) = policy.cpu_max {
            if v2_has("cpu") {
                control.v2.as_ref().map(|g| g.set_cpu_max(c.millicores)).transpose()?;
                p.enforce(Limit::CpuMax, Mechanism::CgroupV2, format!("{} millicores", c.millicores));
            } else if v1_has("cpu") {
                control.v1.as_ref().map(|g| g.set_cpu_max(c.millicores)).transpose()?;
                p.enforce(Limit::CpuMax, Mechanism::CgroupV1, format!("{} millicores", c.millicores));
            } else {
                p.miss(Limit::CpuMax, "no writable cgroup cpu controller");
            }
        }
        if let Some(n) = policy.pids_max {
            if v2_has("pids") {
                control.v2.as_ref().map(|g| g.set_pids_max(n)).transpose()?;
                p.enforce(Limit::PidsMax, Mechanism::CgroupV2, format!("pids.max = {n}"));
            } else if v1_has("pids") {
                control.v1.as_ref().map(|g| g.set_pids_max(n)).transpose()?;
                p.enforce(Limit::PidsMax, Mechanism::CgroupV1, format!("pids.max = {n}"));
            } else if !euid_is_root() {
                rl.push((libc::RLIMIT_NPROC as i32, n));
                p.enforce(
                    Limit::PidsMax,
                    Mechanism::Rlimit,
                    format!("RLIMIT_NPROC = {n} (counts all processes of the user)"),
                );
            } else {
                p.miss(Limit::PidsMax, "no writable cgroup pids controller, and RLIMIT_NPROC does not bind root");
            }
        }
        for (val, res, limit, name) in [
            (policy.nofile, libc::RLIMIT_NOFILE, Limit::OpenFiles, "RLIMIT_NOFILE"),
            (policy.address_space, libc::RLIMIT_AS, Limit::AddressSpace, "RLIMIT_AS"),
            (policy.cpu_time_s, libc::RLIMIT_CPU, Limit::CpuTime, "RLIMIT_CPU"),
            (policy.core_size, libc::RLIMIT_CORE, Limit::CoreSize, "RLIMIT_CORE"),
            (policy.file_size, libc::RLIMIT_FSIZE, Limit::FileSize, "RLIMIT_FSIZE"),
        ] {
            if let Some(v) = val {
                rl.push((res as i32, v));
                p.enforce(limit, Mechanism::Rlimit, format!("{name} = {v}"));
            }
        }
        hook.rlimits = rl;

        // Filesystem, network, syscalls.
        let mut read: Vec<PathBuf> = DEFAULT_SYSTEM_READ.iter().map(PathBuf::from).collect();
        read.extend(policy.fs_read.iter().cloned());
        let mut prefix: Vec<OsString> = Vec::new();
        if let Some((kind, path)) = wrap.take() {
            let (args, mech) = match kind {
                Wrapper::Firejail => (wrapper::firejail(&path, policy), Mechanism::Firejail),
                _ => {
                    let prog = if policy.seccomp { seccomp::program() } else { None };
                    let memfd = match &prog {
                        Some(prog) => Some(seccomp_memfd(prog)?),
                        None => None,
                    };
                    let args = wrapper::bwrap(&path, policy, &read, memfd.as_ref());
                    if let Some(fd) = memfd {
                        hook.inherit.push(fd);
                        p.enforce(Limit::Syscalls, Mechanism::Bubblewrap, "deny-list passed to bwrap --seccomp");
                    }
                    (args, Mechanism::Bubblewrap)
                }
            };
            prefix = args;
            if policy.restricts_fs() {
                p.enforce(Limit::Filesystem, mech, "allowed paths bound read-only/read-write");
            }
            if policy.network == Network::None {
                p.enforce(Limit::Network, mech, "private network namespace");
            }
            if policy.seccomp && p.mechanism(Limit::Syscalls).is_none() {
                if mech == Mechanism::Firejail {
                    p.enforce(Limit::Syscalls, mech, "firejail --seccomp default list");
                } else {
                    p.miss(Limit::Syscalls, "seccomp filter not available for this architecture");
                }
            }
        } else {
            let abi = caps.landlock_abi;
            let mut tcp_by_landlock = false;
            if policy.network == Network::None {
                if caps.net_namespace {
                    hook.unshare = libc::CLONE_NEWNET | if euid_is_root() { 0 } else { libc::CLONE_NEWUSER };
                    p.enforce(Limit::Network, Mechanism::NetNamespace, "private network namespace, no interfaces up");
                } else if abi.is_some_and(|a| a >= 4) {
                    tcp_by_landlock = true;
                    p.enforce(
                        Limit::Network,
                        Mechanism::Landlock,
                        "TCP bind/connect denied (UDP and unix sockets not covered)",
                    );
                } else {
                    p.miss(Limit::Network, "no network namespace and landlock ABI < 4");
                }
            }
            if policy.restricts_fs() || tcp_by_landlock {
                match abi {
                    Some(abi) => {
                        let rules = landlock::Rules {
                            restrict_fs: policy.restricts_fs(),
                            read: read.iter().map(PathBuf::as_path).collect(),
                            write: policy.fs_write.iter().map(PathBuf::as_path).collect(),
                            deny_tcp: tcp_by_landlock,
                        };
                        hook.landlock = Some(landlock::build(abi, &rules)?);
                        if policy.restricts_fs() {
                            p.enforce(
                                Limit::Filesystem,
                                Mechanism::Landlock,
                                format!("ABI {abi}: fs_read read-only, fs_write read-write"),
                            );
                        }
                    }
                    None => p.miss(Limit::Filesystem, "landlock is not available"),
                }
            }
            if policy.seccomp {
                match seccomp::program() {
                    Some(prog) if caps.seccomp => {
                        hook.seccomp = prog;
                        p.enforce(
                            Limit::Syscalls,
                            Mechanism::Seccomp,
                            format!("{} system calls denied", seccomp::deny_list().len()),
                        );
                    }
                    _ => p.miss(Limit::Syscalls, "seccomp is not available"),
                }
            }
        }
        finish(worker, &p)?;
        let mut prepared = Prepared::unprotected(p);
        prepared.wrapper = prefix;
        prepared.hook = ChildHook { data: Arc::new(hook) };
        prepared.control = Box::new(control);
        Ok(prepared)
    }
}

/// Write a compiled BPF program into a memfd for `bwrap --seccomp FD`.
fn seccomp_memfd(prog: &[libc::sock_filter]) -> Result<OwnedFd, SandboxError> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: valid C string literal; flags are valid.
    let fd = unsafe { libc::memfd_create(c"ondevice-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SandboxError::Sys { call: "memfd_create", source: std::io::Error::last_os_error() });
    }
    // SAFETY: fresh fd we own.
    let mut f = unsafe { fs::File::from_raw_fd(fd) };
    // SAFETY: sock_filter is plain old data; we view it as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(prog.as_ptr().cast::<u8>(), std::mem::size_of_val(prog)) };
    let io = |e| SandboxError::io("write seccomp program", "memfd", e);
    f.write_all(bytes).map_err(io)?;
    f.rewind().map_err(io)?;
    Ok(OwnedFd::from(f))
}

/// Requested limits that `policy` asks for (exposed for reports).
pub fn requested_limits(policy: &SandboxPolicy) -> Vec<Limit> {
    requested(policy)
}
