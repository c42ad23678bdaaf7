//! Measures the time from a worker's crash to its restart with zero backoff.
//!
//! `cargo run --release -p ondevice-supervisor --example restart_latency [-- RESTARTS]`
//!
//! Prints, over RESTARTS (default 20) restarts, the median and p90 of
//! * supervisor: process exit observed -> next process spawned (ExitInfo.at -> Started event),
//! * end to end: the worker's last timestamp before `exit 1` -> the next worker's first timestamp,
//!
//! once with the sandbox in mode "off" and once in mode "auto" (a fresh cgroup per start).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ondevice_sandbox::{SandboxMode, SandboxPolicy};
use ondevice_supervisor::{Backoff, EventKind, MaxRestarts, Supervisor, SupervisorOptions, WorkerSpec};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn run(mode: SandboxMode, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let stamps = dir.path().join("stamps");
    let sup = Supervisor::new(dir.path().join("logs"), SupervisorOptions::default()).unwrap();
    let mut rx = sup.subscribe();
    let script = format!("date +s%s%N >> {p}; date +e%s%N >> {p}; exit 1", p = stamps.display());
    let mut spec = WorkerSpec::new("crashy", ["/bin/sh", "-c", &script]);
    spec.backoff = Backoff { initial: Duration::ZERO, max: Duration::ZERO, factor: 1.0, jitter: 0.0 };
    spec.max_restarts = MaxRestarts { count: 10_000, within: Duration::from_secs(1) };
    spec.sandbox = SandboxPolicy { mode, ..Default::default() };
    sup.add(spec).await.unwrap();
    let mut sup_ms = Vec::new();
    let mut last_exit: Option<SystemTime> = None;
    while sup_ms.len() < n {
        let ev = rx.recv().await.unwrap();
        match ev.kind {
            EventKind::Exited { exit } => last_exit = Some(exit.at),
            EventKind::Started { .. } => {
                if let Some(t) = last_exit.take() {
                    sup_ms.push(ev.at.duration_since(t).unwrap_or_default().as_secs_f64() * 1000.0);
                }
            }
            _ => {}
        }
    }
    sup.shutdown(Duration::from_secs(1)).await;
    let text = std::fs::read_to_string(&stamps).unwrap();
    let mut e2e = Vec::new();
    let mut end: Option<u128> = None;
    for l in text.lines() {
        let (k, v) = l.split_at(1);
        let v: u128 = v.parse().unwrap();
        match (k, end) {
            ("e", _) => end = Some(v),
            ("s", Some(e)) => {
                e2e.push((v - e) as f64 / 1e6);
                end = None;
            }
            _ => {}
        }
    }
    let _ = UNIX_EPOCH;
    println!(
        "sandbox {:?}: {} restarts; supervisor exit->spawn median {:.2} ms p90 {:.2} ms; end-to-end last stamp->next first stamp median {:.2} ms p90 {:.2} ms",
        mode,
        sup_ms.len(),
        pct(&mut sup_ms, 0.5),
        pct(&mut sup_ms, 0.9),
        pct(&mut e2e, 0.5),
        pct(&mut e2e, 0.9)
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    run(SandboxMode::Off, n).await;
    run(SandboxMode::Auto, n).await;
}
