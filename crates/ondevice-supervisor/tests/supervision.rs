//! Supervision with real processes: restarts with backoff and an open circuit, hooks, probes,
//! graceful stop of a process tree, logs, the detached spawn. Unix: POSIX shells, signals and
//! Unix sockets; the tree kill (cgroups, `setsid`, /proc) and the user switch (root, as in CI) only
//! on Linux.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::{supervisor, wait_event, wait_status};
use ondevice_supervisor::{
    Backoff, EventKind, Hook, MaxRestarts, ProbeCheck, ProbeSpec, RestartPolicy, WorkerSpec, WorkerState,
};

fn sh(name: &str, script: &str) -> WorkerSpec {
    WorkerSpec::new(name, ["/bin/sh", "-c", script])
}

fn fast_probe(check: ProbeCheck) -> ProbeSpec {
    let mut p = ProbeSpec::new(check);
    p.period = Duration::from_millis(50);
    p.timeout = Duration::from_millis(500);
    p.failure_threshold = 2;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_exponentially_then_opens_the_circuit() {
    let (sup, _dir) = supervisor();
    let mut rx = sup.subscribe();
    let mut spec = sh("crasher", "exit 3");
    spec.backoff =
        Backoff { initial: Duration::from_millis(40), max: Duration::from_secs(5), factor: 2.0, jitter: 0.0 };
    spec.max_restarts = MaxRestarts { count: 4, within: Duration::from_secs(60) };
    sup.add(spec).await.unwrap();

    let mut delays = Vec::new();
    let mut starts = Vec::new();
    loop {
        let ev = wait_event(&mut rx, "crasher", Duration::from_secs(20), |_| true).await;
        match ev.kind {
            // The event's own timestamp, taken by the supervising task around its backoff sleep.
            EventKind::Started { .. } => starts.push(ev.at),
            EventKind::RestartScheduled { delay_ms } => delays.push(delay_ms),
            EventKind::GaveUp => break,
            _ => {}
        }
    }
    assert_eq!(delays, vec![40, 80, 160, 320], "scheduled restart delays grow by the factor");
    // Observed intervals between starts are at least the scheduled delays, so they grow too.
    let gaps: Vec<u128> = starts.windows(2).map(|w| w[1].duration_since(w[0]).unwrap().as_millis()).collect();
    for (gap, d) in gaps.iter().zip(&delays) {
        assert!(*gap >= u128::from(*d), "restart interval {gap} ms shorter than scheduled {d} ms");
    }
    let st = wait_status(&sup, "crasher", Duration::from_secs(5), |s| s.state == WorkerState::Failed).await;
    assert_eq!(st.restarts, 4);
    assert_eq!(st.last_exit.as_ref().and_then(|e| e.code), Some(3));
    assert_eq!(st.oom_kills, 0, "exits with a code are not OOM kills");
    assert!(st.failure.as_deref().unwrap_or("").contains("circuit open"), "{:?}", st.failure);
    assert!(st.pid.is_none());

    // Given up: stays failed until reset; restart_worker closes the circuit and starts again.
    sup.restart_worker("crasher").await.unwrap();
    wait_event(&mut rx, "crasher", Duration::from_secs(5), |e| matches!(e.kind, EventKind::Started { .. })).await;
    sup.shutdown(Duration::from_secs(1)).await;
}

/// A one-request HTTP server: returns the request body.
fn one_request_server() -> (String, std::thread::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
                    return body.to_string();
                }
            }
            assert!(n > 0, "connection closed before the body");
        }
    });
    (url, h)
}

/// On Linux children are forked by the supervisor's spawner thread while the calling runtime
/// thread waits; a single-threaded runtime must still get its children and their exits.
#[tokio::test(flavor = "current_thread")]
async fn a_current_thread_runtime_spawns_and_reaps() {
    let (sup, _dir) = supervisor();
    let mut spec = sh("once", "exit 3");
    spec.restart = RestartPolicy::Never;
    spec.hooks.on_exit = vec![Hook::Exec(vec!["/bin/sh".into(), "-c".into(), "exit 0".into()])];
    sup.add(spec).await.unwrap();
    let st = wait_status(&sup, "once", Duration::from_secs(10), |s| s.state == WorkerState::Exited).await;
    assert_eq!(st.last_exit.unwrap().code, Some(3));
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_fire_with_the_exit_code() {
    let (sup, dir) = supervisor();
    let out = dir.path().join("hooks.txt");
    let (url, server) = one_request_server();
    let mut spec = sh("hooked", "exit 7");
    spec.restart = RestartPolicy::Never;
    let record = format!("echo \"$ONDEVICE_EVENT $ONDEVICE_WORKER code=$ONDEVICE_EXIT_CODE\" >> {}", out.display());
    spec.hooks.on_start = vec![Hook::Exec(vec!["/bin/sh".into(), "-c".into(), record.clone().into()])];
    spec.hooks.on_exit = vec![Hook::Exec(vec!["/bin/sh".into(), "-c".into(), record.into()]), Hook::Webhook(url)];
    sup.add(spec).await.unwrap();

    let body = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["event"], "exit");
    assert_eq!(json["worker"], "hooked");
    assert_eq!(json["exit_code"], 7);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("exit hooked code=7") && text.contains("start hooked code=") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exec hooks did not write: {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = sup.worker_status("hooked").unwrap();
    assert_eq!(st.state, WorkerState::Exited);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_worker() {
    let (sup, _dir) = supervisor();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut spec = WorkerSpec::new("unlive", ["sleep", "1000"]);
    spec.liveness = Some(fast_probe(ProbeCheck::Tcp(format!("127.0.0.1:{port}"))));
    spec.backoff.initial = Duration::ZERO;
    spec.stop_grace = Duration::from_millis(500);
    sup.add(spec).await.unwrap();
    let st = wait_status(&sup, "unlive", Duration::from_secs(10), |s| s.restarts >= 1).await;
    let exit = st.last_exit.expect("an exit was recorded");
    assert_eq!(exit.killed_by, Some("liveness"));
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert!(st.probe_failures.liveness >= 2, "{:?}", st.probe_failures);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_holds_off_readiness_and_readiness_flips() {
    let (sup, dir) = supervisor();
    let started = dir.path().join("started");
    let ready = dir.path().join("ready");
    std::fs::write(&ready, "").unwrap();
    let test = |p: &std::path::Path| ProbeCheck::Exec(vec!["test".into(), "-e".into(), p.into()]);
    let mut spec = WorkerSpec::new("flipper", ["sleep", "1000"]);
    let mut startup = fast_probe(test(&started));
    startup.failure_threshold = 1000;
    spec.startup = Some(startup);
    let mut readiness = fast_probe(test(&ready));
    readiness.success_threshold = 2;
    spec.readiness = Some(readiness);
    spec.required = true;
    sup.add(spec).await.unwrap();

    // The readiness check would pass, but the startup probe has not succeeded yet.
    let mut rx = sup.subscribe();
    wait_event(&mut rx, "flipper", Duration::from_secs(5), |e| {
        matches!(e.kind, EventKind::ProbeFailed { probe: "startup", .. })
    })
    .await;
    let st = sup.worker_status("flipper").unwrap();
    assert_eq!(st.state, WorkerState::Starting);
    assert!(!st.ready && !sup.required_ready());

    std::fs::write(&started, "").unwrap();
    wait_status(&sup, "flipper", Duration::from_secs(5), |s| s.ready && s.state == WorkerState::Ready).await;
    assert!(sup.required_ready());

    std::fs::remove_file(&ready).unwrap();
    let st = wait_status(&sup, "flipper", Duration::from_secs(5), |s| !s.ready).await;
    assert_eq!(st.state, WorkerState::Running, "readiness failure does not restart");
    assert_eq!(st.restarts, 0);
    assert!(!sup.required_ready());

    std::fs::write(&ready, "").unwrap();
    wait_status(&sup, "flipper", Duration::from_secs(5), |s| s.ready).await;
    sup.shutdown(Duration::from_secs(1)).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_kills_a_tree_that_ignores_sigterm() {
    use common::process_gone;
    let (sup, dir) = supervisor();
    let pids = dir.path().join("pids");
    // SIGTERM is ignored by the shell and (inherited) by its children; one grandchild even leaves
    // the process group with setsid, so only the cgroup can reach it.
    let script = format!(
        "trap '' TERM; sleep 1000 & echo $! >> {p}; setsid sleep 1000 & echo $! >> {p}; echo up; wait",
        p = pids.display()
    );
    let mut spec = sh("stubborn", &script);
    spec.stop_grace = Duration::from_millis(300);
    sup.add(spec).await.unwrap();
    let log = sup.log_path("stubborn");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("up") {
        assert!(std::time::Instant::now() < deadline, "worker did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = sup.worker_status("stubborn").unwrap();
    let tree_kill = st.protection.as_ref().and_then(|p| p.mechanism(ondevice_sandbox::Limit::TreeKill));
    let kids: Vec<i32> = std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(kids.len(), 2);
    let shell = st.pid.unwrap() as i32;

    let mut rx = sup.subscribe();
    let stop = sup.clone();
    let stopper = tokio::spawn(async move { stop.remove("stubborn", Duration::from_millis(300)).await });
    let ev =
        wait_event(&mut rx, "stubborn", Duration::from_secs(10), |e| matches!(e.kind, EventKind::Exited { .. })).await;
    stopper.await.unwrap().unwrap();
    let EventKind::Exited { exit } = ev.kind else { unreachable!() };
    assert_eq!(exit.signal, Some(libc::SIGKILL), "SIGTERM was ignored, so SIGKILL after the grace period");
    assert_eq!(exit.killed_by, Some("stop"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let in_group = process_gone(shell) && process_gone(kids[0]);
        let escaped = process_gone(kids[1]);
        if in_group && (escaped || tree_kill.is_none()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "processes survive: shell {shell}, children {kids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if tree_kill.is_none() {
        // Only possible without root: clean up the escaped grandchild ourselves.
        // SAFETY: plain kill of a pid we recorded.
        unsafe { libc::kill(kids[1], libc::SIGKILL) };
        panic!("no cgroup/job tree kill on this host: the setsid grandchild escaped the process group");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_goes_to_a_rotating_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ondevice_supervisor::SupervisorOptions {
        log_rotation: ondevice_supervisor::LogRotation { max_bytes: 1000, keep: 2 },
        ..Default::default()
    };
    let sup = ondevice_supervisor::Supervisor::new(dir.path(), opts).unwrap();
    let mut spec = sh(
        "chatty",
        "i=0; while [ $i -lt 100 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; sleep 0.5; echo oops >&2",
    );
    spec.restart = RestartPolicy::Never;
    sup.add(spec).await.unwrap();
    wait_status(&sup, "chatty", Duration::from_secs(10), |s| s.state == WorkerState::Exited).await;
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let cur = read("chatty.log");
    assert!(cur.len() <= 1000);
    // stdout and stderr are pumped concurrently; the pause before the stderr line lets the stdout pump
    // finish first, so the stderr line lands last and is never rotated out.
    let all = format!("{}{}{}", read("chatty.log.2"), read("chatty.log.1"), cur);
    assert!(all.contains("[stderr] oops"), "{all}");
    assert!(all.contains("line-99-"), "the last stdout line is in the current files: {all}");
    assert!(dir.path().join("chatty.log.1").exists() && dir.path().join("chatty.log.2").exists());
    assert!(!dir.path().join("chatty.log.3").exists());
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_probe_marks_ready() {
    let addr = grpc_server::start().await;
    let (sup, _dir) = supervisor();
    let mut spec = WorkerSpec::new("grpc", ["sleep", "1000"]);
    spec.readiness = Some(fast_probe(ProbeCheck::Grpc(addr.to_string())));
    sup.add(spec).await.unwrap();
    wait_status(&sup, "grpc", Duration::from_secs(10), |s| s.ready).await;
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_unix_probes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let ul = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { while ul.accept().await.is_ok() {} });
    let (sup, _d) = supervisor();
    let mut a = WorkerSpec::new("http", ["sleep", "1000"]);
    a.readiness = Some(fast_probe(ProbeCheck::Http(format!("http://{addr}/health"))));
    let mut b = WorkerSpec::new("unix", ["sleep", "1000"]);
    b.readiness = Some(fast_probe(ProbeCheck::Unix(sock.clone())));
    sup.add(a).await.unwrap();
    sup.add(b).await.unwrap();
    wait_status(&sup, "http", Duration::from_secs(10), |s| s.ready).await;
    wait_status(&sup, "unix", Duration::from_secs(10), |s| s.ready).await;
    sup.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn spawn_detached_starts_a_session_leader_we_do_not_wait_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let pid = ondevice_supervisor::spawn_detached(
        std::path::Path::new("/bin/sh"),
        &["-c".into(), "echo hello-$GREETING; sleep 30".into()],
        &[("GREETING".into(), "world".into())],
        &log,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("hello-world") {
        assert!(std::time::Instant::now() < deadline, "detached process did not write its log");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(sid.as_raw(), pid as i32, "the detached process leads its own session");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
}

/// A minimal in-test gRPC health server (grpc.health.v1.Health/Check answering SERVING) over
/// plaintext HTTP/2, written against hyper's server API.
mod grpc_server {
    use std::net::SocketAddr;

    use http_body_util::Full;
    use hyper::body::Bytes;

    pub async fn start() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        // HealthCheckResponse { status: SERVING } = field 1, varint 1.
                        let body = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "0")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_uptime_resets_backoff_and_intensity() {
    let (sup, dir) = supervisor();
    let gave_up = dir.path().join("gave-up");
    let mut rx = sup.subscribe();
    // Each run lasts longer than stable_after, so the counters reset every time: the delay stays
    // at `initial` and two allowed restarts are never exceeded.
    let mut spec = sh("steady", "sleep 0.3; exit 1");
    spec.stable_after = Duration::from_millis(100);
    spec.backoff =
        Backoff { initial: Duration::from_millis(10), max: Duration::from_secs(5), factor: 4.0, jitter: 0.0 };
    spec.max_restarts = MaxRestarts { count: 2, within: Duration::from_secs(60) };
    let touch = format!("touch {}", gave_up.display());
    spec.hooks.on_give_up = vec![Hook::Exec(vec!["/bin/sh".into(), "-c".into(), touch.into()])];
    sup.add(spec).await.unwrap();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        let ev = wait_event(&mut rx, "steady", Duration::from_secs(10), |e| {
            matches!(e.kind, EventKind::RestartScheduled { .. } | EventKind::GaveUp)
        })
        .await;
        match ev.kind {
            EventKind::RestartScheduled { delay_ms } => delays.push(delay_ms),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delays, [10, 10, 10, 10]);
    sup.shutdown(Duration::from_secs(1)).await;
    assert!(!gave_up.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn give_up_hook_fires_when_the_circuit_opens() {
    let (sup, dir) = supervisor();
    let out = dir.path().join("give-up.txt");
    let mut spec = sh("doomed", "exit 9");
    spec.backoff.initial = Duration::ZERO;
    spec.max_restarts = MaxRestarts { count: 1, within: Duration::from_secs(60) };
    let record =
        format!("echo \"$ONDEVICE_EVENT code=$ONDEVICE_EXIT_CODE restarts=$ONDEVICE_RESTARTS\" > {}", out.display());
    spec.hooks.on_give_up = vec![Hook::Exec(vec!["/bin/sh".into(), "-c".into(), record.into()])];
    sup.add(spec).await.unwrap();
    wait_status(&sup, "doomed", Duration::from_secs(10), |s| s.state == WorkerState::Failed).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if !text.is_empty() {
            assert_eq!(text.trim(), "give_up code=9 restarts=1");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "give-up hook did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sup.shutdown(Duration::from_secs(1)).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_as_the_configured_user() {
    common::require_root("switching the worker's user");
    let (sup, _dir) = supervisor();
    let mut spec = sh("as-nobody", "id -u; id -g");
    spec.user = Some("nobody".into());
    spec.restart = RestartPolicy::Never;
    sup.add(spec).await.unwrap();
    let st = wait_status(&sup, "as-nobody", Duration::from_secs(10), |s| s.state == WorkerState::Exited).await;
    assert_eq!(st.last_exit.unwrap().code, Some(0));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody exists");
    let log = std::fs::read_to_string(sup.log_path("as-nobody")).unwrap();
    let ids: Vec<u32> = log.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(ids, [nobody.uid.as_raw(), nobody.gid.as_raw()]);
    let mut bad = WorkerSpec::new("no-such-user", ["true"]);
    bad.user = Some("no-such-user-ondevice".into());
    sup.add(bad).await.unwrap();
    let st = wait_status(&sup, "no-such-user", Duration::from_secs(10), |s| s.state == WorkerState::Failed).await;
    assert!(st.failure.unwrap().contains("unknown user"));
    sup.shutdown(Duration::from_secs(1)).await;
}
