//! One worker's supervision task: spawn, watch (exit, probes, commands), stop, back off, restart,
//! give up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ondevice_sandbox::{Prepared, Sandbox};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::hooks::{self, HookEvent};
use crate::logs::{self, LogRotation, RotatingLog};
use crate::probe::{self, Clients, Verdict};
use crate::spec::{RestartPolicy, WorkerSpec};
use crate::status::{Event, EventKind, ExitInfo, WorkerState, WorkerStatus};

/// Commands to a worker task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop (grace) and end the task; reply when done.
    Stop { grace: Duration, done: oneshot::Sender<()> },
    /// Restart now: close the circuit, reset counters, stop the current process if any.
    Restart,
}

/// Everything the task shares with the supervisor.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) status: Arc<Mutex<WorkerStatus>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) sandbox: Arc<dyn Sandbox>,
    pub(crate) clients: Clients,
    pub(crate) log: RotatingLog,
    pub(crate) _rotation: LogRotation,
}

impl Ctx {
    fn emit(&self, name: &str, kind: EventKind) {
        let _ = self.events.send(Event { worker: name.to_string(), kind, at: SystemTime::now() });
    }

    fn update<R>(&self, f: impl FnOnce(&mut WorkerStatus) -> R) -> R {
        let mut g = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    fn set_state(&self, name: &str, to: WorkerState) {
        let from = self.update(|s| std::mem::replace(&mut s.state, to));
        if from != to {
            tracing::debug!(worker = name, from = from.as_str(), to = to.as_str(), "worker state");
            self.emit(name, EventKind::State { from, to });
        }
    }

    fn set_ready(&self, name: &str, ready: bool) {
        let changed = self.update(|s| std::mem::replace(&mut s.ready, ready) != ready);
        if changed {
            self.emit(name, EventKind::Ready { ready });
        }
    }
}

/// Why the watch loop ended.
enum Outcome {
    Exited(ExitInfo),
    /// Stop requested: the process is gone; reply sent after cleanup.
    Stopped(ExitInfo, oneshot::Sender<()>),
}

fn now_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

#[cfg(unix)]
fn exit_info(st: std::process::ExitStatus, started: Instant, oom: bool, killed_by: Option<&'static str>) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    ExitInfo { code: st.code(), signal: st.signal(), oom, killed_by, at: SystemTime::now(), uptime_ms: now_ms(started) }
}

#[cfg(not(unix))]
fn exit_info(st: std::process::ExitStatus, started: Instant, oom: bool, killed_by: Option<&'static str>) -> ExitInfo {
    ExitInfo { code: st.code(), signal: None, oom, killed_by, at: SystemTime::now(), uptime_ms: now_ms(started) }
}

/// Stop a process gracefully: SIGTERM to its group, wait `grace`, then SIGKILL the group and the
/// sandbox's cgroup/job. Returns the exit status.
pub(crate) async fn terminate(
    child: &mut tokio::process::Child,
    prepared: &Prepared,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        crate::process::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        if let Ok(st) = tokio::time::timeout(grace, child.wait()).await {
            kill_rest(pid, prepared);
            return st;
        }
        kill_rest(pid, prepared);
        return child.wait().await;
    }
    let _ = grace;
    let _ = prepared.kill_all();
    let _ = child.start_kill();
    child.wait().await
}

/// SIGKILL whatever is left of the worker's process group and cgroup.
pub(crate) fn kill_rest(pgid: u32, prepared: &Prepared) {
    #[cfg(unix)]
    crate::process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    #[cfg(not(unix))]
    let _ = pgid;
    if let Err(e) = prepared.kill_all() {
        tracing::warn!(error = %e, "sandbox kill failed");
    }
}

/// Run one process of the worker until it exits or is stopped.
async fn run_once(
    spec: &WorkerSpec,
    ctx: &Ctx,
    cmds: &mut mpsc::Receiver<Command>,
    mut prepared: Prepared,
    user: Option<crate::process::RunAs>,
) -> Result<Outcome, String> {
    let name = spec.name.as_str();
    let mut child = crate::process::spawn_worker(&spec.command, &spec.env, spec.cwd.as_deref(), user, &prepared)
        .map_err(|e| format!("cannot spawn {:?}: {e}", spec.command.first().unwrap_or(&Default::default())))?;
    let started = Instant::now();
    let pid = child.id().unwrap_or(0);
    if let Err(e) = prepared.after_spawn(pid) {
        tracing::warn!(worker = name, error = %e, "sandbox after_spawn failed");
    }
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(logs::pump(out, ctx.log.clone(), b"")));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(logs::pump(err, ctx.log.clone(), b"[stderr] ")));
    }
    let restarts = ctx.update(|s| {
        s.pid = Some(pid);
        s.started_at = Some(SystemTime::now());
        s.protection = Some(prepared.protection.clone());
        s.next_restart_at = None;
        s.failure = None;
        s.restarts
    });
    ctx.emit(name, EventKind::Started { pid });
    ctx.set_state(name, WorkerState::Starting);
    let mut ev = HookEvent::new(name, "start", restarts, None);
    ev.pid = Some(pid);
    hooks::fire(&ctx.clients.http, &spec.hooks.on_start, ev);

    let (ptx, mut prx) = mpsc::channel(16);
    let probes = tokio::spawn(probe::drive(
        ctx.clients.clone(),
        spec.startup.clone(),
        spec.liveness.clone(),
        spec.readiness.clone(),
        ptx,
    ));
    let has_readiness = spec.readiness.is_some();

    let outcome = loop {
        tokio::select! {
            st = child.wait() => {
                let st = st.map_err(|e| format!("wait failed: {e}"))?;
                kill_rest(pid, &prepared);
                break Outcome::Exited(exit_info(st, started, prepared.oom_kills() > 0, None));
            }
            Some(v) = prx.recv() => match v {
                Verdict::Started => {
                    ctx.set_state(name, if has_readiness { WorkerState::Running } else { WorkerState::Ready });
                    if !has_readiness { ctx.set_ready(name, true); }
                }
                Verdict::Ready(r) => {
                    ctx.set_ready(name, r);
                    ctx.set_state(name, if r { WorkerState::Ready } else { WorkerState::Running });
                }
                Verdict::CheckFailed { probe, reason } => {
                    tracing::debug!(worker = name, probe, reason = %reason, "probe check failed");
                    ctx.update(|s| match probe {
                        "startup" => s.probe_failures.startup += 1,
                        "liveness" => s.probe_failures.liveness += 1,
                        _ => s.probe_failures.readiness += 1,
                    });
                    ctx.emit(name, EventKind::ProbeFailed { probe, reason });
                }
                Verdict::Kill { probe } => {
                    tracing::warn!(worker = name, probe, "probe failure threshold reached; restarting");
                    ctx.set_ready(name, false);
                    ctx.set_state(name, WorkerState::Stopping);
                    let st = terminate(&mut child, &prepared, spec.stop_grace).await.map_err(|e| format!("wait failed: {e}"))?;
                    break Outcome::Exited(exit_info(st, started, prepared.oom_kills() > 0, Some(probe)));
                }
            },
            Some(cmd) = cmds.recv() => match cmd {
                Command::Stop { grace, done } => {
                    ctx.set_ready(name, false);
                    ctx.set_state(name, WorkerState::Stopping);
                    let st = terminate(&mut child, &prepared, grace).await.map_err(|e| format!("wait failed: {e}"))?;
                    break Outcome::Stopped(exit_info(st, started, prepared.oom_kills() > 0, Some("stop")), done);
                }
                Command::Restart => {
                    ctx.set_ready(name, false);
                    ctx.set_state(name, WorkerState::Stopping);
                    let st = terminate(&mut child, &prepared, spec.stop_grace).await.map_err(|e| format!("wait failed: {e}"))?;
                    ctx.update(|s| s.attempt = 0);
                    break Outcome::Exited(exit_info(st, started, prepared.oom_kills() > 0, Some("restart")));
                }
            },
        }
    };
    probes.abort();
    ctx.set_ready(name, false);
    for p in pumps {
        // The pipes close when the last process holding them dies; bounded wait.
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    let _ = tokio::task::spawn_blocking(move || prepared.release()).await;
    Ok(outcome)
}

/// Wait for a command while given up (or refused): only Restart or Stop get us out.
async fn wait_for_reset(cmds: &mut mpsc::Receiver<Command>) -> Option<oneshot::Sender<()>> {
    match cmds.recv().await {
        Some(Command::Restart) => None,
        Some(Command::Stop { done, .. }) => Some(done),
        None => Some(oneshot::channel().0),
    }
}

/// The supervision loop of one worker. Ends when stopped.
pub(crate) async fn supervise(spec: WorkerSpec, ctx: Ctx, mut cmds: mpsc::Receiver<Command>) {
    let name = spec.name.clone();
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut attempt: u32 = 0;
    loop {
        // Prepare: user and sandbox.
        let user = match spec.user.as_deref().map(crate::process::resolve_user).transpose() {
            Ok(u) => u,
            Err(e) => {
                if give_up(&spec, &ctx, &mut cmds, e.to_string()).await {
                    return;
                }
                recent.clear();
                attempt = 0;
                continue;
            }
        };
        let sandbox = ctx.sandbox.clone();
        let (w, pol) = (name.clone(), spec.sandbox.clone());
        let prepared = match tokio::task::spawn_blocking(move || sandbox.prepare(&w, &pol)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                if give_up(&spec, &ctx, &mut cmds, e.to_string()).await {
                    return;
                }
                recent.clear();
                attempt = 0;
                continue;
            }
            Err(e) => {
                tracing::error!(worker = %name, error = %e, "sandbox task failed");
                return;
            }
        };
        let outcome = match run_once(&spec, &ctx, &mut cmds, prepared, user).await {
            Ok(o) => o,
            Err(e) => {
                // Spawn failure: counts as a failed start.
                tracing::warn!(worker = %name, error = %e, "worker failed to start");
                let exit = ExitInfo {
                    code: None,
                    signal: None,
                    oom: false,
                    killed_by: None,
                    at: SystemTime::now(),
                    uptime_ms: 0,
                };
                ctx.update(|s| s.failure = Some(e));
                Outcome::Exited(exit)
            }
        };
        let (exit, stop) = match outcome {
            Outcome::Exited(e) => (e, None),
            Outcome::Stopped(e, done) => (e, Some(done)),
        };
        let restarts = ctx.update(|s| {
            s.pid = None;
            s.last_exit = Some(exit.clone());
            s.oom_kills += u64::from(exit.oom);
            s.restarts
        });
        tracing::info!(worker = %name, code = ?exit.code, signal = ?exit.signal, oom = exit.oom, "worker exited");
        ctx.emit(&name, EventKind::Exited { exit: exit.clone() });
        hooks::fire(&ctx.clients.http, &spec.hooks.on_exit, HookEvent::new(&name, "exit", restarts, Some(&exit)));
        if let Some(done) = stop {
            ctx.set_state(&name, WorkerState::Stopped);
            let _ = done.send(());
            return;
        }
        let manual = exit.killed_by == Some("restart");
        let restart = manual
            || match spec.restart {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Always => true,
            };
        if !restart {
            ctx.set_state(&name, WorkerState::Exited);
            // Stay until stopped or explicitly restarted.
            if let Some(done) = wait_for_reset(&mut cmds).await {
                ctx.set_state(&name, WorkerState::Stopped);
                let _ = done.send(());
                return;
            }
            recent.clear();
            attempt = 0;
            continue;
        }
        if manual {
            recent.clear();
            attempt = 0;
        }
        // Stable uptime resets the counters.
        if Duration::from_millis(exit.uptime_ms) >= spec.stable_after {
            recent.clear();
            attempt = 0;
        }
        // Restart intensity.
        let now = Instant::now();
        while recent.front().is_some_and(|t| now.duration_since(*t) > spec.max_restarts.within) {
            recent.pop_front();
        }
        if !manual && recent.len() as u32 >= spec.max_restarts.count {
            let reason = format!(
                "circuit open: more than {} restarts within {} s; use restart-worker to try again",
                spec.max_restarts.count,
                spec.max_restarts.within.as_secs()
            );
            ctx.emit(&name, EventKind::GaveUp);
            hooks::fire(
                &ctx.clients.http,
                &spec.hooks.on_give_up,
                HookEvent::new(&name, "give_up", restarts, Some(&exit)),
            );
            if give_up(&spec, &ctx, &mut cmds, reason).await {
                return;
            }
            recent.clear();
            attempt = 0;
            continue;
        }
        recent.push_back(now);
        let delay = if manual { Duration::ZERO } else { spec.backoff.delay(attempt) };
        attempt = attempt.saturating_add(1);
        ctx.update(|s| {
            s.restarts += 1;
            s.attempt = attempt;
            s.next_restart_at = Some(SystemTime::now() + delay);
        });
        ctx.set_state(&name, WorkerState::Backoff);
        ctx.emit(&name, EventKind::RestartScheduled { delay_ms: delay.as_millis() as u64 });
        let mut ev = HookEvent::new(&name, "restart", restarts + 1, Some(&exit));
        ev.delay_ms = Some(delay.as_millis() as u64);
        hooks::fire(&ctx.clients.http, &spec.hooks.on_restart, ev);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            cmd = cmds.recv() => match cmd {
                Some(Command::Restart) => { recent.clear(); attempt = 0; }
                Some(Command::Stop { done, .. }) => {
                    ctx.update(|s| s.next_restart_at = None);
                    ctx.set_state(&name, WorkerState::Stopped);
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
        }
    }
}

/// Enter state failed with `reason` and wait. Returns `true` if the worker must end (stopped).
async fn give_up(spec: &WorkerSpec, ctx: &Ctx, cmds: &mut mpsc::Receiver<Command>, reason: String) -> bool {
    tracing::error!(worker = %spec.name, reason = %reason, "worker given up");
    ctx.update(|s| {
        s.failure = Some(reason);
        s.next_restart_at = None;
        s.pid = None;
    });
    ctx.set_state(&spec.name, WorkerState::Failed);
    match wait_for_reset(cmds).await {
        Some(done) => {
            ctx.set_state(&spec.name, WorkerState::Stopped);
            let _ = done.send(());
            true
        }
        None => {
            ctx.update(|s| {
                s.failure = None;
                s.attempt = 0;
            });
            false
        }
    }
}
