//! `ondevice diag bundle | doctor | crashes | egress`: a redacted support bundle, checks with their
//! fixes, the crash reports of the daemon and its workers, and the egress ledger.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ondevice_config::Resolved;
use ondevice_diagnostics::CrashStore;
use ondevice_diagnostics::doctor::{self, Check, CheckStatus};
use reqwest::Method;

use crate::cli::DiagCommand;
use crate::commands::client::Client;
use crate::diagnostics::{DaemonData, assemble, default_output, jobs_summary};

pub async fn run(resolved: Resolved, cmd: DiagCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DiagCommand::Bundle { output, json } => bundle(resolved, output, json).await,
        DiagCommand::Doctor(flag) => doctor(resolved, flag.json).await,
        DiagCommand::Crashes(flag) => crashes(&resolved, flag.json),
        DiagCommand::Egress { limit, json } => egress(&resolved, limit, json),
    }
}

fn egress(resolved: &Resolved, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let v = crate::egress::ledger_json(resolved, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = v["connections"].as_array().cloned().unwrap_or_default();
    println!(
        "offline mode: {}",
        if resolved.settings.network.offline { "on (non-loopback connections are refused)" } else { "off" }
    );
    if rows.is_empty() {
        println!("no outbound connections recorded");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<9} {:<8} {:<40} {:>10} {:>10}", "WHEN", "PURPOSE", "OUTCOME", "HOST:PORT", "SENT", "RECEIVED");
    for r in &rows {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(r["at"].as_i64().unwrap_or(0).max(0) as u64),
        );
        let host = format!(
            "{}:{}{}",
            r["host"].as_str().unwrap_or(""),
            r["port"],
            if r["loopback"] == true { " (loopback)" } else { "" }
        );
        println!(
            "{:<20} {:<9} {:<8} {:<40} {:>10} {:>10}",
            when.to_string(),
            r["purpose"].as_str().unwrap_or(""),
            r["outcome"].as_str().unwrap_or(""),
            host,
            r["sent_bytes"],
            r["received_bytes"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn bundle(resolved: Resolved, output: Option<std::path::PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let out = output.unwrap_or_else(default_output);
    if !json {
        eprintln!("collecting diagnostics ...");
    }
    let daemon = daemon_data(&resolved).await;
    let target = out.clone();
    let summary = tokio::task::spawn_blocking(move || assemble(&resolved, daemon, &target))
        .await
        .context("the bundle task failed")??;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {} ({} bytes, {} files, {} redactions, sha256 {})",
            out.display(),
            summary.size,
            summary.files,
            summary.redactions,
            summary.sha256
        );
        println!("its manifest.json lists every file and what was redacted: review it before sharing");
    }
    Ok(ExitCode::SUCCESS)
}

/// Status, metrics and jobs from the running daemon, if one answers within a few seconds.
async fn daemon_data(resolved: &Resolved) -> DaemonData {
    let client = match Client::new(resolved) {
        Ok(c) => c,
        Err(e) => return DaemonData { missing: Some(format!("no daemon: {e}")), ..DaemonData::default() },
    };
    let limit = Duration::from_secs(10);
    let status =
        tokio::time::timeout(limit, client.call::<serde_json::Value>(Method::GET, "/api/v1/status", None)).await;
    let status = match status {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return DaemonData { missing: Some(format!("no daemon: {e:#}")), ..DaemonData::default() },
        Err(_) => {
            return DaemonData {
                missing: Some("the daemon did not answer within 10 s".into()),
                ..DaemonData::default()
            };
        }
    };
    let metrics = match tokio::time::timeout(limit, client.get_stream("/metrics")).await {
        Ok(Ok(r)) => r.text().await.ok(),
        _ => None,
    };
    let jobs =
        match tokio::time::timeout(limit, client.call::<serde_json::Value>(Method::GET, "/api/v1/jobs", None)).await {
            Ok(Ok(j)) => Some(jobs_summary(&j)),
            _ => None,
        };
    DaemonData { status: Some(status), metrics, jobs, missing: None }
}

async fn doctor(resolved: Resolved, json: bool) -> anyhow::Result<ExitCode> {
    let daemon = daemon_data(&resolved).await;
    let runtimes = match daemon.status.is_some() {
        true => daemon_runtimes(&resolved).await,
        false => None,
    };
    let listen = resolved.settings.server.listen.0;
    let checks = checks(&resolved, daemon.status.as_ref(), listen, daemon.status.is_some(), runtimes).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "checks": checks }))?);
    } else {
        print!("{}", doctor::render(&checks));
    }
    let failed = checks.iter().any(|c| c.status == CheckStatus::Fail);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Every doctor check, given what the daemon reported (`status`: `GET /api/v1/status`;
/// `runtimes`: `GET /api/v1/runtimes`): shared by `ondevice diag doctor` and the daemon's
/// `GET /api/v1/diagnostics/doctor` (which passes its own views, in process).
pub async fn checks(
    resolved: &Resolved,
    status: Option<&serde_json::Value>,
    listen: std::net::SocketAddr,
    daemon_running: bool,
    runtimes: Option<serde_json::Value>,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = vec![cpu_check()];
    checks.push(sandbox_check(status));
    let home = resolved.paths.home.clone();
    checks.push(doctor::disk_space(&home));
    checks.push(doctor::listen_port(listen, daemon_running));
    checks.extend(doctor::permissions(&home, &resolved.paths.bootstrap_token()));
    let r2 = resolved.clone();
    checks.push(tokio::task::spawn_blocking(move || models_check(&r2)).await.context("the models check failed")?);
    checks.push(runtimes_check(daemon_running, runtimes));
    checks.push(doctor::clock(&home));
    Ok(checks)
}

/// The engine build the daemon would start for this CPU, and whether the CPU runs it.
fn cpu_check() -> Check {
    use crate::cpu;
    const NAME: &str = "cpu features";
    let Ok(exe) = std::env::current_exe() else { return Check::skip(NAME, "the program's own path is unknown") };
    let (own, host) = (cpu::own_level(), cpu::host_level());
    let chosen = cpu::choose_worker(&exe, own, host, &cpu::search_dirs(&exe));
    let features = ondevice_diagnostics::system::cpu_features().join(" ");
    match chosen.level {
        None => Check::ok(NAME, format!("engine build {} (not levelled); CPU: {features}", cpu::own_build())),
        Some(level) => {
            let missing = level.missing_on_host();
            if !missing.is_empty() {
                Check::problem(
                    NAME,
                    CheckStatus::Fail,
                    format!("the engine build ({}) needs {} which this CPU lacks", level.name(), missing.join(", ")),
                    format!(
                        "install the package's {} worker build beside ondevice, or use an external runtime ([runtimes.NAME])",
                        cpu::variant_file(cpu::Level::V2)
                    ),
                )
            } else if host.is_some_and(|h| h > level) {
                Check::problem(
                    NAME,
                    CheckStatus::Warn,
                    format!(
                        "workers run the {} build; this CPU could run {} ({})",
                        level.name(),
                        host.map_or("", |h| h.name()),
                        features
                    ),
                    format!(
                        "for faster kernels install {} beside ondevice",
                        host.map(cpu::variant_file).unwrap_or_default()
                    ),
                )
            } else {
                Check::ok(NAME, format!("workers run the {} build, which this CPU supports", level.name()))
            }
        }
    }
}

/// The sandbox layers in effect (the daemon's view when it runs, else this host's).
fn sandbox_check(status: Option<&serde_json::Value>) -> Check {
    const NAME: &str = "sandbox";
    let caps = match status.and_then(|s| s.get("sandbox")).filter(|s| !s.is_null()) {
        Some(s) => s.clone(),
        None => serde_json::to_value(ondevice_sandbox::detect()).unwrap_or_default(),
    };
    let on = |k: &str| caps.get(k).is_some_and(|v| v.as_bool().unwrap_or(!v.is_null()));
    let layers: Vec<&str> = [
        ("cgroup_writable", "cgroups (memory, pids, cpu limits)"),
        ("rlimits", "rlimits"),
        ("landlock_abi", "landlock (files)"),
        ("seccomp", "seccomp"),
        ("net_namespace", "network namespace"),
        ("job_objects", "job objects"),
    ]
    .into_iter()
    .filter(|(k, _)| on(k))
    .map(|(_, n)| n)
    .collect();
    let detail = if layers.is_empty() { "no isolation layer available".to_owned() } else { layers.join(", ") };
    if cfg!(target_os = "linux") && !on("cgroup_writable") {
        return Check::problem(
            NAME,
            CheckStatus::Warn,
            format!("{detail}; memory and process limits are not enforced"),
            "run the daemon as the packaged systemd service (Delegate=yes) or as root so workers get cgroup limits",
        );
    }
    if layers.is_empty() {
        return Check::problem(
            NAME,
            CheckStatus::Warn,
            detail,
            "workers run unconfined on this host: see docs/sandbox.md",
        );
    }
    Check::ok(NAME, detail)
}

/// Re-hashes every model's files (`ondevice models verify`).
fn models_check(resolved: &Resolved) -> Check {
    const NAME: &str = "models";
    let db = resolved.paths.database();
    if !db.is_file() {
        return Check::skip(NAME, "no registry yet");
    }
    let reg = match ondevice_store::Store::open(&db)
        .map_err(anyhow::Error::from)
        .and_then(|s| Ok(ondevice_registry::Registry::new(std::sync::Arc::new(s), &resolved.paths.home)?))
    {
        Ok(r) => r,
        Err(e) => {
            return Check::problem(
                NAME,
                CheckStatus::Fail,
                format!("the registry cannot be opened: {e:#}"),
                "see the error; `ondevice diag bundle` collects details",
            );
        }
    };
    match reg.verify(None) {
        Ok(reports) => {
            let bad: Vec<String> = reports
                .iter()
                .filter(|r| r.status != ondevice_registry::VerifyStatus::Ok)
                .map(|r| format!("{} ({:?})", r.model, r.status))
                .collect();
            if bad.is_empty() {
                Check::ok(NAME, format!("{} models verified", reports.len()))
            } else {
                Check::problem(
                    NAME,
                    CheckStatus::Fail,
                    format!("{} of {} models failed: {}", bad.len(), reports.len(), bad.join(", ")),
                    "remove and pull or import them again (`ondevice models rm NAME`, `ondevice models pull NAME`)",
                )
            }
        }
        Err(e) => Check::problem(NAME, CheckStatus::Fail, e.to_string(), "see `ondevice models verify`"),
    }
}

/// `GET /api/v1/runtimes` of the running daemon, if it answers within 10 s.
async fn daemon_runtimes(resolved: &Resolved) -> Option<serde_json::Value> {
    let client = Client::new(resolved).ok()?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.call::<serde_json::Value>(Method::GET, "/api/v1/runtimes", None),
    )
    .await;
    answer.ok()?.ok()
}

/// The daemon's runtimes: healthy and circuits closed.
fn runtimes_check(daemon: bool, answer: Option<serde_json::Value>) -> Check {
    const NAME: &str = "runtimes";
    if !daemon {
        return Check::skip(NAME, "no daemon running: start it to check its runtimes");
    }
    let Some(v) = answer else { return Check::skip(NAME, "the daemon did not report its runtimes") };
    let runtimes = v["runtimes"].as_array().cloned().unwrap_or_default();
    let bad: Vec<String> = runtimes
        .iter()
        .filter(|r| r["health"] == "unhealthy" || r["circuit"] == "open")
        .map(|r| {
            format!(
                "{} ({}, circuit {})",
                r["name"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("unhealthy"),
                r["circuit"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if bad.is_empty() {
        Check::ok(NAME, format!("{} runtimes healthy", runtimes.len()))
    } else {
        Check::problem(
            NAME,
            CheckStatus::Warn,
            format!("unhealthy: {}", bad.join(", ")),
            "check the runtime's URL and that its server runs ([runtimes.NAME] in the config)",
        )
    }
}

fn crashes(resolved: &Resolved, json: bool) -> anyhow::Result<ExitCode> {
    let reports = CrashStore::new(&resolved.paths.home).list();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "crashes": reports }))?);
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        println!("no crash reports");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<17} {:<20} {:<8} SUMMARY", "ID", "WHEN", "PROCESS");
    for r in &reports {
        let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(r.at.max(0) as u64));
        println!("{:<17} {:<20} {:<8} {}", r.id, when.to_string(), r.process, r.summary());
    }
    println!(
        "reports in {} (kept: the newest {})",
        CrashStore::new(&resolved.paths.home).dir().display(),
        CrashStore::MAX_REPORTS
    );
    Ok(ExitCode::SUCCESS)
}

/// The daemon's [`InspectService`](ondevice_diagnostics::inspect::InspectService): the same
/// doctor checks as `ondevice diag doctor` and the same telemetry views as `ondevice telemetry
/// status|preview`, computed in process (the daemon is running, so it listens on `listen`).
pub struct DaemonInspect {
    resolved: Resolved,
    store: Arc<ondevice_store::Store>,
    listen: std::net::SocketAddr,
    state: std::sync::OnceLock<ondevice_server::AppState>,
}

impl DaemonInspect {
    /// The views of this daemon's home and config, listening on `listen`.
    pub fn new(resolved: Resolved, store: Arc<ondevice_store::Store>, listen: std::net::SocketAddr) -> Arc<Self> {
        Arc::new(DaemonInspect { resolved, store, listen, state: std::sync::OnceLock::new() })
    }

    /// Sets the edge state once it exists (its status and runtimes feed the checks).
    pub fn attach(&self, state: ondevice_server::AppState) {
        let _ = self.state.set(state);
    }
}

impl ondevice_diagnostics::inspect::InspectService for DaemonInspect {
    fn doctor(
        &self,
    ) -> ondevice_jobs::BoxFuture<'_, Result<Vec<ondevice_diagnostics::Check>, ondevice_diagnostics::DiagError>> {
        Box::pin(async move {
            let status = self.state.get().and_then(|s| serde_json::to_value(s.status()).ok());
            let runtimes = match self.state.get().and_then(|s| s.inference().cloned()) {
                Some(inference) => {
                    let list: Vec<ondevice_server::routes::runtimes::RuntimeView> =
                        inference.runtimes().await.into_iter().map(Into::into).collect();
                    Some(serde_json::json!({ "runtimes": list }))
                }
                None => None,
            };
            checks(&self.resolved, status.as_ref(), self.listen, true, runtimes)
                .await
                .map_err(|e| ondevice_diagnostics::DiagError::Checks(format!("{e:#}")))
        })
    }

    fn telemetry_status(
        &self,
    ) -> ondevice_jobs::BoxFuture<'_, Result<ondevice_diagnostics::telemetry::Status, ondevice_diagnostics::DiagError>>
    {
        Box::pin(async move { Ok(super::telemetry::status_of(&self.resolved, &self.store)?.0) })
    }

    fn telemetry_preview(
        &self,
    ) -> ondevice_jobs::BoxFuture<'_, Result<ondevice_diagnostics::telemetry::Preview, ondevice_diagnostics::DiagError>>
    {
        Box::pin(
            async move { Ok(ondevice_diagnostics::telemetry::preview(&self.store, &super::telemetry::machine())?) },
        )
    }
}
