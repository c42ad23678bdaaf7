//! cgroup v2 and v1 directories for one worker start: create, write limits, join, kill, count
//! OOM kills, remove.
//!
//! Every function takes the hierarchy's mount point as a parameter, so the file writing can be
//! tested against a temporary directory standing in for `/sys/fs/cgroup`.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::SandboxError;

fn write_file(path: &Path, value: &str) -> Result<(), SandboxError> {
    // O_CREAT|O_TRUNC like `echo > file`: harmless on cgroupfs, and lets a plain directory stand
    // in for the hierarchy in tests.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| SandboxError::io("open cgroup file", path, e))?;
    f.write_all(value.as_bytes()).map_err(|e| SandboxError::io("write cgroup file", path, e))
}

fn open_procs(dir: &Path) -> Result<OwnedFd, SandboxError> {
    let path = dir.join("cgroup.procs");
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| SandboxError::io("open cgroup file", &path, e))?;
    Ok(OwnedFd::from(f))
}

/// Read a `key value` line from a flat-keyed cgroup file (memory.events, memory.oom_control).
pub fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key { v.trim().parse().ok() } else { None }
    })
}

/// The pids listed in a cgroup's `cgroup.procs`.
pub fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL every process listed in `dir`, repeating (bounded) while new ones appear. A process of
/// another pid namespace is listed as 0 and skipped (`kill(0, …)` would hit our own group).
fn kill_listed(dir: &Path) {
    for _ in 0..100 {
        let pids = procs(dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids.into_iter().filter(|&p| p > 0) {
            // SAFETY: plain system call.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Kill every process in the cgroup directory `dir` (`cgroup.kill` when the file exists, then
/// SIGKILL to each listed pid) and remove it (bounded retries).
pub fn kill_and_remove(dir: &Path) -> io::Result<()> {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = write_file(&kill, "1");
    }
    kill_listed(dir);
    remove_dir(dir)
}

/// Remove a cgroup directory, retrying briefly (bounded: about one second) while the kernel
/// finishes reaping its processes.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    let mut last = Ok(());
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Err(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    last
}

/// A worker's cgroup in a v2 hierarchy.
#[derive(Debug)]
pub struct Cgroup2 {
    dir: PathBuf,
    kill_file: bool,
}

impl Cgroup2 {
    /// Create `<mount>/<base>/<leaf>`, enabling `controllers` (e.g. `["memory", "pids"]`) in
    /// `cgroup.subtree_control` of every directory from the mount down to `<base>`.
    ///
    /// If enabling fails with `EBUSY` in the daemon's own cgroup `own` (cgroup v2's "no internal
    /// processes" rule, e.g. a systemd service with `Delegate=yes`), the daemon moves itself into
    /// `<own>/daemon` and retries.
    pub fn create(
        mount: &Path,
        own: &Path,
        base: &Path,
        leaf: &str,
        controllers: &[&str],
    ) -> Result<Cgroup2, SandboxError> {
        let base_dir = mount.join(base.strip_prefix("/").unwrap_or(base));
        fs::create_dir_all(&base_dir).map_err(|e| SandboxError::io("create cgroup", &base_dir, e))?;
        if !controllers.is_empty() {
            let own_dir = mount.join(own.strip_prefix("/").unwrap_or(own));
            let mut chain = vec![mount.to_path_buf()];
            let rel = base_dir.strip_prefix(mount).unwrap_or(Path::new(""));
            let mut cur = mount.to_path_buf();
            for c in rel.components() {
                cur.push(c);
                chain.push(cur.clone());
            }
            for dir in chain {
                enable(&dir, controllers, &own_dir)?;
            }
        }
        let dir = base_dir.join(leaf);
        fs::create_dir(&dir).map_err(|e| SandboxError::io("create cgroup", &dir, e))?;
        let kill_file = dir.join("cgroup.kill").exists();
        Ok(Cgroup2 { dir, kill_file })
    }

    /// The cgroup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `memory.max`.
    pub fn set_memory_max(&self, bytes: u64) -> Result<(), SandboxError> {
        write_file(&self.dir.join("memory.max"), &bytes.to_string())?;
        // No swapping around the limit: a memory hog is killed, not slowed to a crawl.
        let swap = self.dir.join("memory.swap.max");
        if swap.exists() {
            write_file(&swap, "0")?;
        }
        Ok(())
    }

    /// Write `memory.high`.
    pub fn set_memory_high(&self, bytes: u64) -> Result<(), SandboxError> {
        write_file(&self.dir.join("memory.high"), &bytes.to_string())
    }

    /// Write `cpu.max` as `quota period` with a 100 ms period.
    pub fn set_cpu_max(&self, millicores: u32) -> Result<(), SandboxError> {
        let quota = u64::from(millicores) * 100;
        write_file(&self.dir.join("cpu.max"), &format!("{quota} 100000"))
    }

    /// Write `pids.max`.
    pub fn set_pids_max(&self, n: u64) -> Result<(), SandboxError> {
        write_file(&self.dir.join("pids.max"), &n.to_string())
    }

    /// Open `cgroup.procs` for the child to join.
    pub fn procs_fd(&self) -> Result<OwnedFd, SandboxError> {
        open_procs(&self.dir)
    }

    /// Whether `cgroup.kill` exists.
    pub fn has_kill(&self) -> bool {
        self.kill_file
    }

    /// Kill every process in the cgroup: `cgroup.kill` when present, else SIGKILL each listed pid.
    pub fn kill(&self) -> Result<(), SandboxError> {
        if self.kill_file {
            write_file(&self.dir.join("cgroup.kill"), "1")
        } else {
            kill_listed(&self.dir);
            Ok(())
        }
    }

    /// `oom_kill` from `memory.events`.
    pub fn oom_kills(&self) -> u64 {
        read_key(&self.dir.join("memory.events"), "oom_kill").unwrap_or(0)
    }

    /// Remove the directory (bounded retries).
    pub fn remove(&self) -> io::Result<()> {
        remove_dir(&self.dir)
    }
}

fn enable(dir: &Path, controllers: &[&str], own_dir: &Path) -> Result<(), SandboxError> {
    let path = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&path).unwrap_or_default();
    let missing: Vec<&str> =
        controllers.iter().copied().filter(|c| !current.split_whitespace().any(|x| x == *c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = missing.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    match write_file(&path, &line) {
        Err(SandboxError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) && dir == own_dir => {
            let leaf = own_dir.join("daemon");
            fs::create_dir_all(&leaf).map_err(|e| SandboxError::io("create cgroup", &leaf, e))?;
            write_file(&leaf.join("cgroup.procs"), "0")?;
            write_file(&path, &line)
        }
        other => other,
    }
}

/// A worker's cgroups in v1 hierarchies (one directory per controller hierarchy).
#[derive(Debug, Default)]
pub struct Cgroup1 {
    /// `(controller, directory)`.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Cgroup1 {
    /// An empty set; add hierarchies with [`Cgroup1::add`].
    pub fn new() -> Cgroup1 {
        Cgroup1::default()
    }

    /// Create `<mount>/<base>/<leaf>` in the hierarchy of `controller`.
    pub fn add(&mut self, controller: &'static str, mount: &Path, base: &str, leaf: &str) -> Result<(), SandboxError> {
        let dir = mount.join(base).join(leaf);
        fs::create_dir_all(&dir).map_err(|e| SandboxError::io("create cgroup", &dir, e))?;
        self.dirs.push((controller, dir));
        Ok(())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.iter().find(|(c, _)| *c == controller).map(|(_, d)| d.as_path())
    }

    /// The directories created, by controller.
    pub fn dirs(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.dirs.iter().map(|(c, d)| (*c, d.as_path()))
    }

    /// Write `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` when swap accounting
    /// exists, so the limit cannot be dodged by swapping).
    pub fn set_memory_max(&self, bytes: u64) -> Result<(), SandboxError> {
        let dir = self.dir("memory").ok_or_else(|| no_hierarchy("memory"))?;
        write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write_file(&memsw, &bytes.to_string())?;
        }
        Ok(())
    }

    /// Write `pids.max`.
    pub fn set_pids_max(&self, n: u64) -> Result<(), SandboxError> {
        let dir = self.dir("pids").ok_or_else(|| no_hierarchy("pids"))?;
        write_file(&dir.join("pids.max"), &n.to_string())
    }

    /// Write `cpu.cfs_period_us` = 100000 and `cpu.cfs_quota_us`.
    pub fn set_cpu_max(&self, millicores: u32) -> Result<(), SandboxError> {
        let dir = self.dir("cpu").ok_or_else(|| no_hierarchy("cpu"))?;
        write_file(&dir.join("cpu.cfs_period_us"), "100000")?;
        write_file(&dir.join("cpu.cfs_quota_us"), &(u64::from(millicores) * 100).to_string())
    }

    /// Open every hierarchy's `cgroup.procs` for the child to join.
    pub fn procs_fds(&self) -> Result<Vec<OwnedFd>, SandboxError> {
        self.dirs.iter().map(|(_, d)| open_procs(d)).collect()
    }

    /// SIGKILL every process listed in any of the hierarchies.
    pub fn kill(&self) {
        for (_, d) in &self.dirs {
            kill_listed(d);
        }
    }

    /// `oom_kill` from `memory.oom_control`.
    pub fn oom_kills(&self) -> u64 {
        self.dir("memory").and_then(|d| read_key(&d.join("memory.oom_control"), "oom_kill")).unwrap_or(0)
    }

    /// Remove every directory (bounded retries). Returns the first error.
    pub fn remove(&self) -> io::Result<()> {
        let mut res = Ok(());
        for (_, d) in &self.dirs {
            let r = remove_dir(d);
            if res.is_ok() {
                res = r;
            }
        }
        res
    }
}

fn no_hierarchy(c: &str) -> SandboxError {
    SandboxError::io(
        "find cgroup v1 hierarchy",
        c,
        io::Error::new(io::ErrorKind::NotFound, "controller hierarchy not created"),
    )
}
