//! The pgvector backend behind the egress gate, in a process of its own (the gate is installed
//! once per process, as the daemon does at start): with offline mode on, a PostgreSQL server
//! over TCP at a non-loopback address is refused before any socket, with the message naming the
//! setting, and the refusal is in the ledger; a loopback server is still reached (and recorded as
//! loopback). A Unix-socket server (the contract suite's pgserver) is not egress at all.

use std::sync::{Arc, Mutex};

use ondevice_egress::{Egress, Ledger, Outcome, Purpose, Record};
use ondevice_vector_pgvector::PgVectorBackend;

#[derive(Default)]
struct Kept(Mutex<Vec<Record>>);

impl Ledger for Kept {
    fn record(&self, record: Record) {
        self.0.lock().unwrap().push(record);
    }
}

#[tokio::test]
async fn offline_mode_refuses_a_remote_postgres_and_records_it() {
    let kept = Arc::new(Kept::default());
    assert!(ondevice_egress::install(Egress::new(true, Some(kept.clone()))));

    // TEST-NET-1: never routed; offline mode must refuse it before trying.
    let err = PgVectorBackend::connect("postgresql://me@192.0.2.10:5433/db", 1).await.unwrap_err().to_string();
    assert!(err.contains("offline mode is on"), "{err}");
    assert!(err.contains("192.0.2.10:5433"), "{err}");

    // Loopback is reachable in offline mode: a listener that closes at once makes the connection
    // fail, but only after it was made.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    let err = PgVectorBackend::connect(&format!("host=127.0.0.1 port={port} user=me dbname=db"), 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("offline mode"), "{err}");
    accept.await.unwrap().expect("the loopback server saw the connection");

    let records = kept.0.lock().unwrap().clone();
    let blocked: Vec<_> = records.iter().filter(|r| r.outcome == Outcome::Blocked).collect();
    assert_eq!(blocked.len(), 1, "{records:?}");
    assert_eq!(
        (blocked[0].purpose, blocked[0].host.as_str(), blocked[0].port),
        (Purpose::VectorStore, "192.0.2.10", 5433)
    );
    let local: Vec<_> = records.iter().filter(|r| r.loopback).collect();
    assert_eq!(local.len(), 1, "{records:?}");
    assert_eq!((local[0].purpose, local[0].outcome), (Purpose::VectorStore, Outcome::Error), "{records:?}");
}
