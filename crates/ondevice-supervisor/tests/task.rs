//! One-shot tasks with real processes: exit codes with the stderr tail, signals, an OOM kill under
//! a memory limit (root, as in CI), timeout and cancellation killing the whole process group,
//! stdin and stdout capture, start errors, and a task dying with its killed parent (which
//! re-executes this test binary as the parent). Linux: cgroups, /proc and the parent-death signal.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{process_gone, require_root, supervisor};
use ondevice_sandbox::{Limit, Mechanism, SandboxMode, SandboxPolicy};
use ondevice_supervisor::{TaskError, TaskLine, TaskOutcome, TaskSpec, TaskStdout, TaskStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PYTHON: &str = "/usr/bin/python3";

fn sh(name: &str, script: &str) -> TaskSpec {
    TaskSpec::new(name, ["/bin/sh", "-c", script])
}

/// Run `spec` to its end with a fresh supervisor and no cancellation.
async fn run(spec: TaskSpec) -> Result<TaskOutcome, TaskError> {
    let (sup, _d) = supervisor();
    sup.run_task(spec, CancellationToken::new()).await
}

/// Poll until `cond` holds; panics naming `what` after `limit`.
async fn eventually(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what} not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether any process is left in process group `pgid` (a zombie not yet reaped by init counts).
fn group_alive(pgid: u32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_ok()
}

/// Wait (bounded) until process group `pgid` is empty.
async fn group_gone(pgid: u32) {
    eventually(Duration::from_secs(10), "the task's process group to be empty", || !group_alive(pgid)).await;
}

/// The next `n` lines of `stream` from `rx` (bounded wait).
async fn next_lines(rx: &mut mpsc::Receiver<TaskLine>, stream: TaskStream, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a line within 20 s")
            .expect("the channel is open");
        if line.stream == stream {
            out.push(line.text);
        }
    }
    out
}

/// The cgroup directories of `pid` whose path holds `leaf` (from /proc/PID/cgroup).
fn cgroup_dirs(pid: u32, leaf: &str) -> Vec<PathBuf> {
    let caps = ondevice_sandbox::detect();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !path.contains(leaf) {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            dirs.extend(caps.cgroup_v2.iter().map(|v2| v2.mount.join(rel)));
        } else if let Some(v1) = &caps.cgroup_v1 {
            for c in controllers.split(',') {
                let mount = match c {
                    "memory" => &v1.memory,
                    "pids" => &v1.pids,
                    "cpu" => &v1.cpu,
                    _ => &None,
                };
                dirs.extend(mount.iter().map(|m| m.join(rel)));
            }
        }
    }
    dirs
}

/// Cgroup directories of this process's tasks named `task` that still exist.
fn leftover_cgroups(task: &str) -> Vec<PathBuf> {
    let caps = ondevice_sandbox::detect();
    ondevice_sandbox::linux::cgroup_bases(&caps, "ondevice")
        .iter()
        .filter_map(|b| std::fs::read_dir(b).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{task}.{}.", std::process::id())))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_zero_streams_stdout_and_stderr_lines_in_order() {
    let (tx, mut rx) = mpsc::channel(64);
    let mut spec = sh("lines", "echo one; echo warn >&2; printf '50%%\\r75%%\\r'; echo done");
    spec.lines = Some(tx);
    let out = run(spec).await.unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!((out.code, out.signal), (Some(0), None));
    assert!(!out.oom && !out.timed_out && !out.cancelled);
    assert_eq!(out.stderr_text(), "warn\n");
    assert_eq!(out.stdout, None, "stdout is only kept with TaskStdout::Capture");
    assert_eq!(out.to_string(), "exited with code 0");
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push((l.stream, l.text));
    }
    let stdout: Vec<&str> = lines.iter().filter(|(s, _)| *s == TaskStream::Stdout).map(|(_, t)| t.as_str()).collect();
    assert_eq!(stdout, ["one", "50%", "75%", "done"]);
    assert!(lines.contains(&(TaskStream::Stderr, "warn".to_string())), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_keeps_the_last_bytes_of_stderr() {
    // 200 KiB of noise on stderr, then the message that matters, then exit 7.
    let script =
        "{ head -c 204800 /dev/zero | tr '\\0' x; echo; echo 'error: tensor 12 has a bad shape'; } >&2; exit 7";
    let mut spec = sh("fails", script);
    spec.stderr_tail = 1024;
    let out = run(spec).await.unwrap();
    assert_eq!(out.code, Some(7), "{out}");
    assert!(!out.success());
    assert_eq!(out.stderr_tail.len(), 1024);
    assert!(out.stderr_truncated);
    assert!(out.stderr_text().ends_with("xxx\nerror: tensor 12 has a bad shape\n"), "{:?}", out.stderr_text());
    assert!(!out.oom && !out.timed_out && !out.cancelled);
    assert_eq!(out.to_string(), "exited with code 7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_aborts_is_reported_killed_by_the_signal() {
    // Like llama.cpp's GGML_ABORT on a bad file: SIGABRT. No core file left behind.
    let mut spec = sh("aborts", "echo 'GGML_ASSERT failed' >&2; kill -ABRT $$");
    spec.sandbox.core_size = Some(0);
    let out = run(spec).await.unwrap();
    assert_eq!((out.code, out.signal), (None, Some(libc::SIGABRT)), "{out:?}");
    assert!(!out.oom && !out.success());
    assert_eq!(out.stderr_text(), "GGML_ASSERT failed\n");
    assert_eq!(out.to_string(), format!("killed by signal {}", libc::SIGABRT));
    assert_eq!(out.protection.mechanism(Limit::CoreSize), Some(Mechanism::Rlimit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_oom_killed_under_memory_max_and_its_cgroup_removed() {
    require_root("the cgroup memory limit");
    let policy = SandboxPolicy { mode: SandboxMode::On, memory_max: Some(32 << 20), ..Default::default() };
    // Bounded: at most 512 MiB, then it exits 0 (which would fail the test).
    let code = "b = []\nfor i in range(32):\n    b.append(b'x' * (16 << 20))\nprint('survived')";
    let mut spec = TaskSpec::new("hog", [PYTHON, "-c", code]);
    spec.sandbox = policy;
    spec.stdout = TaskStdout::Capture { max_bytes: 1024 };
    let out = run(spec).await.unwrap();
    let mech = out.protection.mechanism(Limit::MemoryMax);
    assert!(matches!(mech, Some(Mechanism::CgroupV1 | Mechanism::CgroupV2)), "{:#?}", out.protection);
    assert_eq!(out.stdout.as_deref(), Some(&b""[..]), "the hog was not stopped");
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out:?}");
    assert!(out.oom, "not reported as OOM: {out:?}");
    assert!(!out.success());
    assert_eq!(out.to_string(), "killed by the out-of-memory killer (memory limit)");
    assert!(leftover_cgroups("hog").is_empty(), "cgroups left: {:?}", leftover_cgroups("hog"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_the_whole_group_and_escalates_to_sigkill() {
    let (tx, mut rx) = mpsc::channel(64);
    // The shell ignores SIGTERM, so only the SIGKILL after the grace ends it; a background child
    // in its group must go too.
    let mut spec = sh("slow", "trap '' TERM; sleep 600 & echo $!; echo $$; while :; do sleep 1; done");
    spec.timeout = Some(Duration::from_millis(500));
    spec.stop_grace = Duration::from_millis(300);
    spec.lines = Some(tx);
    let out = run(spec).await.unwrap();
    let pids: Vec<u32> = next_lines(&mut rx, TaskStream::Stdout, 2).await.iter().map(|l| l.parse().unwrap()).collect();
    assert!(out.timed_out && !out.cancelled, "{out:?}");
    assert_eq!(out.signal, Some(libc::SIGKILL), "SIGTERM was ignored, so SIGKILL ended it: {out:?}");
    assert!(!out.success());
    assert!(out.duration >= Duration::from_millis(500) && out.duration < Duration::from_secs(30), "{out:?}");
    assert!(out.to_string().starts_with("timed out after"), "{out}");
    assert_eq!(pids[1], out.pid);
    for pid in pids {
        eventually(Duration::from_secs(10), "the task's processes to be gone", || process_gone(pid as i32)).await;
    }
    group_gone(out.pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_process_group_and_reports_cancelled() {
    let (sup, _d) = supervisor();
    let (tx, mut rx) = mpsc::channel(64);
    let mut spec = sh("cancelled", "sleep 600 & echo $!; echo $$; wait");
    spec.lines = Some(tx);
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (sup, cancel) = (sup.clone(), cancel.clone());
        async move { sup.run_task(spec, cancel).await }
    });
    let pids: Vec<u32> = next_lines(&mut rx, TaskStream::Stdout, 2).await.iter().map(|l| l.parse().unwrap()).collect();
    assert!(pids.iter().all(|&p| !process_gone(p as i32)), "the task runs before the cancel");
    cancel.cancel();
    let out = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("run_task returns soon after the cancel")
        .unwrap()
        .unwrap();
    assert!(out.cancelled && !out.timed_out, "{out:?}");
    assert_eq!(out.to_string(), "cancelled");
    assert_eq!(out.signal, Some(libc::SIGTERM), "{out:?}");
    assert_eq!(pids[1], out.pid);
    for pid in pids {
        eventually(Duration::from_secs(10), "the task's processes to be gone", || process_gone(pid as i32)).await;
    }
    group_gone(out.pid).await;
    assert!(leftover_cgroups("cancelled").is_empty(), "cgroups left: {:?}", leftover_cgroups("cancelled"));
    // A token that has already fired starts nothing.
    let err = sup.run_task(sh("late", "exit 0"), cancel).await.unwrap_err();
    assert!(matches!(err, TaskError::Cancelled { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_kills_the_task() {
    let (sup, _d) = supervisor();
    let (tx, mut rx) = mpsc::channel(64);
    let mut spec = sh("dropped", "sleep 600 & echo $!; echo $$; wait");
    spec.lines = Some(tx);
    let running = tokio::spawn(async move { sup.run_task(spec, CancellationToken::new()).await });
    let pids: Vec<u32> = next_lines(&mut rx, TaskStream::Stdout, 2).await.iter().map(|l| l.parse().unwrap()).collect();
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    for &pid in &pids {
        eventually(Duration::from_secs(10), "the dropped task's processes to be gone", || process_gone(pid as i32))
            .await;
    }
    group_gone(pids[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_reaches_the_program_and_stdout_is_captured_or_written_to_a_file() {
    let input: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut spec = TaskSpec::new("cat", ["cat"]);
    spec.stdin = Some(input.clone());
    spec.stdout = TaskStdout::Capture { max_bytes: 1 << 20 };
    let out = run(spec).await.unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.as_deref(), Some(&input[..]));
    assert!(!out.stdout_truncated);

    let mut spec = TaskSpec::new("cat-head", ["cat"]);
    spec.stdin = Some(input.clone());
    spec.stdout = TaskStdout::Capture { max_bytes: 10 };
    let out = run(spec).await.unwrap();
    assert_eq!(out.stdout.as_deref(), Some(&input[..10]));
    assert!(out.stdout_truncated);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.txt");
    let mut spec = sh("to-file", "echo converted; pwd");
    spec.stdout = TaskStdout::File(file.clone());
    spec.cwd = Some(dir.path().to_path_buf());
    let out = run(spec).await.unwrap();
    assert!(out.success(), "{out:?}");
    let canon = dir.path().canonicalize().unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("converted\n{}\n", canon.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_env_hides_the_daemons_environment() {
    let mut spec = sh("env", "echo \"home=$HOME extra=$EXTRA\"");
    spec.clear_env = true;
    spec.env.insert("EXTRA".into(), "yes".into());
    spec.stdout = TaskStdout::Capture { max_bytes: 1024 };
    let out = run(spec).await.unwrap();
    assert!(std::env::var_os("HOME").is_some(), "the test needs HOME set to be meaningful");
    assert_eq!(out.stdout.as_deref(), Some(&b"home= extra=yes\n"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_are_typed() {
    for program in ["/nonexistent/convert", "ondevice-no-such-converter"] {
        let err = run(TaskSpec::new("missing", [program])).await.unwrap_err();
        match &err {
            TaskError::ProgramNotFound { task, program: p } => {
                assert_eq!((task.as_str(), p.to_str()), ("missing", Some(program)))
            }
            other => panic!("{program}: {other:?}"),
        }
        assert!(err.to_string().contains("not found"), "{err}");
    }
    let err = run(TaskSpec::new("empty", Vec::<String>::new())).await.unwrap_err();
    assert!(matches!(err, TaskError::InvalidSpec { .. }), "{err:?}");
    let err = run(TaskSpec::new("../escape", ["true"])).await.unwrap_err();
    assert!(matches!(err, TaskError::InvalidSpec { .. }), "{err:?}");
    let mut spec = TaskSpec::new("nouser", ["true"]);
    spec.user = Some("ondevice-no-such-user".into());
    assert!(matches!(run(spec).await.unwrap_err(), TaskError::UnknownUser { .. }));

    // The sandbox refuses in mode "on" what the host cannot enforce (memory_high needs the cgroup
    // v2 memory controller); where the host can, the task runs.
    let caps = ondevice_sandbox::detect();
    let mut spec = TaskSpec::new("high-on", ["true"]);
    spec.sandbox = SandboxPolicy { mode: SandboxMode::On, memory_high: Some(32 << 20), ..Default::default() };
    let res = run(spec).await;
    if caps.cgroup_for("memory") == Some(Mechanism::CgroupV2) {
        assert!(res.unwrap().success());
    } else {
        let err = res.unwrap_err();
        assert!(matches!(&err, TaskError::Sandbox { .. }) && err.to_string().contains("memory_high"), "{err:?}");
        assert!(leftover_cgroups("high-on").is_empty(), "a refused start left cgroups behind");
    }
}

const PARENT_ROLE: &str = "ONDEVICE_TEST_TASK_PARENT_DIR";

/// The parent's side: run a task that records its pid and sleeps, and wait forever (until the
/// test kills this process).
fn be_the_parent(dir: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let sup = ondevice_supervisor::Supervisor::new(dir.join("logs"), Default::default()).unwrap();
        let pid_file = dir.join("task.pid");
        let script = format!("echo $$ > {f}.tmp && mv {f}.tmp {f}; exec sleep 600", f = pid_file.display());
        let out = sup.run_task(sh("orphan", &script), CancellationToken::new()).await;
        panic!("the task ended while its parent was alive: {out:?}");
    })
}

/// A task dies with its parent killed by SIGKILL (the parent-death signal from the supervisor's
/// spawner thread), and the next sandbox start removes the cgroup the dead parent left. The test
/// re-executes its own binary, filtered to this test, as the parent.
#[test]
fn a_task_dies_with_its_killed_parent_and_the_next_start_removes_its_cgroup() {
    if let Some(dir) = std::env::var_os(PARENT_ROLE) {
        be_the_parent(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let name = "a_task_dies_with_its_killed_parent_and_the_next_start_removes_its_cgroup";
    let args: [std::ffi::OsString; 3] = [name, "--exact", "--nocapture"].map(Into::into);
    let env = [(PARENT_ROLE.into(), dir.path().as_os_str().to_owned())];
    let log = dir.path().join("parent.log");
    let parent = ondevice_supervisor::spawn_detached(&exe, &args, &env, &log).unwrap();
    let pid_file = dir.path().join("task.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let task: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse().ok()) {
            break pid;
        }
        assert!(
            ondevice_supervisor::process_alive(parent),
            "the parent died: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no task pid: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!process_gone(task as i32), "the task runs before the kill");
    let cgroups = cgroup_dirs(task, &format!("/ondevice/orphan.{parent}."));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(parent as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // process_alive reaps the parent (our child) once it is dead.
    while ondevice_supervisor::process_alive(parent) || !process_gone(task as i32) {
        assert!(std::time::Instant::now() < deadline, "the task outlived its killed parent");
        std::thread::sleep(Duration::from_millis(20));
    }

    if !ondevice_sandbox::detect().cgroup_writable {
        println!("skipped: the stale cgroup clean-up: cgroups are not writable here");
        return;
    }
    assert!(!cgroups.is_empty(), "the task ran in a cgroup");
    // A sandbox starting (a restarted daemon) sweeps the dead parent's cgroups.
    let _sandbox = ondevice_sandbox::linux::LinuxSandbox::new(Default::default());
    for dir in &cgroups {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}
