//! One-shot sandboxed tasks: a converter, quantizer or indexer run once under the same sandbox
//! and spawn path as workers ([`Supervisor::run_task`](crate::Supervisor::run_task)).
//!
//! A task is a child like a worker: forked by the spawner thread with the parent-death signal (it
//! dies with a killed daemon), in its own process group and cgroup, with the sandbox hook applied
//! between fork and exec. A crash of the program (an abort in llama.cpp on a bad GGUF, the OOM
//! killer) ends the task, never the daemon, and comes back as a [`TaskOutcome`]: exit code or
//! signal, OOM kill, timeout, cancellation, the tail of stderr, the protection in effect.
//!
//! Output: stdout is streamed as lines ([`TaskStdout::Lines`]), captured up to a cap, or written
//! to a file the daemon opens; stderr is always kept as a bounded tail and also streamed as lines.
//! Lines end at `\n` or `\r` (so progress bars that redraw with `\r` arrive as lines) and are cut
//! at [`MAX_LINE`] bytes.
//!
//! Ending a task early (timeout or cancellation): SIGTERM to its process group, `stop_grace`,
//! then SIGKILL to the group and to everything in its cgroup. The cgroup is removed when the task
//! ends. Dropping the future of `run_task` kills the process group and removes the cgroup too.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ondevice_sandbox::{Protection, Sandbox, SandboxError, SandboxPolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::process::{Launch, RunAs};

/// Lines longer than this many bytes are delivered in pieces of this size.
pub const MAX_LINE: usize = 16 << 10;

/// How long the output of an ended task is still read while something it left behind (a process
/// outside its group and cgroup) holds the pipes open.
const DRAIN: Duration = Duration::from_secs(2);

/// Where a task's standard output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TaskStdout {
    /// Sent line by line to [`TaskSpec::lines`] (read and dropped when there is no receiver).
    #[default]
    Lines,
    /// Kept in [`TaskOutcome::stdout`], the first `max_bytes` bytes (the rest is read and dropped).
    Capture {
        /// Bytes kept.
        max_bytes: usize,
    },
    /// Written to this file, created or truncated by the daemon before the spawn (so the task
    /// writes it through the descriptor even where the sandbox denies it the path).
    File(PathBuf),
}

/// Which output stream a [`TaskLine`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a task's output, without its line ending (invalid UTF-8 replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLine {
    /// The stream.
    pub stream: TaskStream,
    /// The text.
    pub text: String,
}

/// Everything needed to run one task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Name, for logs and the cgroup directory (`<name>.<daemon pid>.<n>`); same rules as a worker
    /// name.
    pub name: String,
    /// Program and arguments. A program without `/` is looked up in `PATH` (the one in `env` if
    /// set, else the daemon's); a relative path with `/` is relative to `cwd`.
    pub command: Vec<OsString>,
    /// Extra environment variables.
    pub env: BTreeMap<OsString, OsString>,
    /// Start from an empty environment (only `env`) instead of the daemon's, so the task sees none
    /// of the daemon's variables (credentials given as `env:VAR` in the configuration, for one).
    pub clear_env: bool,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Run as this user (name or numeric uid); needs root.
    pub user: Option<String>,
    /// Sandbox policy (as for workers).
    pub sandbox: SandboxPolicy,
    /// Time the task may run before it is stopped and reported as timed out; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when the task is stopped (timeout, cancellation).
    pub stop_grace: Duration,
    /// Bytes written to standard input, which is then closed; `None` for `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Where standard output goes.
    pub stdout: TaskStdout,
    /// Bytes of standard error kept: the last ones ([`TaskOutcome::stderr_tail`]).
    pub stderr_tail: usize,
    /// Receives the lines of stdout (with [`TaskStdout::Lines`]) and of stderr as they come, e.g.
    /// for a job's progress. Read it while the task runs: when it is full the task's output waits
    /// (and so does the task once its pipe is full). Dropping the receiver is fine.
    pub lines: Option<mpsc::Sender<TaskLine>>,
}

impl TaskSpec {
    /// A spec with defaults: the daemon's environment, sandbox mode auto with nothing requested,
    /// no timeout, 2 s stop grace, stdin from `/dev/null`, stdout as lines, 64 KiB of stderr tail,
    /// no line receiver.
    pub fn new(name: impl Into<String>, command: impl IntoIterator<Item = impl Into<OsString>>) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            clear_env: false,
            cwd: None,
            user: None,
            sandbox: SandboxPolicy::default(),
            timeout: None,
            stop_grace: Duration::from_secs(2),
            stdin: None,
            stdout: TaskStdout::Lines,
            stderr_tail: 64 << 10,
            lines: None,
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// Process id it ran as (the wrapper's, when the sandbox uses one).
    pub pid: u32,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the task (the cgroup memory limit).
    pub oom: bool,
    /// Whether it was stopped because it ran past [`TaskSpec::timeout`].
    pub timed_out: bool,
    /// Whether it was stopped because the cancellation token fired.
    pub cancelled: bool,
    /// The last [`TaskSpec::stderr_tail`] bytes of standard error.
    pub stderr_tail: Vec<u8>,
    /// Whether standard error had more bytes than `stderr_tail` holds.
    pub stderr_truncated: bool,
    /// Captured standard output, with [`TaskStdout::Capture`].
    pub stdout: Option<Vec<u8>>,
    /// Whether standard output had more bytes than captured.
    pub stdout_truncated: bool,
    /// Time from spawn to exit.
    pub duration: Duration,
    /// The protection the sandbox enforced (and what it could not).
    pub protection: Protection,
}

impl TaskOutcome {
    /// Exit code 0, not stopped, not OOM-killed.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom && !self.timed_out && !self.cancelled
    }

    /// The stderr tail as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr_tail)
    }
}

impl fmt::Display for TaskOutcome {
    /// What happened, for a person: `exited with code 1`, `killed by signal 6`, `killed by the
    /// out-of-memory killer (memory limit)`, `timed out after 30 s`, `cancelled`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cancelled {
            return f.write_str("cancelled");
        }
        if self.timed_out {
            return write!(f, "timed out after {:.1} s", self.duration.as_secs_f64());
        }
        if self.oom {
            return f.write_str("killed by the out-of-memory killer (memory limit)");
        }
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("ended without an exit status"),
        }
    }
}

/// A task that could not be started (or waited for).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The spec is unusable.
    #[error("task {task}: {reason}")]
    InvalidSpec {
        /// Task name.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// The program does not exist (or is not executable).
    #[error("task {task}: program {} not found; install it or give its full path", program.to_string_lossy())]
    ProgramNotFound {
        /// Task name.
        task: String,
        /// The program as given.
        program: OsString,
    },
    /// The user to run as does not exist.
    #[error("task {task}: unknown user {user}")]
    UnknownUser {
        /// Task name.
        task: String,
        /// The user as given.
        user: String,
    },
    /// The sandbox could not be set up (or, in mode `on`, cannot enforce what is asked).
    #[error("task {task}: sandbox setup failed: {source}")]
    Sandbox {
        /// Task name.
        task: String,
        /// Cause.
        #[source]
        source: SandboxError,
    },
    /// A file of the task (its stdout file) could not be opened.
    #[error("task {task}: cannot {action} {}: {source}", path.display())]
    Io {
        /// Task name.
        task: String,
        /// What was being done.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The process could not be spawned (e.g. permission denied, the sandbox hook failed).
    #[error("task {task}: cannot spawn {}: {source}", program.to_string_lossy())]
    Spawn {
        /// Task name.
        task: String,
        /// Program.
        program: OsString,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the process failed (it has been killed).
    #[error("task {task}: waiting for the process failed: {source}")]
    Wait {
        /// Task name.
        task: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The cancellation token fired before the process was spawned; nothing ran.
    #[error("task {task}: cancelled before it started")]
    Cancelled {
        /// Task name.
        task: String,
    },
}

/// Find `program` as `execvp` would: a path with `/` (relative to `cwd`), else in `path`.
fn find_program(program: &OsStr, path: Option<&OsStr>, cwd: Option<&Path>) -> Option<PathBuf> {
    let as_path = Path::new(program);
    if as_path.is_absolute() || as_path.components().count() > 1 {
        let full = match cwd {
            Some(dir) if as_path.is_relative() => dir.join(as_path),
            _ => as_path.to_path_buf(),
        };
        return executable(&full).then_some(full);
    }
    std::env::split_paths(path?).map(|d| d.join(program)).find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Bytes kept from a stream: the first or the last `cap`.
#[derive(Debug)]
struct Kept {
    tail: bool,
    cap: usize,
    buf: VecDeque<u8>,
    truncated: bool,
}

impl Kept {
    fn new(tail: bool, cap: usize) -> Kept {
        Kept { tail, cap, buf: VecDeque::new(), truncated: false }
    }

    fn push(&mut self, data: &[u8]) {
        if self.tail {
            if data.len() >= self.cap {
                self.truncated |= !self.buf.is_empty() || data.len() > self.cap;
                self.buf.clear();
                self.buf.extend(&data[data.len() - self.cap..]);
            } else {
                let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
                self.truncated |= over > 0;
                self.buf.drain(..over);
                self.buf.extend(data);
            }
        } else {
            let room = self.cap - self.buf.len();
            self.truncated |= data.len() > room;
            self.buf.extend(&data[..data.len().min(room)]);
        }
    }
}

/// Sends lines of one stream; stops sending when the receiver is gone or `stop` fires.
struct LineSink {
    stream: TaskStream,
    tx: Option<mpsc::Sender<TaskLine>>,
    line: Vec<u8>,
}

impl LineSink {
    async fn feed(&mut self, data: &[u8], stop: &CancellationToken) {
        if self.tx.is_none() {
            return;
        }
        for &b in data {
            if b == b'\n' || b == b'\r' {
                self.flush(stop).await;
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.flush(stop).await;
                }
            }
        }
    }

    async fn flush(&mut self, stop: &CancellationToken) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let Some(tx) = &self.tx else { return };
        let sent = tokio::select! {
            r = tx.send(TaskLine { stream: self.stream, text }) => r.is_ok(),
            _ = stop.cancelled() => false,
        };
        if !sent {
            self.tx = None;
        }
    }
}

/// Read `r` to its end (or until `stop`), keeping bytes in `kept` and sending lines to `lines`.
async fn pump(mut r: impl AsyncRead + Unpin, mut kept: Kept, mut lines: LineSink, stop: CancellationToken) -> Kept {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = tokio::select! {
            biased;
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.cancelled() => return kept,
        };
        kept.push(&buf[..n]);
        lines.feed(&buf[..n], &stop).await;
    }
    lines.flush(&stop).await;
    kept
}

/// SIGKILLs the task's process group when dropped while armed (the `run_task` future dropped
/// mid-way); the leader itself is killed by `kill_on_drop`, the cgroup by the `Prepared`'s drop.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0 {
            crate::process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(unix)]
fn signal_of(st: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    st.signal()
}

#[cfg(not(unix))]
fn signal_of(_: std::process::ExitStatus) -> Option<i32> {
    None
}

fn resolve_user(spec: &TaskSpec) -> Result<Option<RunAs>, TaskError> {
    let Some(user) = spec.user.as_deref() else { return Ok(None) };
    crate::process::resolve_user(user)
        .map(Some)
        .map_err(|_| TaskError::UnknownUser { task: spec.name.clone(), user: user.to_string() })
}

/// Run `spec` once under `sandbox`; see [`Supervisor::run_task`](crate::Supervisor::run_task).
pub(crate) async fn run(
    sandbox: Arc<dyn Sandbox>,
    spec: TaskSpec,
    cancel: CancellationToken,
) -> Result<TaskOutcome, TaskError> {
    let task = spec.name.clone();
    let invalid = |reason: String| TaskError::InvalidSpec { task: task.clone(), reason };
    let Some(program) = spec.command.first() else {
        return Err(invalid("command is empty".into()));
    };
    if task.is_empty() || task.contains(['/', '\\']) || task.starts_with('.') {
        return Err(invalid("name must be non-empty, without '/' or '\\', and not start with '.'".into()));
    }
    if let Some(dir) = &spec.cwd
        && !dir.is_dir()
    {
        return Err(invalid(format!("working directory {} is not a directory", dir.display())));
    }
    if cancel.is_cancelled() {
        return Err(TaskError::Cancelled { task });
    }
    let user = resolve_user(&spec)?;
    let path_var = match spec.env.get(OsStr::new("PATH")) {
        Some(p) => Some(p.clone()),
        None => std::env::var_os("PATH"),
    };
    let resolved = find_program(program, path_var.as_deref(), spec.cwd.as_deref())
        .ok_or_else(|| TaskError::ProgramNotFound { task: task.clone(), program: program.clone() })?;
    let mut argv = spec.command.clone();
    argv[0] = resolved.into_os_string();

    let (stdout_stdio, capture) = match &spec.stdout {
        TaskStdout::Lines => (Stdio::piped(), None),
        TaskStdout::Capture { max_bytes } => (Stdio::piped(), Some(*max_bytes)),
        TaskStdout::File(path) => {
            let file = std::fs::File::create(path).map_err(|e| TaskError::Io {
                task: task.clone(),
                action: "create stdout file",
                path: path.clone(),
                source: e,
            })?;
            (Stdio::from(file), None)
        }
    };

    let (sb, name, policy) = (sandbox.clone(), task.clone(), spec.sandbox.clone());
    let mut prepared = tokio::task::spawn_blocking(move || sb.prepare(&name, &policy))
        .await
        .map_err(|e| TaskError::Sandbox {
            task: task.clone(),
            source: SandboxError::Sys { call: "prepare", source: std::io::Error::other(e) },
        })?
        .map_err(|source| TaskError::Sandbox { task: task.clone(), source })?;

    let launch = Launch {
        argv: &argv,
        env: &spec.env,
        clear_env: spec.clear_env,
        cwd: spec.cwd.as_deref(),
        user,
        stdin: if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() },
        stdout: stdout_stdio,
    };
    let mut child = crate::process::spawn_sandboxed(launch, &prepared).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && prepared.wrap_argv(&[]).is_empty() {
            TaskError::ProgramNotFound { task: task.clone(), program: program.clone() }
        } else {
            TaskError::Spawn { task: task.clone(), program: program.clone(), source: e }
        }
    })?;
    let started = Instant::now();
    let pid = child.id().unwrap_or(0);
    let mut guard = GroupGuard(Some(pid).filter(|&p| p > 0));
    if let Err(e) = prepared.after_spawn(pid) {
        tracing::warn!(task = %task, error = %e, "sandbox after_spawn failed");
    }
    tracing::info!(task = %task, pid, "task started");

    let feeder = match (child.stdin.take(), spec.stdin) {
        (Some(mut w), Some(bytes)) => Some(tokio::spawn(async move {
            // A program that exits without reading all of it closes the pipe: not an error.
            let _ = w.write_all(&bytes).await;
            let _ = w.shutdown().await;
        })),
        _ => None,
    };
    let stop = CancellationToken::new();
    let sink = |stream| LineSink { stream, tx: spec.lines.clone(), line: Vec::new() };
    let out_pump = child.stdout.take().map(|r| {
        let kept = Kept::new(false, capture.unwrap_or(0));
        let lines = if capture.is_some() {
            LineSink { tx: None, ..sink(TaskStream::Stdout) }
        } else {
            sink(TaskStream::Stdout)
        };
        tokio::spawn(pump(r, kept, lines, stop.clone()))
    });
    let err_pump = child
        .stderr
        .take()
        .map(|r| tokio::spawn(pump(r, Kept::new(true, spec.stderr_tail), sink(TaskStream::Stderr), stop.clone())));

    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut timed_out, mut cancelled) = (false, false);
    let status = tokio::select! {
        biased;
        st = child.wait() => st,
        _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
            timed_out = true;
            tracing::info!(task = %task, pid, "task timed out; stopping it");
            crate::worker::terminate(&mut child, &prepared, spec.stop_grace).await
        }
        _ = cancel.cancelled() => {
            cancelled = true;
            tracing::info!(task = %task, pid, "task cancelled; stopping it");
            crate::worker::terminate(&mut child, &prepared, spec.stop_grace).await
        }
    };
    let duration = started.elapsed();
    // Whatever is left in its group or cgroup (background children) goes with it.
    crate::worker::kill_rest(pid, &prepared);
    guard.0 = None;
    let oom = prepared.oom_kills() > 0;
    let status = match status {
        Ok(st) => st,
        Err(source) => {
            let _ = child.start_kill();
            stop.cancel();
            return Err(TaskError::Wait { task, source });
        }
    };
    if let Some(f) = feeder {
        f.abort();
    }
    // The pipes close when the last process holding them is gone: bounded wait, then stop reading.
    let drain = async {
        let out = match out_pump {
            Some(p) => p.await.ok(),
            None => None,
        };
        let err = match err_pump {
            Some(p) => p.await.ok(),
            None => None,
        };
        (out, err)
    };
    tokio::pin!(drain);
    let (out, err) = match tokio::time::timeout(DRAIN, &mut drain).await {
        Ok(v) => v,
        Err(_) => {
            stop.cancel();
            drain.await
        }
    };
    let protection = prepared.protection.clone();
    let _ = tokio::task::spawn_blocking(move || prepared.release()).await;

    let outcome = TaskOutcome {
        pid,
        code: status.code(),
        signal: signal_of(status),
        oom,
        timed_out,
        cancelled,
        stderr_tail: err.as_ref().map(|k| k.buf.iter().copied().collect()).unwrap_or_default(),
        stderr_truncated: err.as_ref().is_some_and(|k| k.truncated),
        stdout: capture.map(|_| out.as_ref().map(|k| k.buf.iter().copied().collect()).unwrap_or_default()),
        stdout_truncated: capture.is_some() && out.as_ref().is_some_and(|k| k.truncated),
        duration,
        protection,
    };
    tracing::info!(task = %task, pid, outcome = %outcome, "task ended");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_tail_holds_the_last_bytes_and_head_the_first() {
        let mut t = Kept::new(true, 4);
        t.push(b"ab");
        t.push(b"cd");
        assert!(!t.truncated);
        t.push(b"ef");
        assert_eq!(t.buf.iter().copied().collect::<Vec<_>>(), b"cdef");
        t.push(b"0123456");
        assert_eq!(t.buf.iter().copied().collect::<Vec<_>>(), b"3456");
        assert!(t.truncated);
        let mut h = Kept::new(false, 4);
        h.push(b"ab");
        h.push(b"cdef");
        assert_eq!(h.buf.iter().copied().collect::<Vec<_>>(), b"abcd");
        assert!(h.truncated);
        let mut z = Kept::new(true, 0);
        z.push(b"x");
        assert!(z.buf.is_empty() && z.truncated);
    }

    #[test]
    fn programs_are_found_like_execvp() {
        let sh = find_program(OsStr::new("sh"), std::env::var_os("PATH").as_deref(), None);
        assert!(sh.is_some_and(|p| p.is_absolute() && p.ends_with("sh")));
        assert!(
            find_program(OsStr::new("ondevice-no-such-program"), Some(OsStr::new("/usr/bin:/bin")), None).is_none()
        );
        assert!(find_program(OsStr::new("sh"), None, None).is_none());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(find_program(OsStr::new("./run.sh"), None, Some(dir.path())).is_none(), "not executable");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(find_program(OsStr::new("./run.sh"), None, Some(dir.path())), Some(dir.path().join("./run.sh")));
        }
    }

    #[tokio::test]
    async fn lines_end_at_newline_or_carriage_return_and_long_lines_are_cut() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut data = b"one\ntwo\r\n50%\r75%\rlast".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 3));
        let sink = LineSink { stream: TaskStream::Stderr, tx: Some(tx), line: Vec::new() };
        let kept = pump(&data[..], Kept::new(true, 8), sink, CancellationToken::new()).await;
        assert!(kept.truncated);
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            assert_eq!(l.stream, TaskStream::Stderr);
            got.push(l.text);
        }
        assert_eq!(got[..4], ["one", "two", "50%", "75%"]);
        assert_eq!(got[4].len(), MAX_LINE);
        assert!(got[4].starts_with("lastxxx"));
        assert_eq!(got[5], "xxxxxxx");
        assert_eq!(got.len(), 6);
    }
}
