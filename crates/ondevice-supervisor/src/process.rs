//! Every process spawn of ondevice happens in this file: workers and one-shot tasks (in their own
//! process group, sandboxed), exec probes and hooks, and the detached daemon.
//!
//! # Children die with the daemon
//!
//! A supervised child (worker, task, probe, hook) must not outlive the daemon, even one killed with
//! SIGKILL that cleans up nothing:
//!
//! * **Linux**: the child asks for `PR_SET_PDEATHSIG = SIGKILL` between fork and exec, after any
//!   change of user (which would clear it), and fails to start if the daemon is already gone by
//!   then (`ondevice_sandbox::linux::die_with_parent`). The kernel sends that signal when the
//!   *thread* that forked the child exits (prctl(2)), and tokio's threads come and go, so every
//!   such child is forked by one dedicated thread that lives as long as the process
//!   (`spawn_on_spawner_thread`). The setting survives exec of a normal binary, `unshare` of a
//!   user or network namespace, landlock and seccomp; bubblewrap passes the death on to the
//!   sandboxed command (`--die-with-parent`), and firejail run by a root daemon ends its sandbox
//!   when it dies. It is cleared when a non-root daemon executes a set-user-ID wrapper (firejail,
//!   which has no die-with-parent option), and it only reaches the direct child: grandchildren
//!   stay, in the worker's cgroup, until the next daemon start removes the cgroups of dead daemons
//!   (`ondevice_sandbox::linux::LinuxSandbox::new`).
//! * **Windows**: the worker's Job Object is created with kill-on-close and its only handle is
//!   the daemon's, so when the daemon dies the job closes and every process in it is killed. No job
//!   exists in sandbox mode `off`, and a process the worker creates before it is assigned to the
//!   job (right after spawn) escapes it.
//! * **macOS** has no equivalent of either: children of a killed daemon keep running.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use ondevice_sandbox::Prepared;

use crate::SupervisorError;

/// A resolved user to run a worker as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    #[cfg(unix)]
    uid: libc::uid_t,
    #[cfg(unix)]
    gid: libc::gid_t,
}

/// Resolve a user name or numeric uid.
#[cfg(unix)]
pub(crate) fn resolve_user(user: &str) -> Result<RunAs, SupervisorError> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok(RunAs { uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
        _ => Err(SupervisorError::UnknownUser(user.to_string())),
    }
}

/// Running a worker as another user is not supported on this platform.
#[cfg(not(unix))]
pub(crate) fn resolve_user(user: &str) -> Result<RunAs, SupervisorError> {
    Err(SupervisorError::UnknownUser(format!("{user} (running as another user is only supported on unix)")))
}

/// Spawn a worker: its own process group, stdin from /dev/null, stdout/stderr piped, the sandbox
/// hook applied between fork and exec.
pub(crate) fn spawn_worker(
    argv: &[OsString],
    env: &BTreeMap<OsString, OsString>,
    cwd: Option<&Path>,
    user: Option<RunAs>,
    prepared: &Prepared,
) -> std::io::Result<tokio::process::Child> {
    let launch = Launch { argv, env, clear_env: false, cwd, user, stdin: Stdio::null(), stdout: Stdio::piped() };
    spawn_sandboxed(launch, prepared)
}

/// What to start with [`spawn_sandboxed`] (a worker or a one-shot task).
pub(crate) struct Launch<'a> {
    /// Program and arguments (before the sandbox's wrapper prefix).
    pub(crate) argv: &'a [OsString],
    /// Extra environment variables.
    pub(crate) env: &'a BTreeMap<OsString, OsString>,
    /// Start from an empty environment instead of the daemon's.
    pub(crate) clear_env: bool,
    /// Working directory.
    pub(crate) cwd: Option<&'a Path>,
    /// User to switch to.
    pub(crate) user: Option<RunAs>,
    /// Standard input.
    pub(crate) stdin: Stdio,
    /// Standard output (stderr is always piped).
    pub(crate) stdout: Stdio,
}

/// Spawn a sandboxed child: its own process group, stderr piped, the sandbox hook applied between
/// fork and exec, the parent-death signal set (Linux), killed if the handle is dropped.
pub(crate) fn spawn_sandboxed(launch: Launch<'_>, prepared: &Prepared) -> std::io::Result<tokio::process::Child> {
    let Launch { argv, env, clear_env, cwd, user, stdin, stdout } = launch;
    let argv = prepared.wrap_argv(argv);
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    #[allow(clippy::disallowed_methods)]
    let mut cmd = std::process::Command::new(program);
    if clear_env {
        cmd.env_clear();
    }
    cmd.args(args).envs(env).stdin(stdin).stdout(stdout).stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let hook = prepared.child_hook();
        #[cfg(target_os = "linux")]
        let daemon = std::process::id();
        // SAFETY: the closure only makes async-signal-safe system calls on data prepared before
        // fork (see ondevice_sandbox::ChildHook) and does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                hook.enter()?;
                let switch = |u: RunAs| {
                    libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(u.gid) == 0 && libc::setuid(u.uid) == 0
                };
                if !user.is_none_or(switch) {
                    return Err(std::io::Error::last_os_error());
                }
                #[cfg(target_os = "linux")]
                ondevice_sandbox::linux::die_with_parent(daemon)?;
                hook.restrict()
            });
        }
    }
    #[cfg(not(unix))]
    let _ = user;
    let mut cmd = tokio::process::Command::from(cmd);
    // Last resort if the supervising task is dropped without a stop (runtime shut down): the
    // leader is killed, and dropping the Prepared kills what is left in its cgroup.
    cmd.kill_on_drop(true);
    spawn(cmd)
}

/// Spawn a short-lived helper (exec probe or hook) with extra environment; killed if dropped.
pub(crate) fn spawn_helper(argv: &[OsString], env: &[(&str, String)]) -> std::io::Result<tokio::process::Child> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    #[allow(clippy::disallowed_methods)]
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let daemon = std::process::id();
        // SAFETY: die_with_parent is async-signal-safe and does not allocate.
        unsafe {
            cmd.pre_exec(move || ondevice_sandbox::linux::die_with_parent(daemon));
        }
    }
    spawn(cmd)
}

/// Spawns `cmd` (on Linux from the spawner thread).
fn spawn(cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    #[cfg(target_os = "linux")]
    {
        spawn_on_spawner_thread(cmd)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut cmd = cmd;
        cmd.spawn()
    }
}

/// A request to the spawner thread: the command, the runtime the child belongs to, the answer.
#[cfg(target_os = "linux")]
type SpawnRequest = (
    tokio::process::Command,
    tokio::runtime::Handle,
    std::sync::mpsc::SyncSender<std::io::Result<tokio::process::Child>>,
);

/// Forks `cmd` on the one thread of this process that never exits, so that `PR_SET_PDEATHSIG`
/// fires when the daemon dies rather than when some tokio thread retires. The caller blocks for
/// the fork and exec, as it would spawning itself; the child is registered with the caller's
/// runtime.
#[cfg(target_os = "linux")]
fn spawn_on_spawner_thread(cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    use std::sync::OnceLock;
    use std::sync::mpsc;
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new().name("ondevice-spawner".into()).spawn(move || {
            for (mut cmd, runtime, reply) in rx {
                let _entered = runtime.enter();
                let _ = reply.send(cmd.spawn());
            }
        });
        thread.ok().map(|_| tx)
    });
    let spawner = spawner.as_ref().ok_or_else(|| std::io::Error::other("cannot start the spawner thread"))?;
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let (reply, answer) = mpsc::sync_channel(1);
    spawner.send((cmd, runtime, reply)).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Whether process `pid` is still running. On Unix a child of ours that has exited is reaped first
/// (`ondevice daemon start` watches the daemon it started this way).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        use nix::sys::wait::{WaitPidFlag, waitpid};
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        nix::sys::signal::kill(pid, None).is_ok()
    }
    #[cfg(windows)]
    {
        ondevice_sandbox::windows::process_alive(pid)
    }
}

/// Send `sig` to the process group `pgid` (unix). Errors (group gone) are ignored.
#[cfg(unix)]
pub(crate) fn signal_group(pgid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), sig);
}

/// Start `program` in the background, detached: a new session (setsid), stdin from /dev/null,
/// stdout and stderr appended to `log_path`. The child is not waited on; when the caller (e.g.
/// `ondevice daemon start`) exits, init adopts it. Returns its pid.
pub fn spawn_detached(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    log_path: &Path,
) -> Result<u32, SupervisorError> {
    let io_err = |path: &Path, e| SupervisorError::Io { action: "open log file", path: PathBuf::from(path), source: e };
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).map_err(|e| io_err(log_path, e))?;
    let log2 = log.try_clone().map_err(|e| io_err(log_path, e))?;
    #[allow(clippy::disallowed_methods)]
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(log).stderr(log2);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
    }
    let child = cmd.spawn().map_err(|e| SupervisorError::Spawn {
        worker: "daemon".into(),
        program: program.into(),
        source: e,
    })?;
    Ok(child.id())
}
