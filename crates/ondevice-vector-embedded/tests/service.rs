//! The collection service end to end on the embedded backend (real SQLite, real HNSW files,
//! the real job queue): text upserts chunked and embedded, queries by text, the embedding cache,
//! token policies, pinned model digests, `index` jobs over a directory (skipping unchanged files,
//! resuming after SIGKILL without re-embedding or duplicating), and re-embedding.
//!
//! The embedding provider is an in-process runtime behind the daemon's `Inference` contract
//! (hashed bag of words, deterministic, with an adjustable delay and digest), standing in for the
//! orchestrator so these tests need no model; the daemon's e2e tests use the real engine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ondevice_jobs::{JobState, Jobs, JobsConfig};
use ondevice_runtime::{
    BoxFuture, EmbedRequest, Embeddings, GenerateRequest, Generation, Inference, LoadedModel, ModelEntry, RuntimeError,
    RuntimeStatus, Usage,
};
use ondevice_store::Store;
use ondevice_vector::{
    Collections, CreateCollection, DocumentInput, Filter, QueryInput, QueryRequest, TokenPolicy, VectorError,
    VectorService, chunk::Format,
};
use ondevice_vector_embedded::EmbeddedBackend;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Hashed bag of words: texts sharing words are close.
struct Bow {
    delay_ms: AtomicU64,
    calls: AtomicU64,
    texts: AtomicU64,
    digests: Mutex<Vec<(String, String)>>,
    /// The model each embedding request named.
    requested: Mutex<Vec<String>>,
}

impl Bow {
    fn new() -> Arc<Bow> {
        Arc::new(Bow {
            delay_ms: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            digests: Mutex::new(vec![
                ("bow:latest".into(), format!("sha256:{}", "a".repeat(64))),
                ("bow-wide:latest".into(), format!("sha256:{}", "b".repeat(64))),
            ]),
            requested: Mutex::new(Vec::new()),
        })
    }

    fn vector(model: &str, text: &str) -> Vec<f32> {
        let dim = if model.starts_with("bow-wide") { 96 } else { 64 };
        let mut v = vec![0f32; dim];
        for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let h = w
                .to_lowercase()
                .bytes()
                .fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
            v[(h % dim as u64) as usize] += 1.0;
        }
        v[0] += 0.01;
        v
    }
}

impl Inference for Bow {
    fn generate(&self, _r: GenerateRequest) -> BoxFuture<'_, Result<Generation, RuntimeError>> {
        Box::pin(async { Err(RuntimeError::Unsupported { adapter: "bow".into(), what: "generation".into() }) })
    }

    fn embed(&self, r: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.texts.fetch_add(r.input.len() as u64, Ordering::SeqCst);
            self.requested.lock().unwrap().push(r.model.clone());
            // Like the registry: a digest names the weights of whichever row holds it.
            let model = if r.model.starts_with("sha256:") {
                let d = self.digests.lock().unwrap();
                match d.iter().find(|(_, digest)| *digest == r.model) {
                    Some((name, _)) => name.clone(),
                    None => return Err(RuntimeError::ModelNotFound { model: r.model.clone() }),
                }
            } else {
                r.model.clone()
            };
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok(Embeddings {
                vectors: r.input.iter().map(|t| Bow::vector(&model, t)).collect(),
                usage: Usage::default(),
                adapter: "bow".into(),
            })
        })
    }

    fn tokenize(&self, _model: &str, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let n = text.split_whitespace().count();
        Box::pin(async move { Ok((0..n as u32).collect()) })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelEntry>, RuntimeError>> {
        Box::pin(async move {
            Ok(self
                .digests
                .lock()
                .unwrap()
                .iter()
                .map(|(name, digest)| ModelEntry {
                    name: name.clone(),
                    digest: Some(digest.clone()),
                    size_bytes: None,
                    created: None,
                    family: None,
                    quantization: None,
                    parameters: None,
                    runtimes: vec!["bow".into()],
                })
                .collect())
        })
    }

    fn loaded(&self) -> BoxFuture<'_, Vec<LoadedModel>> {
        Box::pin(async { Vec::new() })
    }

    fn runtimes(&self) -> BoxFuture<'_, Vec<RuntimeStatus>> {
        Box::pin(async { Vec::new() })
    }

    fn load(&self, model: &str) -> BoxFuture<'_, Result<LoadedModel, RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move { Err(RuntimeError::ModelNotFound { model }) })
    }

    fn unload(&self, _model: &str) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        Box::pin(async { Ok(false) })
    }

    fn degraded(&self) -> Option<String> {
        None
    }
}

struct Daemon {
    service: Collections,
    jobs: Jobs,
    store: Arc<Store>,
    shutdown: CancellationToken,
}

async fn daemon(home: &Path, bow: Arc<Bow>) -> Daemon {
    daemon_with_roots(home, bow, &[]).await
}

/// A daemon whose `index` jobs may read files under `roots`.
async fn daemon_with_roots(home: &Path, bow: Arc<Bow>, roots: &[PathBuf]) -> Daemon {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    let backend = Arc::new(EmbeddedBackend::open(store.clone(), &home.join("vectors")).unwrap());
    let service = Collections::new(vec![backend], "embedded", bow);
    service.set_index_roots(roots);
    let shutdown = CancellationToken::new();
    let jobs = Jobs::builder(store.clone(), JobsConfig::default())
        .kind(service.index_kind())
        .kind(service.reembed_kind())
        .start(shutdown.clone())
        .await
        .unwrap();
    service.set_jobs(jobs.clone());
    Daemon { service, jobs, store, shutdown }
}

fn text_query(text: &str, k: usize) -> QueryRequest {
    QueryRequest { input: QueryInput::Text(text.into()), k, filter: Filter::default() }
}

fn doc(id: &str, text: &str, format: Format, meta: serde_json::Value) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        source: Some(format!("mem://{id}")),
        metadata: meta.as_object().cloned().unwrap_or_default(),
        format,
    }
}

async fn wait_done(jobs: &Jobs, id: &str) -> ondevice_jobs::JobSnapshot {
    for _ in 0..6000 {
        let s = jobs.get(id).await.unwrap();
        if s.state.is_terminal() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_documents_are_chunked_embedded_and_found() {
    let home = tempfile::tempdir().unwrap();
    let bow = Bow::new();
    let d = daemon(home.path(), bow.clone()).await;
    let s = &d.service;
    let mut req = CreateCollection::new("notes", "bow");
    req.chunking.max_tokens = 24;
    req.chunking.overlap_tokens = 4;
    let rec = s.create(req.clone()).await.unwrap();
    assert_eq!(rec.spec.dimension, 64);
    assert_eq!(rec.spec.model_digest, format!("sha256:{}", "a".repeat(64)), "the model is pinned by digest");
    assert!(matches!(s.create(req).await, Err(VectorError::Exists(_))));
    assert!(matches!(s.create(CreateCollection::new("x", "nope")).await, Err(VectorError::Embedding { .. })));
    assert!(matches!(
        s.create(CreateCollection { backend: Some("pgvector".into()), ..CreateCollection::new("y", "bow") }).await,
        Err(VectorError::BackendUnavailable(_))
    ));

    let long = "Otters hold hands while sleeping so they do not drift apart. ".repeat(10);
    let docs = vec![
        doc("otters", &long, Format::Text, json!({"topic": "animals"})),
        doc(
            "rust",
            "# Rust\n\nRust has ownership and borrowing.\n\n## Cargo\n\nCargo builds crates.",
            Format::Markdown,
            json!({"topic": "code"}),
        ),
        doc(
            "page",
            "<html><script>var hidden = 1;</script><p>Volcanoes erupt lava &amp; ash</p></html>",
            Format::Html,
            json!({"topic": "earth"}),
        ),
    ];
    let out = s.upsert("notes", docs.clone()).await.unwrap();
    assert_eq!(out.documents, 3);
    assert!(out.chunks >= 5, "the long text is cut into several chunks: {out:?}");
    // The same documents again: unchanged, nothing embedded.
    let before = bow.texts.load(Ordering::SeqCst);
    let again = s.upsert("notes", docs).await.unwrap();
    assert_eq!((again.documents, again.unchanged), (0, 3));
    assert_eq!(bow.texts.load(Ordering::SeqCst), before);

    let hits = s.query("notes", text_query("how do otters sleep", 3)).await.unwrap();
    assert_eq!(hits[0].document_id, "otters");
    assert_eq!(hits[0].source.as_deref(), Some("mem://otters"));
    let hits = s.query("notes", text_query("lava from volcanoes", 1)).await.unwrap();
    assert_eq!(hits[0].document_id, "page");
    assert!(!hits[0].text.contains("hidden") && hits[0].text.contains("lava & ash"), "{}", hits[0].text);
    let filtered =
        QueryRequest { filter: Filter::from_json(&json!({"topic": "code"})).unwrap(), ..text_query("otters", 2) };
    let hits = s.query("notes", filtered).await.unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h.document_id == "rust"));
    // The second identical query text is answered by the cache.
    let hits_before = s.stats().cache_hits;
    s.query("notes", text_query("how do otters sleep", 3)).await.unwrap();
    assert!(s.stats().cache_hits > hits_before);

    // The pinned digest: when "bow" names other weights, queries by text refuse.
    bow.digests.lock().unwrap()[0].1 = format!("sha256:{}", "c".repeat(64));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let d2 = daemon(home.path(), bow.clone()).await; // a fresh resolver cache
    let e = d2.service.query("notes", text_query("otters", 1)).await.unwrap_err();
    assert!(matches!(e, VectorError::ModelChanged { .. }), "{e}");
    // Vector queries still work.
    let v = QueryRequest { input: QueryInput::Vector(vec![0.1; 64]), k: 2, filter: Filter::default() };
    assert_eq!(d2.service.query("notes", v).await.unwrap().len(), 2);
    d.shutdown.cancel();
    d2.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_policy_error_refuses_long_query_texts() {
    let home = tempfile::tempdir().unwrap();
    let d = daemon(home.path(), Bow::new()).await;
    let mut req = CreateCollection::new("strict", "bow");
    req.max_input_tokens = 16;
    req.chunking.max_tokens = 16;
    req.chunking.overlap_tokens = 0;
    req.token_policy = TokenPolicy::Error;
    d.service.create(req).await.unwrap();
    let e = d.service.query("strict", text_query(&"word ".repeat(40), 1)).await.unwrap_err();
    assert!(matches!(e, VectorError::InputTooLong { tokens: 40, max: 16 }), "{e}");
    let mut req = CreateCollection::new("lenient", "bow");
    req.max_input_tokens = 16;
    req.chunking.max_tokens = 16;
    req.chunking.overlap_tokens = 0;
    d.service.create(req).await.unwrap();
    d.service.query("lenient", text_query(&"word ".repeat(40), 1)).await.unwrap();
    d.shutdown.cancel();
}

fn write_tree(root: &Path, files: usize) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), "hidden").unwrap();
    std::fs::write(root.join("paper.pdf"), b"%PDF-1.4 binary").unwrap();
    for i in 0..files {
        let (dir, ext) = match i % 4 {
            0 => ("", "md"),
            1 => ("sub/", "txt"),
            2 => ("sub/deeper/", "rs"),
            _ => ("sub/", "html"),
        };
        let body = match ext {
            "md" => format!("# Note {i}\n\nTopic number {i} talks about subject{i}.\n"),
            "rs" => format!("fn f{i}() {{\n    // subject{i}\n}}\n"),
            "html" => format!("<p>Page {i} on subject{i}</p>"),
            _ => format!("Plain text {i} about subject{i}."),
        };
        std::fs::write(root.join(format!("{dir}file{i}.{ext}")), body).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_jobs_walk_skip_unchanged_and_report_progress() {
    let home = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    write_tree(docs.path(), 12);
    let bow = Bow::new();
    let more = tempfile::tempdir().unwrap();
    let d = daemon(home.path(), bow.clone()).await;
    d.service.set_index_roots(&[docs.path().to_path_buf(), more.path().to_path_buf()]);
    d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
    let e = d.service.index("kb", vec![docs.path().join("paper.pdf")]).await.unwrap_err();
    assert!(e.to_string().contains("unsupported file type"), "{e}");
    assert!(matches!(d.service.index("kb", vec![docs.path().join("missing")]).await, Err(VectorError::Io { .. })));

    let job = d.service.index("kb", vec![docs.path().to_path_buf()]).await.unwrap();
    assert_eq!(job.kind, "index");
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    assert_eq!((done.progress.done, done.progress.total, done.progress.unit.as_str()), (12, Some(12), "files"));
    assert_eq!(done.detail["files_indexed"], 12);
    assert_eq!(done.detail["files_skipped"], 1, "the pdf; hidden directories are not walked");
    assert!(done.detail["chunks_per_s"].as_f64().unwrap() > 0.0);
    assert!(done.progress.message.as_deref().unwrap().contains("12/12 files"));
    let hits = d.service.query("kb", text_query("subject7", 1)).await.unwrap();
    assert!(hits[0].document_id.ends_with("file7.html"), "{hits:?}");
    assert_eq!(hits[0].metadata["format"], "html");

    // Again: every file unchanged, nothing embedded.
    let before = bow.texts.load(Ordering::SeqCst);
    std::fs::write(docs.path().join("sub/file5.txt"), "Changed text about subject5 and more.").unwrap();
    let job = d.service.index("kb", vec![docs.path().to_path_buf()]).await.unwrap();
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!((done.detail["files_unchanged"].as_u64(), done.detail["files_indexed"].as_u64()), (Some(11), Some(1)));
    assert_eq!(bow.texts.load(Ordering::SeqCst) - before, 1, "only the changed file is embedded");
    let rec = d.service.show("kb").await.unwrap();
    assert_eq!(rec.documents, 12);
    assert_eq!(rec.chunks, 12, "a changed file's chunks are replaced, not added");

    // Cancel: a slow run stops when cancelled.
    bow.delay_ms.store(200, Ordering::SeqCst);
    write_tree(more.path(), 20);
    let job = d.service.index("kb", vec![more.path().to_path_buf()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.jobs.cancel(&job.id).await.unwrap();
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Cancelled);
    d.shutdown.cancel();
}

const CHILD_ENV: &str = "ONDEVICE_VECTOR_INDEX_CHILD";

/// A daemon indexing slowly is killed with SIGKILL; the next daemon resumes the job: files done
/// before the kill are not embedded again, and no chunk is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_job_killed_with_sigkill_resumes_without_reembedding() {
    if let Some(dirs) = std::env::var_os(CHILD_ENV) {
        let dirs = dirs.to_string_lossy().to_string();
        let (home, docs) = dirs.split_once('|').unwrap();
        let bow = Bow::new();
        bow.delay_ms.store(100, Ordering::SeqCst);
        let d = daemon_with_roots(Path::new(home), bow, &[PathBuf::from(docs)]).await;
        d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
        d.service.index("kb", vec![PathBuf::from(docs)]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("the child was not killed");
    }
    let home = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    write_tree(docs.path(), 40);
    drop(Store::open(&home.path().join("ondevice.db")).unwrap()); // migrated before the child
    #[allow(clippy::disallowed_methods)] // the test's own stand-in daemon, killed with SIGKILL
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "an_index_job_killed_with_sigkill_resumes_without_reembedding", "--nocapture"])
        .env(CHILD_ENV, format!("{}|{}", home.path().display(), docs.path().display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = Store::open(&home.path().join("ondevice.db")).unwrap();
    let before_kill = loop {
        let n = store.vector_collection("kb").unwrap().map(|c| c.documents).unwrap_or(0);
        if n >= 8 {
            break n;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child exited early");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let stored = store.vector_collection("kb").unwrap().unwrap().documents as u64;
    assert!(stored >= before_kill as u64 && stored < 40, "{stored}");
    drop(store);

    let bow = Bow::new();
    let d = daemon_with_roots(home.path(), bow.clone(), &[docs.path().to_path_buf()]).await;
    let job = d.jobs.list(&Default::default()).await.unwrap().into_iter().find(|j| j.kind == "index").unwrap();
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    // One text per file (each file is one chunk): only the files not stored before the kill.
    assert_eq!(bow.texts.load(Ordering::SeqCst), 40 - stored, "finished files are not embedded again");
    assert_eq!(done.detail["files_unchanged"].as_u64(), Some(stored));
    let rec = d.service.show("kb").await.unwrap();
    assert_eq!((rec.documents, rec.chunks), (40, 40), "no duplicate chunks");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_reembeds_while_queries_use_the_old_index() {
    let home = tempfile::tempdir().unwrap();
    let bow = Bow::new();
    let d = daemon(home.path(), bow.clone()).await;
    d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
    let docs: Vec<DocumentInput> = (0..30)
        .map(|i| doc(&format!("d{i}"), &format!("document {i} about topic{i}"), Format::Text, json!({})))
        .collect();
    d.service.upsert("kb", docs).await.unwrap();
    bow.delay_ms.store(50, Ordering::SeqCst);
    let job = d.service.set_model("kb", "bow-wide".into()).await.unwrap();
    assert_eq!(job.kind, "reembed");
    // While it runs, the collection answers from the old model's index.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = d.service.show("kb").await.unwrap();
    assert_eq!((rec.spec.model.as_str(), rec.spec.dimension), ("bow", 64));
    // ("topic17" alone would tie d17 with d4: the toy model hashes "4" into the same component.)
    let hits = d.service.query("kb", text_query("document 17 about topic17", 1)).await.unwrap();
    assert_eq!(hits[0].document_id, "d17");
    assert!(d.service.list().await.unwrap().iter().all(|c| c.spec.name == "kb"), "the shadow collection is hidden");
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    let rec = d.service.show("kb").await.unwrap();
    assert_eq!((rec.spec.model.as_str(), rec.spec.dimension, rec.documents), ("bow-wide", 96, 30));
    assert_eq!(rec.spec.model_digest, format!("sha256:{}", "b".repeat(64)));
    // ("topic17" alone would tie d17 with d4: the toy model hashes "4" into the same component.)
    let hits = d.service.query("kb", text_query("document 17 about topic17", 1)).await.unwrap();
    assert_eq!(hits[0].document_id, "d17");
    let _ = &d.store;
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_during_a_reembed_stay_deleted_and_writes_land_with_the_new_model() {
    let home = tempfile::tempdir().unwrap();
    let bow = Bow::new();
    let d = daemon(home.path(), bow.clone()).await;
    d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
    let docs: Vec<DocumentInput> = (0..30)
        .map(|i| doc(&format!("d{i:02}"), &format!("document {i} about topic{i}"), Format::Text, json!({})))
        .collect();
    d.service.upsert("kb", docs).await.unwrap();
    bow.delay_ms.store(40, Ordering::SeqCst);
    let job = d.service.set_model("kb", "bow-wide".into()).await.unwrap();
    // The first documents are copied into the new index by now; the last ones are not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = d.jobs.get(&job.id).await.unwrap();
    assert!(!early.state.is_terminal(), "the job is still copying: {early:?}");
    let deleted = d.service.delete_documents("kb", vec!["d00".into(), "d01".into(), "d29".into()]).await.unwrap();
    assert_eq!(deleted, 3);
    d.service.upsert("kb", vec![doc("new", "a fresh note about zebras", Format::Text, json!({}))]).await.unwrap();
    // Writes keep coming while the job finishes: each must land in whichever collection is live
    // with that collection's model (the swap waits for them, they wait for the swap).
    let writer = {
        let service = d.service.clone();
        tokio::spawn(async move {
            for i in 0..10 {
                service
                    .upsert(
                        "kb",
                        vec![doc(&format!("late{i}"), &format!("late note {i} about ferns"), Format::Text, json!({}))],
                    )
                    .await
                    .unwrap();
                service.delete_documents("kb", vec![format!("d1{i}")]).await.unwrap();
            }
        })
    };
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    writer.await.unwrap();
    let rec = d.service.show("kb").await.unwrap();
    assert_eq!((rec.spec.model.as_str(), rec.spec.dimension), ("bow-wide", 96));
    assert_eq!(rec.documents, 30 - 3 + 1 + 10 - 10, "deleted documents stay deleted: {rec:?}");
    assert_eq!(rec.chunks, rec.documents);
    for gone in ["topic0", "topic1", "topic29", "topic13"] {
        let hits = d.service.query("kb", text_query(gone, 3)).await.unwrap();
        assert!(
            hits.iter().all(|h| !["d00", "d01", "d29", "d13"].contains(&h.document_id.as_str())),
            "{gone}: {hits:?}"
        );
    }
    let hits = d.service.query("kb", text_query("zebras", 1)).await.unwrap();
    assert_eq!(hits[0].document_id, "new");
    let hits = d.service.query("kb", text_query("late note 7 about ferns", 1)).await.unwrap();
    assert_eq!(hits[0].document_id, "late7");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "embedded with the new model: {hits:?}");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_ask_for_the_pinned_digest_so_a_re_pull_cannot_change_the_weights() {
    let home = tempfile::tempdir().unwrap();
    let bow = Bow::new();
    let d = daemon(home.path(), bow.clone()).await;
    let rec = d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
    let pinned = format!("sha256:{}", "a".repeat(64));
    assert_eq!(rec.spec.model_digest, pinned);
    d.service.upsert("kb", vec![doc("a", "apples and pears", Format::Text, json!({}))]).await.unwrap();
    d.service.query("kb", text_query("pears", 1)).await.unwrap();
    {
        let asked = bow.requested.lock().unwrap();
        assert!(!asked.is_empty() && asked.iter().all(|m| *m == pinned), "every request named the digest: {asked:?}");
    }
    // A re-pull moves the name to other weights. The name → digest lookup is cached, so the pin
    // check still passes for a while; the request names the digest, which now no row holds.
    bow.digests.lock().unwrap()[0].1 = format!("sha256:{}", "c".repeat(64));
    let err = d.service.upsert("kb", vec![doc("b", "plums and figs", Format::Text, json!({}))]).await.unwrap_err();
    assert!(matches!(err, VectorError::ModelChanged { .. }), "{err}");
    // The old weights kept under another name (e.g. a copy): still embedded by their digest.
    bow.digests.lock().unwrap().push(("bow-old:latest".into(), pinned.clone()));
    let hits = d
        .service
        .query(
            "kb",
            QueryRequest { input: QueryInput::Vector(Bow::vector("bow", "apples")), k: 1, filter: Filter::default() },
        )
        .await
        .unwrap();
    assert_eq!(hits[0].document_id, "a");
    let rec = d.service.show("kb").await.unwrap();
    assert_eq!(rec.documents, 1, "nothing embedded with the new weights was stored");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_reads_only_inside_the_configured_roots() {
    let home = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write_tree(root.path(), 4);
    std::fs::write(outside.path().join("secret.txt"), "the password is swordfish").unwrap();
    std::fs::create_dir_all(root.path().join("notes")).unwrap();
    std::fs::write(root.path().join(".env.txt"), "TOKEN=hidden").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.path().join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("notes/outside")).unwrap();

    // No roots: the daemon reads nothing, whatever the path.
    let d = daemon(home.path(), Bow::new()).await;
    d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
    let e = d.service.index("kb", vec![root.path().to_path_buf()]).await.unwrap_err();
    assert!(matches!(e, VectorError::PathNotAllowed { .. }), "{e}");
    assert!(e.to_string().contains("index_roots is empty"), "{e}");
    d.shutdown.cancel();

    let home = tempfile::tempdir().unwrap();
    let d = daemon_with_roots(home.path(), Bow::new(), &[root.path().to_path_buf()]).await;
    d.service.create(CreateCollection::new("kb", "bow")).await.unwrap();
    let refused = |p: PathBuf| {
        let service = d.service.clone();
        async move {
            match service.index("kb", vec![p.clone()]).await {
                Err(VectorError::PathNotAllowed { .. }) => {}
                other => panic!("{}: {other:?}", p.display()),
            }
        }
    };
    // Outside, by name, by `..`, through a symlinked file or directory, hidden, missing outside.
    refused(outside.path().join("secret.txt")).await;
    refused(root.path().join("../").join(outside.path().file_name().unwrap()).join("secret.txt")).await;
    refused(root.path().join("link.txt")).await;
    refused(root.path().join("notes/outside/secret.txt")).await;
    refused(root.path().join(".env.txt")).await;
    refused(PathBuf::from("/nonexistent/x.txt")).await;
    let e = d.service.index("kb", vec![PathBuf::from("relative.txt")]).await.unwrap_err();
    assert!(e.to_string().contains("not an absolute path"), "{e}");

    // The root itself: its files, and neither the symlinks nor the hidden file.
    let job = d.service.index("kb", vec![root.path().to_path_buf()]).await.unwrap();
    let done = wait_done(&d.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    assert_eq!(done.detail["files_indexed"], 4, "{}", done.detail);
    let hits = d.service.query("kb", text_query("password swordfish", 5)).await.unwrap();
    assert!(hits.iter().all(|h| !h.text.contains("swordfish")), "{hits:?}");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunks_of_one_upsert_share_embedding_requests() {
    let home = tempfile::tempdir().unwrap();
    let bow = Bow::new();
    let d = daemon(home.path(), bow.clone()).await;
    let s = &d.service;
    s.create(CreateCollection::new("many", "bow")).await.unwrap();
    // 40 short documents of one chunk each; two of them repeat another's text.
    let words = ["otter", "volcano", "bread", "river", "garden", "winter", "city", "forest"];
    let text = |i: usize| format!("note {} {} {i}", words[i % 8], words[(i / 8) % 8]);
    let mut docs: Vec<DocumentInput> =
        (0..40).map(|i| doc(&format!("d{i}"), &text(i), Format::Text, json!({"n": i}))).collect();
    docs[38].text = text(1);
    docs[39].text = text(2);
    let (calls, texts) = (bow.calls.load(Ordering::SeqCst), bow.texts.load(Ordering::SeqCst));
    let out = s.upsert("many", docs).await.unwrap();
    assert_eq!((out.documents, out.chunks), (40, 40));
    // Before, each document was one request (40); now the 38 distinct texts go in batches of 32.
    assert_eq!(bow.calls.load(Ordering::SeqCst) - calls, 2, "one request per batch of 32 chunks");
    assert_eq!(bow.texts.load(Ordering::SeqCst) - texts, 38, "a repeated text is embedded once");
    // Each document got its own chunk's vector (not a neighbour's), repeats included.
    for (id, want) in [("d7", text(7)), ("d25", text(25)), ("d38", text(1)), ("d39", text(2))] {
        let filter = Filter::from_json(&json!({"n": id[1..].parse::<u64>().unwrap()})).unwrap();
        let hits = s.query("many", QueryRequest { filter, ..text_query(&want, 1) }).await.unwrap();
        assert_eq!(hits[0].document_id, id);
        assert_eq!(hits[0].text, want);
        assert!(hits[0].score > 0.999, "{id}: its stored vector is its own text's: {}", hits[0].score);
    }
    d.shutdown.cancel();
}
