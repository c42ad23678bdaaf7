//! The embedded backend on a real SQLite file in a temp dir: the shared contract suite, recall
//! against exact search, acknowledged writes surviving `kill -9`, and index files that are behind,
//! damaged or missing detected and brought back at open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ondevice_store::Store;
use ondevice_vector::testing::{self, clustered_vectors, docs_for, spec};
use ondevice_vector::{Distance, Filter, VectorBackend, VectorQuery};
use ondevice_vector_embedded::{EmbeddedBackend, IndexOpen};

fn open(home: &Path) -> EmbeddedBackend {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    EmbeddedBackend::open(store, &home.join("vectors")).unwrap()
}

fn query(v: &[f32], k: usize) -> VectorQuery {
    VectorQuery { vector: v.to_vec(), k, filter: Filter::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract() {
    let home = tempfile::tempdir().unwrap();
    testing::run_contract(&open(home.path())).await;
}

/// Recall@10 against exact search on clustered 384-dimensional vectors. 10k always; CI sets
/// `ONDEVICE_VECTOR_RECALL_N=100000` for the full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_at_10_against_exact_search() {
    let n: usize = std::env::var("ONDEVICE_VECTOR_RECALL_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let home = tempfile::tempdir().unwrap();
    let backend = open(home.path());
    let started = std::time::Instant::now();
    let recall = testing::recall_at_10(&backend, "recall", n, 384, 200).await;
    println!(
        "embedded: recall@10 = {recall:.4} on {n} x 384 ({:.1} s including exact search)",
        started.elapsed().as_secs_f64()
    );
    assert!(recall >= 0.95, "recall@10 {recall} < 0.95 on {n} x 384");
}

const CHILD_ENV: &str = "ONDEVICE_VECTOR_TEST_CHILD_HOME";

/// A child process writes documents one at a time and prints each acknowledged id; the parent
/// kills it with SIGKILL mid-stream. Every acknowledged document is there after reopening, the
/// index file (saved before the kill, now behind) catches up from the change log, and queries
/// find the documents written after the save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dim = 16;
    let vectors = clustered_vectors(4000, dim, 20, 0.4, 5);
    if let Some(home) = std::env::var_os(CHILD_ENV) {
        let backend = open(&PathBuf::from(home));
        backend.upsert("crash", docs_for(&vectors[..1000], 0, 10)).await.unwrap();
        backend.flush().await.unwrap(); // the index file is current with the first 1000
        println!("saved");
        for i in 1000..vectors.len() {
            backend.upsert("crash", docs_for(&vectors[i..i + 1], i, 10)).await.unwrap();
            println!("acked d{i}");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        panic!("the child was not killed");
    }
    let home = tempfile::tempdir().unwrap();
    open(home.path()).create_collection(&spec("crash", dim as u32, Distance::Cosine)).await.unwrap();
    #[allow(clippy::disallowed_methods)] // the test's own writer process, killed with SIGKILL
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "acknowledged_writes_survive_kill_9", "--nocapture"])
        .env(CHILD_ENV, home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut acked = Vec::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("acked ") {
            acked.push(id.to_owned());
            if acked.len() == 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(acked.len(), 300, "the child stopped early");

    let backend = open(home.path());
    let state = backend.index_open_state("crash").await.unwrap();
    assert!(matches!(state, IndexOpen::CaughtUp { replayed } if replayed >= 300), "{state:?}");
    let rec = backend.collection("crash").await.unwrap().unwrap();
    assert!(rec.documents >= 1300, "{}", rec.documents);
    let hashes = backend.content_hashes("crash", &acked).await.unwrap();
    assert_eq!(hashes.len(), acked.len(), "every acknowledged document is stored");
    for id in [&acked[0], &acked[150], &acked[299]] {
        let i: usize = id[1..].parse().unwrap();
        let hits = backend.query("crash", &query(&vectors[i], 1)).await.unwrap();
        assert_eq!(&hits[0].document_id, id, "the index has the documents written after its last save");
    }
}

fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_missing_or_stale_index_files_are_rebuilt_at_open() {
    let dim = 24;
    let home = tempfile::tempdir().unwrap();
    let vectors = clustered_vectors(3000, dim, 10, 0.4, 9);
    let top = |hits: Vec<ondevice_vector::Hit>| hits.into_iter().map(|h| h.document_id).collect::<Vec<_>>();
    let expected;
    {
        let b = open(home.path());
        b.create_collection(&spec("kb", dim as u32, Distance::Cosine)).await.unwrap();
        assert_eq!(b.index_open_state("kb").await.unwrap(), IndexOpen::Fresh);
        b.upsert("kb", docs_for(&vectors, 0, 10)).await.unwrap();
        b.flush().await.unwrap();
        expected = top(b.query("kb", &query(&vectors[7], 10)).await.unwrap());
    }
    let file = open(home.path()).index_file("kb").unwrap().unwrap();

    // Current file: loaded as is.
    let b = open(home.path());
    assert_eq!(b.index_open_state("kb").await.unwrap(), IndexOpen::Loaded);
    drop(b);

    // A flipped byte: the checksum catches it and the index is rebuilt from SQLite.
    corrupt(&file);
    let b = open(home.path());
    let state = b.index_open_state("kb").await.unwrap();
    assert!(matches!(&state, IndexOpen::Rebuilt { reason } if reason.contains("checksum")), "{state:?}");
    assert_eq!(top(b.query("kb", &query(&vectors[7], 10)).await.unwrap()), expected);
    drop(b);
    // The rebuilt index was saved: the next open loads it.
    let b = open(home.path());
    assert_eq!(b.index_open_state("kb").await.unwrap(), IndexOpen::Loaded);
    drop(b);

    // A truncated file (a partial write): rebuilt.
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 3).unwrap();
    let b = open(home.path());
    assert!(matches!(b.index_open_state("kb").await.unwrap(), IndexOpen::Rebuilt { .. }));
    drop(b);

    // A missing file: rebuilt.
    std::fs::remove_file(&file).unwrap();
    let b = open(home.path());
    let state = b.index_open_state("kb").await.unwrap();
    assert!(matches!(&state, IndexOpen::Rebuilt { .. }), "{state:?}");
    assert_eq!(top(b.query("kb", &query(&vectors[7], 10)).await.unwrap()), expected);
    b.flush().await.unwrap();
    drop(b);

    // An old copy of the file from before later writes and a save (its log is pruned): rebuilt,
    // and the later writes are in it.
    let old = std::fs::read(&file).unwrap();
    let old_meta = std::fs::read(file.with_extension("meta.json")).unwrap();
    {
        let b = open(home.path());
        let more = clustered_vectors(100, dim, 10, 0.4, 99);
        b.upsert("kb", docs_for(&more, 5000, 10)).await.unwrap();
        b.flush().await.unwrap();
    }
    std::fs::write(&file, &old).unwrap();
    std::fs::write(file.with_extension("meta.json"), &old_meta).unwrap();
    let b = open(home.path());
    let state = b.index_open_state("kb").await.unwrap();
    assert!(matches!(&state, IndexOpen::Rebuilt { reason } if reason.contains("older")), "{state:?}");
    let more = clustered_vectors(100, dim, 10, 0.4, 99);
    assert_eq!(b.query("kb", &query(&more[5], 1)).await.unwrap()[0].document_id, "d5005");
}
