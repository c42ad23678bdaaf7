//! Supervised workers seen through the real daemon: `[workers.NAME]` in config, status in
//! `ondevice daemon status --json` and `/api/v1/status`, readiness gating `/readyz`, restart hooks,
//! the circuit and `restart-worker`, and a memory hog killed by the sandbox while the daemon
//! keeps answering.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Daemon, Home};

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
async fn eventually<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn worker<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .unwrap_or_else(|| panic!("no worker {name} in {status}"))
}

fn cli_status(home: &Home) -> Value {
    let out = home.run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "daemon status failed: {}", crate::common::describe(&out));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

#[tokio::test]
async fn readiness_gates_readyz_and_status_shows_workers() {
    let home = Home::new();
    let flag = home.root().join("ready-flag");
    let config = format!(
        r#"
[workers.gate]
command = ["sleep", "600"]
required = true
readiness = {{ exec = ["test", "-f", "{}"], period_s = 0.2, failure_threshold = 1 }}
"#,
        flag.display()
    );
    std::fs::write(home.config(), config).unwrap();
    let daemon = Daemon::start(home);

    let (code, body) = daemon.get("/readyz", None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, serde_json::json!({"status": "not_ready"}), "no details without a key");
    let s = eventually(Duration::from_secs(10), "the worker to be spawned", async || {
        let s = cli_status(daemon.home());
        (worker(&s, "gate")["state"] == "running").then_some(s)
    })
    .await;
    assert_eq!(s["running"], true);
    assert_eq!(daemon.get("/readyz", None).await.0, StatusCode::SERVICE_UNAVAILABLE, "running is not ready");
    let w = worker(&s, "gate");
    assert_eq!(w["ready"], false);
    assert_eq!(w["required"], true);
    assert!(w["protection"]["enforced"].is_array(), "protection is reported: {w}");
    assert!(s["sandbox"].is_object(), "host sandbox detection is reported: {s}");

    std::fs::write(&flag, "").unwrap();
    eventually(Duration::from_secs(15), "/readyz to turn ready", async || {
        (daemon.get("/readyz", None).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let key = daemon.key(&["read"]).await;
    let (code, status) = daemon.get("/api/v1/status", Some(&key.secret)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(worker(&status, "gate")["state"], "ready");
    let metrics =
        daemon.request(Method::GET, "/metrics", Some(&key.secret)).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"ondevice_worker_ready{worker="gate"} 1"#,
        r#"ondevice_worker_state{worker="gate",state="ready"} 1"#,
        r#"ondevice_worker_state{worker="gate",state="failed"} 0"#,
        r#"ondevice_worker_restarts_total{worker="gate"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from /metrics:\n{metrics}");
    }
    let failures = metrics
        .lines()
        .find(|l| l.starts_with(r#"ondevice_worker_probe_failures_total{worker="gate",probe="readiness"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("readiness probe failures exported");
    assert!(failures >= 1, "the probe failed before the flag existed");
    assert!(metrics.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
}

#[tokio::test]
async fn crash_loop_fires_hooks_opens_the_circuit_and_restart_worker_resets_it() {
    let home = Home::new();
    let hook_log = home.root().join("hooks.log");
    let config = format!(
        r#"
[workers.crasher]
command = ["sh", "-c", "exit 7"]
backoff = {{ initial_ms = 50, max_ms = 200, factor = 2.0 }}
max_restarts = {{ count = 2, within_s = 60 }}
hooks = {{ on_exit = [{{ exec = ["sh", "-c", "echo exit=$ONDEVICE_EXIT_CODE >> {log}"] }}], on_give_up = [{{ exec = ["sh", "-c", "echo gave-up >> {log}"] }}] }}
"#,
        log = hook_log.display()
    );
    std::fs::write(home.config(), config).unwrap();
    let daemon = Daemon::start(home);

    let failed = eventually(Duration::from_secs(20), "the circuit to open", async || {
        let s = cli_status(daemon.home());
        let w = worker(&s, "crasher").clone();
        (w["state"] == "failed").then_some(w)
    })
    .await;
    assert_eq!(failed["last_exit"]["code"], 7);
    assert_eq!(failed["restarts"], 2);
    let hooks = eventually(Duration::from_secs(10), "the give-up hook", async || {
        let log = std::fs::read_to_string(&hook_log).unwrap_or_default();
        log.contains("gave-up").then_some(log)
    })
    .await;
    assert!(hooks.lines().filter(|l| *l == "exit=7").count() >= 3, "{hooks}");
    // The daemon stays healthy while its worker is given up.
    assert_eq!(daemon.get("/healthz", None).await.0, StatusCode::OK);

    let out = daemon.home().run(&["daemon", "restart-worker", "crasher"]);
    assert!(out.status.success(), "{}", crate::common::describe(&out));
    eventually(Duration::from_secs(20), "restarts to grow past the old circuit", async || {
        let w = worker(&cli_status(daemon.home()), "crasher").clone();
        (w["restarts"].as_u64() > Some(2)).then_some(())
    })
    .await;
    let out = daemon.home().run(&["daemon", "restart-worker", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker named nope"), "{}", crate::common::describe(&out));

    // The same over HTTP needs the admin scope.
    let read = daemon.key(&["read"]).await;
    let r = daemon.request(Method::POST, "/api/v1/workers/crasher/restart", Some(&read.secret)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        daemon.request(Method::POST, "/api/v1/workers/crasher/restart", Some(daemon.admin_key())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn memory_hog_is_killed_and_reported_as_oom_while_the_daemon_answers() {
    let config = r#"
[workers.hog]
command = ["python3", "-c", "import time\nb = []\nfor _ in range(64):\n    b.append(bytearray(8 << 20))\n    time.sleep(0.01)\ntime.sleep(60)"]
restart = "never"
sandbox = { mode = "on", memory_max = "64MiB" }
"#;
    let daemon = Daemon::with_config(config);
    let exit = eventually(Duration::from_secs(30), "the hog to be OOM-killed", async || {
        assert_eq!(daemon.get("/healthz", None).await.0, StatusCode::OK, "the daemon answers throughout");
        let w = worker(&cli_status(daemon.home()), "hog").clone();
        (!w["last_exit"].is_null()).then(|| w["last_exit"].clone())
    })
    .await;
    assert_eq!(exit["oom"], true, "{exit}");
    assert_eq!(exit["signal"], 9, "{exit}");
    let s = cli_status(daemon.home());
    let enforced = worker(&s, "hog")["protection"]["enforced"].to_string();
    assert!(enforced.contains("memory_max"), "{enforced}");
}
