//! The pgvector backend against a real PostgreSQL 16 + pgvector, started by the test from the
//! PyPI `pgserver` package (pinned in scripts/test.sh) on a Unix socket in a temp dir, and stopped
//! when the test ends. Runs the same contract suite as the embedded backend, and recall@10.
//!
//! Without `pgserver` installed the tests skip with a note, except under CI (`CI` set), where
//! they fail.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};

use ondevice_vector::{Distance, Filter, VectorBackend, VectorQuery, testing};
use ondevice_vector_pgvector::PgVectorBackend;

/// Starts PostgreSQL through pgserver; the server stops when the helper's stdin closes.
struct PgServer {
    child: Child,
    conninfo: String,
    _dir: tempfile::TempDir,
}

const HELPER: &str = r#"
import sys, pgserver
srv = pgserver.get_server(sys.argv[1], cleanup_mode="delete")
info = srv.get_postmaster_info()
print("SOCKET", info.socket_dir, info.port, flush=True)
sys.stdin.read()
"#;

impl PgServer {
    fn start() -> Option<PgServer> {
        #[allow(clippy::disallowed_methods)] // the test's own PostgreSQL, a real peer
        let probe = std::process::Command::new("python3").args(["-c", "import pgserver"]).output();
        if !probe.map(|o| o.status.success()).unwrap_or(false) {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 -m pip install pgserver==0.1.4 (scripts/test.sh does) to run the pgvector tests"
            );
            eprintln!("note: pgserver is not installed (pip install pgserver==0.1.4); skipping the pgvector test");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pgdata");
        #[allow(clippy::disallowed_methods)]
        let mut child = std::process::Command::new("python3")
            .args(["-c", HELPER, data.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("SOCKET"), "pgserver did not start: {line:?}");
        let socket = parts.next().unwrap().to_owned();
        let port = parts.next().unwrap().to_owned();
        let conninfo = format!("host={socket} port={port} user=postgres dbname=postgres");
        Some(PgServer { child, conninfo, _dir: dir })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Closing stdin lets the helper exit, and pgserver stops the server and deletes its data.
        drop(self.child.stdin.take().map(|mut s| s.flush()));
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_and_recall_against_real_postgres() {
    let Some(server) = PgServer::start() else { return };
    // A server without TLS and sslmode=require: refused, never plain text.
    let e = PgVectorBackend::connect(&format!("{} sslmode=require", server.conninfo), 1).await.unwrap_err();
    println!("sslmode=require without TLS: {e}");
    let backend = PgVectorBackend::connect(&server.conninfo, 2).await.unwrap();
    testing::run_contract(&backend).await;

    // A second connection set sees the same collections (the schema setup is idempotent).
    let again = PgVectorBackend::connect(&server.conninfo, 1).await.unwrap();
    testing::check_collections(&again).await;

    let n: usize = std::env::var("ONDEVICE_VECTOR_RECALL_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let started = std::time::Instant::now();
    let recall = testing::recall_at_10(&backend, "recall", n, 384, 200).await;
    println!("pgvector: recall@10 = {recall:.4} on {n} x 384 ({:.1} s)", started.elapsed().as_secs_f64());
    assert!(recall >= 0.95, "recall@10 {recall} < 0.95 on {n} x 384");

    // The recall is the HNSW index's: a query shaped as the backend's (nearest chunks joined to
    // their documents) is planned as a scan of that index, not as an exact scan and sort.
    let (client, conn) = tokio_postgres::connect(&server.conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let id: i64 =
        client.query_one("SELECT id FROM ondevice_collections WHERE name = 'recall'", &[]).await.unwrap().get(0);
    let probe = format!("[{}]", vec!["0.5"; 384].join(","));
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN SELECT d.doc_id FROM ondevice_chunks_{id} c JOIN ondevice_documents d
                 ON d.collection_id = {id} AND d.doc_id = c.doc_id
                 ORDER BY c.embedding <=> '{probe}'::vector LIMIT 10"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains(&format!("ondevice_chunks_{id}_hnsw"))), "{}", plan.join("\n"));
}

/// A failure on the server reaches the user with PostgreSQL's own message and SQLSTATE, not
/// tokio-postgres's bare "db error", and the backend keeps working after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_carry_the_postgresql_message() {
    let Some(server) = PgServer::start() else { return };
    let backend = PgVectorBackend::connect(&server.conninfo, 1).await.unwrap();
    backend.create_collection(&testing::spec("errors", 4, Distance::Cosine)).await.unwrap();

    // PostgreSQL's text cannot hold a NUL character: the server refuses the COPY.
    let mut doc = testing::docs_for(&[vec![1.0, 0.0, 0.0, 0.0]], 0, 1).remove(0);
    doc.chunks[0].text = "a NUL \0 inside".into();
    let e = backend.upsert("errors", vec![doc.clone()]).await.unwrap_err().to_string();
    println!("NUL in a chunk's text: {e}");
    assert!(e.contains("postgresql error 22021") && e.contains("0x00"), "{e}");
    assert!(!e.contains("db error"), "{e}");

    // The chunks table dropped behind the backend's back: the query fails in the server's words.
    let (client, conn) = tokio_postgres::connect(&server.conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let id: i64 =
        client.query_one("SELECT id FROM ondevice_collections WHERE name = 'errors'", &[]).await.unwrap().get(0);
    client.batch_execute(&format!("DROP TABLE ondevice_chunks_{id}")).await.unwrap();
    let query = VectorQuery { vector: vec![1.0, 0.0, 0.0, 0.0], k: 1, filter: Filter::default() };
    let e = backend.query("errors", &query).await.unwrap_err().to_string();
    println!("a missing chunks table: {e}");
    assert!(
        e.contains("postgresql error 42P01") && e.contains(&format!("\"ondevice_chunks_{id}\" does not exist")),
        "{e}"
    );

    // The failed transactions were rolled back: the same connection serves the next request.
    backend.create_collection(&testing::spec("after", 4, Distance::Cosine)).await.unwrap();
    doc.chunks[0].text = "no NUL".into();
    backend.upsert("after", vec![doc]).await.unwrap();
    assert_eq!(backend.query("after", &query).await.unwrap()[0].text, "no NUL");
}
