//! `ondevice telemetry status | enable | disable | preview | rotate-id`: the opt-in usage report.
//! Works on the home's store directly (no daemon needed); a running daemon's uploader reads the
//! consent at its next tick.

use std::process::ExitCode;
use std::sync::Arc;

use ondevice_config::Resolved;
use ondevice_diagnostics::telemetry::{self, Machine, Sink, State, Usage};
use ondevice_store::{Store, StoreError};

use crate::cli::TelemetryCommand;

fn open(resolved: &Resolved) -> anyhow::Result<Arc<Store>> {
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(&resolved.paths.home)?;
    Ok(Arc::new(Store::open(&resolved.paths.database())?))
}

/// This machine, as the report describes it.
pub fn machine() -> Machine {
    Machine::detect(env!("CARGO_PKG_VERSION"), crate::cpu::own_build())
}

/// Telemetry's status for this home and config (`status --json`, `GET /api/v1/telemetry`).
pub fn status_of(resolved: &Resolved, store: &Store) -> Result<(telemetry::Status, telemetry::Consent), StoreError> {
    let sink = Sink::from_endpoint(&resolved.settings.telemetry.endpoint, &resolved.paths.home);
    telemetry::status(store, &sink, resolved.settings.telemetry.interval_s, resolved.settings.network.offline)
}

pub fn run(resolved: Resolved, cmd: TelemetryCommand) -> anyhow::Result<ExitCode> {
    let store = open(&resolved)?;
    let sink = Sink::from_endpoint(&resolved.settings.telemetry.endpoint, &resolved.paths.home);
    match cmd {
        TelemetryCommand::Status(flag) => {
            let (status, c) = status_of(&resolved, &store)?;
            if flag.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let (st, veto, pending) = (status.state, status.disabled_by, status.pending);
                let line = match st {
                    State::On => "on: a usage report is sent".to_owned(),
                    State::Off => {
                        "off (the default): nothing is sent; `ondevice telemetry enable` turns it on".to_owned()
                    }
                    State::Stale => format!(
                        "off: consent was given for report version {}, the report is now version {}; review `ondevice telemetry preview`, then `ondevice telemetry enable`",
                        c.version,
                        telemetry::REPORT_VERSION
                    ),
                    State::DisabledByEnvironment => {
                        format!("off: {} is set, which wins over consent", veto.unwrap_or("the environment"))
                    }
                };
                println!("telemetry: {line}");
                println!("endpoint: {} (every {} s)", sink.describe(), resolved.settings.telemetry.interval_s);
                if let Some(id) = &c.install_id {
                    println!("install id: {id} (random; `ondevice telemetry rotate-id` replaces it)");
                }
                println!("queued events: {pending}");
            }
        }
        TelemetryCommand::Enable => {
            let c = telemetry::enable(&store)?;
            println!(
                "telemetry enabled for report version {} (install id {}); `ondevice telemetry preview` shows exactly what is sent",
                c.version,
                c.install_id.unwrap_or_default()
            );
            if let Some(v) = telemetry::process_env_veto() {
                println!("note: {v} is set in this environment; a daemon started with it sends nothing");
            }
        }
        TelemetryCommand::Disable => {
            let dropped = telemetry::disable(&store)?;
            println!("telemetry disabled; {dropped} queued events dropped");
        }
        TelemetryCommand::RotateId => {
            let id = telemetry::rotate_id(&store)?;
            println!("new install id {id}; queued events dropped");
        }
        TelemetryCommand::Preview(flag) => {
            let p = telemetry::preview(&store, &machine())?;
            let (queued, next) = (&p.queued_bytes, &p.next_bytes);
            if flag.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                if !queued.is_empty() {
                    println!("# queued, sent byte for byte as below (one event per line):");
                    for q in queued {
                        println!("{q}");
                    }
                }
                println!(
                    "# the next report, byte for byte (its event_id is drawn when it is made; request counts are the daemon's since the previous report):"
                );
                println!("{next}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts the daemon's telemetry uploader (it makes and sends nothing unless telemetry is on).
pub fn spawn_uploader(
    resolved: &Resolved,
    store: Arc<Store>,
    state: &ondevice_server::AppState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let metrics = state.metrics().clone();
    let models_store = store.clone();
    let usage = Arc::new(move || {
        let (requests, client_errors, server_errors) = metrics.request_totals();
        let models = models_store.list_models().map(|m| m.len() as u64).unwrap_or(0);
        Usage { requests, client_errors, server_errors, models }
    });
    let veto = telemetry::process_env_veto();
    if let Some(v) = veto {
        tracing::info!("telemetry is off: {v} is set");
    }
    let uploader = telemetry::Uploader {
        store,
        sink: Sink::from_endpoint(&resolved.settings.telemetry.endpoint, &resolved.paths.home),
        interval_s: resolved.settings.telemetry.interval_s,
        machine: machine(),
        usage,
        veto,
    };
    tokio::spawn(telemetry::run_uploader(uploader, async move { shutdown.cancelled().await }));
}
