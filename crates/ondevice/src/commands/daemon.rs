//! `ondevice daemon start | stop | status`: the background daemon, reached through the pid file
//! and the control socket (no API key needed: the socket is private to the daemon's user).

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ondevice_config::{Overrides, Resolved};
use ondevice_server::control;
use reqwest::Method;

use crate::cli::{DaemonCommand, DaemonStartArgs, DaemonStopArgs, JsonFlag};

/// LSB exit status of `status` for a daemon that is not running.
const NOT_RUNNING: u8 = 3;

pub async fn run(resolved: Resolved, cmd: DaemonCommand, overrides: Overrides) -> anyhow::Result<ExitCode> {
    match cmd {
        DaemonCommand::Start(args) => start(&resolved, &args, &overrides).await,
        DaemonCommand::Stop(args) => stop(&resolved, &args).await,
        DaemonCommand::Status(flag) => status(&resolved, &flag).await,
        DaemonCommand::RestartWorker { name } => restart_worker(&resolved, &name).await,
    }
}

async fn query_status(resolved: &Resolved) -> Option<serde_json::Value> {
    let (code, body) = control::request(&resolved.paths.control_socket(), Method::GET, "/status").await.ok()?;
    if !code.is_success() {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

async fn start(resolved: &Resolved, args: &DaemonStartArgs, overrides: &Overrides) -> anyhow::Result<ExitCode> {
    if let Some(s) = query_status(resolved).await {
        println!(
            "ondevice daemon is already running (pid {}) on {}",
            s["pid"],
            s["listen_address"].as_str().unwrap_or("?")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let home = std::path::absolute(&resolved.paths.home)?;
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let exe = std::env::current_exe().context("cannot find the ondevice executable")?;
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(c) = overrides.config_file.as_ref().or(resolved.config_file.as_ref()) {
        argv.push("--config".into());
        argv.push(std::path::absolute(c)?.into_os_string());
    }
    argv.push("serve".into());
    if let Some(l) = args.listen {
        argv.push("--listen".into());
        argv.push(l.to_string().into());
    }
    let env = vec![(OsString::from(ondevice_config::ENV_HOME), home.clone().into_os_string())];
    let log = home.join("logs").join("daemon.out");
    let pid = ondevice_supervisor::spawn_detached(&exe, &argv, &env, &log)?;
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    loop {
        if let Some(s) = query_status(resolved).await {
            println!("ondevice daemon started (pid {pid}) on {}", s["listen_address"].as_str().unwrap_or("?"));
            println!("logs: {}", log.display());
            return Ok(ExitCode::SUCCESS);
        }
        if !alive(pid) {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the daemon exited during start; last lines of {}:\n{}", log.display(), tail.join("\n"));
        }
        if Instant::now() > deadline {
            bail!("the daemon (pid {pid}) did not become ready within {} s; see {}", args.wait, log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: u32) -> bool {
    ondevice_supervisor::process_alive(pid)
}

async fn stop(resolved: &Resolved, args: &DaemonStopArgs) -> anyhow::Result<ExitCode> {
    let socket = resolved.paths.control_socket();
    let Some(s) = query_status(resolved).await else {
        println!("ondevice daemon is not running");
        return Ok(ExitCode::SUCCESS);
    };
    let pid = s["pid"].as_u64().unwrap_or(0) as u32;
    control::request(&socket, Method::POST, "/shutdown").await?;
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("the daemon (pid {pid}) did not stop within {} s", args.wait);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ondevice daemon stopped (pid {pid})");
    Ok(ExitCode::SUCCESS)
}

async fn status(resolved: &Resolved, flag: &JsonFlag) -> anyhow::Result<ExitCode> {
    let Some(s) = query_status(resolved).await else {
        if flag.json {
            println!("{}", serde_json::json!({"running": false, "home": resolved.paths.home}));
        } else {
            println!("ondevice daemon is not running (home {})", resolved.paths.home.display());
        }
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    if flag.json {
        let mut v = s;
        v["running"] = true.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let uptime = humantime::format_duration(Duration::from_secs(s["uptime_seconds"].as_u64().unwrap_or(0)));
    println!("ondevice {} running (pid {})", s["version"].as_str().unwrap_or("?"), s["pid"]);
    println!("  uptime:  {uptime}");
    println!(
        "  listen:  {}{}",
        s["listen_address"].as_str().unwrap_or("?"),
        if s["tls"] == true { " (tls)" } else { "" }
    );
    println!("  auth:    {}", if s["auth_enabled"] == true { "on" } else { "OFF" });
    println!("  ready:   {}", if s["ready"] == true { "yes" } else { "no" });
    let workers = s["workers"].as_array().cloned().unwrap_or_default();
    if workers.is_empty() {
        println!("  workers: none");
    } else {
        println!("  {:<20} {:<10} {:>8}  {:<20} PROTECTION", "WORKER", "STATE", "RESTARTS", "LAST EXIT");
        for w in workers {
            let exit = match &w["last_exit"] {
                serde_json::Value::Null => "-".to_owned(),
                e if e["oom"] == true => "oom-killed".to_owned(),
                e if !e["signal"].is_null() => format!("signal {}", e["signal"]),
                e => format!("code {}", e["code"]),
            };
            println!(
                "  {:<20} {:<10} {:>8}  {:<20} {}",
                w["name"].as_str().unwrap_or("?"),
                w["state"].as_str().unwrap_or("?"),
                w["restarts"],
                exit,
                protection_summary(&w["protection"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restart_worker(resolved: &Resolved, name: &str) -> anyhow::Result<ExitCode> {
    if name.is_empty() || name.contains(['/', '?', '#', '%']) || name.chars().any(char::is_whitespace) {
        bail!("invalid worker name {name:?}");
    }
    let socket = resolved.paths.control_socket();
    let (code, body) = control::request(&socket, Method::POST, &format!("/workers/{name}/restart"))
        .await
        .context("cannot reach the daemon's control socket: is it running?")?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !code.is_success() {
        bail!("{}", v["error"]["message"].as_str().unwrap_or("restart failed"));
    }
    println!("restarting worker {name} (state {})", v["state"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// `memory_max=cgroup-v1, network=net-namespace, ... (missing: cpu_max)` from a protection report.
fn protection_summary(p: &serde_json::Value) -> String {
    let list = |key: &str, with_mechanism: bool| -> Vec<String> {
        p[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let limit = e["limit"].as_str().unwrap_or("?");
                match e["mechanism"].as_str() {
                    Some(m) if with_mechanism => format!("{limit}={m}"),
                    _ => limit.to_owned(),
                }
            })
            .collect()
    };
    let enforced = list("enforced", true);
    let missing = list("missing", false);
    let mut s = if enforced.is_empty() { "none".to_owned() } else { enforced.join(", ") };
    if !missing.is_empty() {
        s.push_str(&format!(" (missing: {})", missing.join(", ")));
    }
    s
}
