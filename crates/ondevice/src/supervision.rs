//! Wires the supervisor into the edge: `[workers.NAME]` from config become supervised workers,
//! their status feeds `/api/v1/status`, `/readyz` and `ondevice daemon status`, and their events
//! reach WebSocket and gRPC watchers.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use ondevice_config::Settings;
use ondevice_server::{
    ApiError, AppState, BoxFuture, DaemonEvent, ExitView, ProbeFailuresView, StatusSource, WorkerView,
};
use ondevice_supervisor::{Supervisor, SupervisorError, WorkerSpec, WorkerStatus};

/// The supervisor seen as the edge's status source.
pub struct SupervisedWorkers {
    supervisor: Supervisor,
    sandbox: serde_json::Value,
}

impl SupervisedWorkers {
    /// Starts a supervisor writing worker logs under `log_dir` and adds every configured worker.
    pub async fn start(settings: &Settings, log_dir: &std::path::Path) -> anyhow::Result<SupervisedWorkers> {
        let supervisor = Supervisor::new(log_dir, Default::default())?;
        for (name, cfg) in &settings.workers {
            let spec = WorkerSpec::from_config(name, cfg)?;
            supervisor.add(spec).await.with_context(|| format!("cannot start worker {name:?}"))?;
        }
        let sandbox = serde_json::to_value(supervisor.sandbox().capabilities()).unwrap_or_default();
        Ok(SupervisedWorkers { supervisor, sandbox })
    }

    /// Forwards supervisor events to the edge's watchers until the channel closes.
    pub fn forward_events(&self, state: AppState) {
        let mut rx = self.supervisor.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let data = serde_json::to_value(&ev).unwrap_or_default();
                        let kind = data["kind"]["kind"].as_str().unwrap_or("event").to_owned();
                        state.publish(DaemonEvent::now(&format!("worker.{kind}"), data));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
    }

    /// The supervisor itself (engine workers are added to it on demand).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Stops every worker (SIGTERM, grace, then kill of the tree).
    pub async fn shutdown(&self, grace: Duration) {
        self.supervisor.shutdown(grace).await;
    }
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn view(w: WorkerStatus) -> WorkerView {
    WorkerView {
        state: w.state.as_str().to_owned(),
        restarts: u32::try_from(w.restarts).unwrap_or(u32::MAX),
        oom_kills: w.oom_kills,
        last_exit: w.last_exit.map(|e| ExitView { code: e.code, signal: e.signal, oom: e.oom }),
        next_restart_at: w.next_restart_at.map(unix),
        protection: serde_json::to_value(&w.protection).unwrap_or_default(),
        required: w.required,
        ready: w.ready,
        probe_failures: ProbeFailuresView {
            startup: w.probe_failures.startup,
            liveness: w.probe_failures.liveness,
            readiness: w.probe_failures.readiness,
        },
        name: w.name,
    }
}

impl StatusSource for SupervisedWorkers {
    fn workers(&self) -> Vec<WorkerView> {
        self.supervisor.status().into_iter().map(view).collect()
    }

    fn ready(&self) -> bool {
        self.supervisor.required_ready()
    }

    fn sandbox(&self) -> serde_json::Value {
        self.sandbox.clone()
    }

    fn restart_worker<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            self.supervisor.restart_worker(name).await.map_err(|e| match e {
                SupervisorError::NotFound(_) => ApiError::NotFound(e.to_string()),
                other => ApiError::Internal(other.to_string()),
            })
        })
    }
}
