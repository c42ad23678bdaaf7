//! Helpers shared by the supervisor's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use ondevice_supervisor::{Event, Supervisor, SupervisorOptions, WorkerStatus};

/// A supervisor writing logs into a fresh temp dir (kept alive by the returned guard).
pub fn supervisor() -> (Supervisor, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sup = Supervisor::new(dir.path().join("logs"), SupervisorOptions::default()).expect("supervisor");
    (sup, dir)
}

/// Poll `name`'s status until `pred` holds; panics with the last status after `limit`.
pub async fn wait_status(
    sup: &Supervisor,
    name: &str,
    limit: Duration,
    pred: impl Fn(&WorkerStatus) -> bool,
) -> WorkerStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let st = sup.worker_status(name).expect("worker exists");
        if pred(&st) {
            return st;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not reached within {limit:?}; last status: {st:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receive events of `worker` until `pred` matches one; panics after `limit`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    worker: &str,
    limit: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) if ev.worker == worker && pred(&ev) => return ev,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream closed: {e}"),
            Err(_) => panic!("event not seen within {limit:?}"),
        }
    }
}

/// Whether a process is gone (no /proc entry, or a zombie waiting for init).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')).unwrap_or(true),
    }
}

/// Fail clearly when a test that needs root is run without it.
pub fn require_root(what: &str) {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{what} needs root (CI runs as root); run the tests as root");
}
