//! Lifecycle hooks: exec commands and webhooks, fired without blocking supervision.

use std::time::Duration;

use crate::spec::Hook;
use crate::status::ExitInfo;

/// How long a hook may run before it is killed / abandoned.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The data a hook receives.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookEvent {
    /// Worker name.
    pub worker: String,
    /// `start`, `exit`, `restart` or `give_up`.
    pub event: &'static str,
    /// Pid of the process concerned.
    pub pid: Option<u32>,
    /// Exit code of the last exit.
    pub exit_code: Option<i32>,
    /// Signal of the last exit.
    pub signal: Option<i32>,
    /// Whether the last exit was an OOM kill.
    pub oom: bool,
    /// Restarts so far.
    pub restarts: u64,
    /// Delay before the scheduled restart (event `restart`).
    pub delay_ms: Option<u64>,
}

impl HookEvent {
    pub(crate) fn new(worker: &str, event: &'static str, restarts: u64, exit: Option<&ExitInfo>) -> HookEvent {
        HookEvent {
            worker: worker.to_string(),
            event,
            pid: None,
            exit_code: exit.and_then(|e| e.code),
            signal: exit.and_then(|e| e.signal),
            oom: exit.is_some_and(|e| e.oom),
            restarts,
            delay_ms: None,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        vec![
            ("ONDEVICE_WORKER", self.worker.clone()),
            ("ONDEVICE_EVENT", self.event.to_string()),
            ("ONDEVICE_PID", opt(self.pid.map(|v| v.to_string()))),
            ("ONDEVICE_EXIT_CODE", opt(self.exit_code.map(|v| v.to_string()))),
            ("ONDEVICE_EXIT_SIGNAL", opt(self.signal.map(|v| v.to_string()))),
            ("ONDEVICE_OOM", self.oom.to_string()),
            ("ONDEVICE_RESTARTS", self.restarts.to_string()),
            ("ONDEVICE_DELAY_MS", opt(self.delay_ms.map(|v| v.to_string()))),
        ]
    }
}

/// Fire every hook in `hooks` in the background.
pub(crate) fn fire(http: &reqwest::Client, hooks: &[Hook], ev: HookEvent) {
    for hook in hooks {
        let hook = hook.clone();
        let ev = ev.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let res = tokio::time::timeout(HOOK_TIMEOUT, run(&http, &hook, &ev)).await;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(worker = %ev.worker, event = ev.event, hook = ?hook, error = %e, "hook failed")
                }
                Err(_) => {
                    tracing::warn!(worker = %ev.worker, event = ev.event, hook = ?hook, "hook timed out")
                }
            }
        });
    }
}

async fn run(http: &reqwest::Client, hook: &Hook, ev: &HookEvent) -> Result<(), String> {
    match hook {
        Hook::Exec(argv) => {
            let env = ev.env();
            let env: Vec<(&str, String)> = env.into_iter().collect();
            let mut child = crate::process::spawn_helper(argv, &env).map_err(|e| e.to_string())?;
            let st = child.wait().await.map_err(|e| e.to_string())?;
            if st.success() { Ok(()) } else { Err(format!("exited with {st}")) }
        }
        Hook::Webhook(url) => {
            // The egress gate: offline mode refuses a non-loopback webhook before connecting.
            let flow = ondevice_egress::begin_url(ondevice_egress::Purpose::Webhook, url).map_err(|e| e.to_string())?;
            let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
            flow.sent(body.len() as u64);
            let resp = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .timeout(HOOK_TIMEOUT)
                .send()
                .await
                .map_err(|e| {
                    // Without the URL: its query may carry a signature.
                    let e = e.without_url().to_string();
                    flow.failed(&e);
                    e
                })?;
            flow.received(resp.content_length().unwrap_or(0));
            if resp.status().is_success() {
                Ok(())
            } else {
                flow.failed(format!("status {}", resp.status()));
                Err(format!("status {}", resp.status()))
            }
        }
    }
}
