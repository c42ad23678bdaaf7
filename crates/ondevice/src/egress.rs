//! The daemon's egress ledger: installs the process's [`ondevice_egress::Egress`] gate with
//! `[network] offline` and a [`Ledger`] that writes every record to the store's `egress` table
//! from one background thread (recording never blocks a request), and reads the ledger back for
//! `ondevice diag egress` and diagnostics bundles.

use std::sync::Arc;
use std::sync::mpsc;

use ondevice_egress::{Egress, Ledger, Record};
use ondevice_store::{EgressRow, Store};

/// Records go to a writer thread; beyond this many waiting, new ones are dropped (and counted in
/// the log) rather than growing memory.
const QUEUE: usize = 4096;

struct StoreLedger {
    tx: mpsc::SyncSender<Record>,
}

impl Ledger for StoreLedger {
    fn record(&self, record: Record) {
        if let Err(mpsc::TrySendError::Full(r)) = self.tx.try_send(record) {
            tracing::warn!(purpose = %r.purpose, host = %r.host, "egress ledger queue full: one record dropped");
        }
    }
}

/// Installs the gate for this process: offline mode as configured, records into `store`.
pub fn install(store: Arc<Store>, offline: bool) {
    let (tx, rx) = mpsc::sync_channel::<Record>(QUEUE);
    let spawned = std::thread::Builder::new().name("ondevice-egress".into()).spawn(move || {
        for r in rx {
            if let Err(e) = store.record_egress(&row(&r)) {
                tracing::warn!(error = %e, "cannot record an outbound connection");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the egress ledger; outbound connections are not recorded");
    }
    ondevice_egress::install(Egress::new(offline, Some(Arc::new(StoreLedger { tx }))));
    if offline {
        tracing::info!("offline mode: no connection to a non-loopback address will be made ([network] offline)");
    }
}

fn row(r: &Record) -> EgressRow {
    EgressRow {
        seq: 0,
        at: r.at,
        purpose: r.purpose.as_str().to_owned(),
        host: r.host.clone(),
        port: r.port,
        loopback: r.loopback,
        outcome: r.outcome.as_str().to_owned(),
        sent: r.sent,
        received: r.received,
        duration_ms: r.duration_ms,
        error: r.error.clone(),
    }
}

/// A ledger row as JSON (`diag egress --json`, the bundle's `egress.json`, the HTTP route).
pub fn row_json(r: &EgressRow) -> serde_json::Value {
    serde_json::json!({
        "seq": r.seq,
        "at": r.at,
        "purpose": r.purpose,
        "host": r.host,
        "port": r.port,
        "loopback": r.loopback,
        "outcome": r.outcome,
        "sent_bytes": r.sent,
        "received_bytes": r.received,
        "duration_ms": r.duration_ms,
        "error": r.error,
    })
}

/// The newest `limit` rows of the home's ledger as `{"offline": .., "connections": [...]}`.
pub fn ledger_json(resolved: &ondevice_config::Resolved, limit: usize) -> anyhow::Result<serde_json::Value> {
    let db = resolved.paths.database();
    let rows = if db.is_file() { Store::open(&db)?.list_egress(limit, None)? } else { Vec::new() };
    Ok(serde_json::json!({
        "offline": resolved.settings.network.offline,
        "connections": rows.iter().map(row_json).collect::<Vec<_>>(),
    }))
}
