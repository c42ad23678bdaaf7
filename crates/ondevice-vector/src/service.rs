//! The collection service the daemon's surfaces call ([`VectorService`], object-safe), and its
//! implementation [`Collections`] over the configured backends, the [`Embedder`] and the job queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ondevice_jobs::{JobSnapshot, Jobs};
use ondevice_runtime::Inference;
use sha2::{Digest, Sha256};

use crate::chunk::{self, Format};
use crate::embed::Embedder;
use crate::job::{IndexKind, IndexSpec, ReembedKind, ReembedSpec};
use crate::{
    BoxFuture, ChunkWrite, ChunkingSettings, CollectionRecord, CollectionSpec, Distance, DocumentWrite, Filter, Hit,
    IndexParams, Metadata, TokenPolicy, VectorBackend, VectorError, VectorQuery, validate_collection_name,
};

/// A request to create a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateCollection {
    /// Its name.
    pub name: String,
    /// The embedding model (name or `sha256:` digest).
    pub model: String,
    /// `embedded` or `pgvector`; the configured default when `None`.
    pub backend: Option<String>,
    /// How vectors compare.
    pub distance: Distance,
    /// Chunking.
    pub chunking: ChunkingSettings,
    /// Longest text sent to the model, in tokens.
    pub max_input_tokens: u32,
    /// Longer texts: truncate or error.
    pub token_policy: TokenPolicy,
    /// HNSW parameters.
    pub index: IndexParams,
}

impl CreateCollection {
    /// Defaults for everything but the name and model.
    pub fn new(name: impl Into<String>, model: impl Into<String>) -> CreateCollection {
        CreateCollection {
            name: name.into(),
            model: model.into(),
            backend: None,
            distance: Distance::Cosine,
            chunking: ChunkingSettings::default(),
            max_input_tokens: 512,
            token_policy: TokenPolicy::Truncate,
            index: IndexParams::default(),
        }
    }
}

/// A document given as text.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentInput {
    /// Its id in the collection.
    pub id: String,
    /// Its content (HTML is stripped when `format` is `Html`).
    pub text: String,
    /// Where it came from.
    pub source: Option<String>,
    /// Metadata filters match.
    pub metadata: Metadata,
    /// How to read and cut it.
    pub format: Format,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertOutcome {
    /// Documents written.
    pub documents: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Documents skipped because their content was already stored.
    pub unchanged: u64,
}

/// What a query searches with.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryInput {
    /// Text, embedded with the collection's model.
    Text(String),
    /// A vector of the collection's dimension.
    Vector(Vec<f32>),
}

/// A query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRequest {
    /// What to search with.
    pub input: QueryInput,
    /// How many hits (1-1000).
    pub k: usize,
    /// Metadata filter.
    pub filter: Filter,
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorStats {
    /// Texts embedded by a model.
    pub embedded: u64,
    /// Input tokens of those texts, as the runtimes report them (0 from runtimes that do not).
    pub embedded_tokens: u64,
    /// Query latency histograms by backend and input.
    pub queries: Vec<crate::metrics::QueryLatency>,
    /// Running index jobs' progress.
    pub index_jobs: Vec<crate::metrics::IndexProgress>,
    /// Texts answered from the embedding cache.
    pub cache_hits: u64,
    /// Seconds spent embedding.
    pub embed_seconds: f64,
}

/// The vector store as the daemon's surfaces see it.
pub trait VectorService: Send + Sync {
    /// Creates a collection, pinning its model's digest and measuring its dimension.
    fn create(&self, req: CreateCollection) -> BoxFuture<'_, Result<CollectionRecord, VectorError>>;
    /// Every collection of every backend, by name.
    fn list(&self) -> BoxFuture<'_, Result<Vec<CollectionRecord>, VectorError>>;
    /// One collection.
    fn show<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<CollectionRecord, VectorError>>;
    /// Removes a collection; `false` when it did not exist.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, VectorError>>;
    /// Chunks, embeds and stores documents (an unchanged document is skipped).
    fn upsert<'a>(
        &'a self,
        name: &'a str,
        docs: Vec<DocumentInput>,
    ) -> BoxFuture<'a, Result<UpsertOutcome, VectorError>>;
    /// Deletes documents; returns how many existed.
    fn delete_documents<'a>(&'a self, name: &'a str, ids: Vec<String>) -> BoxFuture<'a, Result<u64, VectorError>>;
    /// The top-k chunks for a text or a vector.
    fn query<'a>(&'a self, name: &'a str, req: QueryRequest) -> BoxFuture<'a, Result<Vec<Hit>, VectorError>>;
    /// Starts an `index` job over files and directories on the daemon's machine.
    fn index<'a>(&'a self, name: &'a str, paths: Vec<PathBuf>) -> BoxFuture<'a, Result<JobSnapshot, VectorError>>;
    /// Starts a `reembed` job moving the collection to another model; queries answer from the
    /// current index until it finishes.
    fn set_model<'a>(&'a self, name: &'a str, model: String) -> BoxFuture<'a, Result<JobSnapshot, VectorError>>;
    /// Counters for metrics.
    fn stats(&self) -> VectorStats;
}

/// A document's write: its chunks paired with their vectors, in order.
fn document_write(doc: DocumentInput, hash: String, chunks: Vec<String>, vectors: Vec<Vec<f32>>) -> DocumentWrite {
    DocumentWrite {
        id: doc.id,
        source: doc.source,
        content_hash: hash,
        metadata: doc.metadata,
        chunks: chunks.into_iter().zip(vectors).map(|(text, embedding)| ChunkWrite { text, embedding }).collect(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `path` with `.` and `..` components resolved without asking the file system.
fn normalize_lexically(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `sha256:` of content.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub(crate) struct Shared {
    pub backends: Vec<Arc<dyn VectorBackend>>,
    pub default_backend: String,
    pub embedder: Embedder,
    pub jobs: OnceLock<Jobs>,
    /// Collection → (backend index, spec), filled on first use, cleared on delete and replace.
    pub located: Mutex<HashMap<String, (usize, CollectionSpec)>>,
    /// Collection → its write gate: every document write or delete holds it shared for its whole
    /// duration (embedding included); a re-embed job holds it exclusively for its last catch-up
    /// and the swap, so no write or delete falls between them and none lands with the old model.
    pub gates: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Latencies of queries and progress of index jobs, for metrics.
    pub observed: crate::metrics::Observed,
    /// Directories `index` jobs may read (canonical); empty: none.
    pub index_roots: std::sync::RwLock<Vec<PathBuf>>,
}

/// The vector store service over its backends. Cheap to clone.
#[derive(Clone)]
pub struct Collections {
    pub(crate) inner: Arc<Shared>,
}

impl std::fmt::Debug for Collections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.backends.iter().map(|b| b.name()).collect();
        f.debug_struct("Collections").field("backends", &names).finish_non_exhaustive()
    }
}

impl Collections {
    /// A service over `backends` (distinct names), creating new collections in `default_backend`
    /// unless a request names another.
    pub fn new(
        backends: Vec<Arc<dyn VectorBackend>>,
        default_backend: &str,
        inference: Arc<dyn Inference>,
    ) -> Collections {
        Collections {
            inner: Arc::new(Shared {
                backends,
                default_backend: default_backend.to_owned(),
                embedder: Embedder::new(inference),
                jobs: OnceLock::new(),
                located: Mutex::new(HashMap::new()),
                gates: Mutex::new(HashMap::new()),
                observed: crate::metrics::Observed::default(),
                index_roots: std::sync::RwLock::new(Vec::new()),
            }),
        }
    }

    /// Sets the directories `index` jobs may read files from (`[vector] index_roots`). Each is
    /// canonicalized (symlinks resolved); one that does not exist is left out with a warning.
    pub fn set_index_roots(&self, roots: &[PathBuf]) {
        let mut canonical = Vec::new();
        for r in roots {
            match std::fs::canonicalize(r) {
                Ok(c) if c.is_dir() => canonical.push(c),
                Ok(_) => {
                    tracing::warn!(root = %r.display(), "[vector] index_roots names a file, not a directory; left out")
                }
                Err(e) => tracing::warn!(root = %r.display(), error = %e, "[vector] index_roots entry left out"),
            }
        }
        *self.inner.index_roots.write().unwrap_or_else(|e| e.into_inner()) = canonical;
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.inner.index_roots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks that `path` (absolute) may be indexed and returns it canonical: it must lie inside
    /// an index root both as written and with symlinks resolved, and no component below the
    /// root may be hidden (`.ssh`, `.env`, …). Paths outside the roots are refused before the
    /// file system is asked about them, so a refusal says nothing about what exists there.
    pub fn check_index_path(&self, path: &std::path::Path) -> Result<PathBuf, VectorError> {
        let roots = self.roots();
        let refuse = || VectorError::PathNotAllowed {
            path: path.display().to_string(),
            roots: if roots.is_empty() {
                " is empty".to_owned()
            } else {
                format!(
                    " = [{}]",
                    roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect::<Vec<_>>().join(", ")
                )
            },
        };
        if !path.is_absolute() {
            return Err(VectorError::InvalidRequest(format!(
                "{} is not an absolute path: name files and directories from /",
                path.display()
            )));
        }
        let lexical = normalize_lexically(path);
        let inside = |p: &std::path::Path| {
            roots.iter().any(|r| {
                p.strip_prefix(r)
                    .is_ok_and(|rest| rest.components().all(|c| !c.as_os_str().to_string_lossy().starts_with('.')))
            })
        };
        if !inside(&lexical) {
            return Err(refuse());
        }
        let canonical =
            std::fs::canonicalize(path).map_err(|e| VectorError::Io { path: path.display().to_string(), source: e })?;
        if !inside(&canonical) {
            return Err(refuse());
        }
        Ok(canonical)
    }

    /// The `index` job kind, to register with the job queue.
    pub fn index_kind(&self) -> Arc<IndexKind> {
        Arc::new(IndexKind { collections: self.clone() })
    }

    /// The `reembed` job kind, to register with the job queue.
    pub fn reembed_kind(&self) -> Arc<ReembedKind> {
        Arc::new(ReembedKind { collections: self.clone() })
    }

    /// Gives the service the started queue (after the kinds above are registered).
    pub fn set_jobs(&self, jobs: Jobs) {
        let _ = self.inner.jobs.set(jobs);
    }

    /// The embedder (for tests and metrics).
    pub fn embedder(&self) -> &Embedder {
        &self.inner.embedder
    }

    /// Saves every backend's in-memory state (at shutdown).
    pub async fn flush(&self) -> Result<(), VectorError> {
        for b in &self.inner.backends {
            b.flush().await?;
        }
        Ok(())
    }

    fn jobs(&self) -> Result<&Jobs, VectorError> {
        self.inner.jobs.get().ok_or(VectorError::Jobs(ondevice_jobs::JobError::ShuttingDown))
    }

    fn backend_named(&self, name: &str) -> Result<usize, VectorError> {
        self.inner
            .backends
            .iter()
            .position(|b| b.name() == name)
            .ok_or_else(|| VectorError::BackendUnavailable(name.to_owned()))
    }

    /// The write gate of a collection (see [`Shared::gates`]).
    pub(crate) fn gate(&self, name: &str) -> Arc<tokio::sync::RwLock<()>> {
        lock(&self.inner.gates).entry(name.to_owned()).or_default().clone()
    }

    pub(crate) fn forget(&self, name: &str) {
        lock(&self.inner.located).remove(name);
    }

    /// The backend holding `name` and its spec.
    pub(crate) async fn locate(&self, name: &str) -> Result<(Arc<dyn VectorBackend>, CollectionSpec), VectorError> {
        if let Some((i, spec)) = lock(&self.inner.located).get(name).cloned() {
            return Ok((self.inner.backends[i].clone(), spec));
        }
        for (i, b) in self.inner.backends.iter().enumerate() {
            if let Some(rec) = b.collection(name).await? {
                lock(&self.inner.located).insert(name.to_owned(), (i, rec.spec.clone()));
                return Ok((b.clone(), rec.spec));
            }
        }
        Err(VectorError::NotFound(name.to_owned()))
    }

    /// Chunks one document's text and embeds its chunks.
    pub(crate) async fn prepare(
        &self,
        spec: &CollectionSpec,
        doc: DocumentInput,
        hash: String,
    ) -> Result<DocumentWrite, VectorError> {
        let chunks = self.chunk_document(spec, &doc).await?;
        let vectors = self.inner.embedder.embed(spec, &chunks).await?;
        Ok(document_write(doc, hash, chunks, vectors))
    }

    /// One document's chunks, cut with its own characters-per-token estimate and within the
    /// collection's token policy (not embedded yet).
    async fn chunk_document(&self, spec: &CollectionSpec, doc: &DocumentInput) -> Result<Vec<String>, VectorError> {
        crate::validate_document_id(&doc.id)?;
        let text = chunk::extract_text(doc.format, &doc.text);
        let e = &self.inner.embedder;
        let estimate = e.estimate(&spec.model, &text).await;
        let mut chunks = Vec::new();
        for c in chunk::split(doc.format, &text, spec.chunking, estimate) {
            chunks.push(e.apply_policy(spec, &c, estimate)?.to_owned());
        }
        Ok(chunks)
    }

    async fn do_create(&self, req: CreateCollection) -> Result<CollectionRecord, VectorError> {
        validate_collection_name(&req.name)?;
        chunk::validate_chunking(&req.chunking, req.max_input_tokens)?;
        let backend = self.backend_named(req.backend.as_deref().unwrap_or(&self.inner.default_backend))?;
        for b in &self.inner.backends {
            if b.collection(&req.name).await?.is_some() {
                return Err(VectorError::Exists(req.name));
            }
        }
        let e = &self.inner.embedder;
        let resolved = e.resolve(&req.model).await?;
        let dimension = e.probe_dimension(&req.model, &resolved).await?;
        let spec = CollectionSpec {
            name: req.name,
            model: req.model,
            model_digest: resolved.digest,
            dimension,
            distance: req.distance,
            chunking: req.chunking,
            max_input_tokens: req.max_input_tokens,
            token_policy: req.token_policy,
            index: req.index,
        };
        let rec = self.inner.backends[backend].create_collection(&spec).await?;
        self.forget(&spec.name);
        Ok(rec)
    }

    async fn do_upsert(&self, name: &str, docs: Vec<DocumentInput>) -> Result<UpsertOutcome, VectorError> {
        let gate = self.gate(name);
        let _writing = gate.read().await;
        let (backend, spec) = self.locate(name).await?;
        self.inner.embedder.check_pinned(&spec).await?;
        let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
        let stored = backend.content_hashes(name, &ids).await?;
        let mut out = UpsertOutcome::default();
        // Every changed document is chunked first and all their chunks are embedded together, so
        // a request of many short documents makes a few full embedding batches, not one small
        // request per document.
        let mut chunked = Vec::new();
        for d in docs {
            let mut h = Sha256::new();
            h.update(d.text.as_bytes());
            h.update(serde_json::Value::Object(d.metadata.clone()).to_string().as_bytes());
            h.update(d.source.as_deref().unwrap_or("").as_bytes());
            let hash = format!("sha256:{:x}", h.finalize());
            if stored.get(&d.id) == Some(&hash) {
                out.unchanged += 1;
                continue;
            }
            let chunks = self.chunk_document(&spec, &d).await?;
            chunked.push((d, hash, chunks));
        }
        let texts: Vec<String> = chunked.iter().flat_map(|(_, _, c)| c.iter().cloned()).collect();
        let mut vectors = self.inner.embedder.embed(&spec, &texts).await?.into_iter();
        let mut writes = Vec::with_capacity(chunked.len());
        for (d, hash, chunks) in chunked {
            let mine: Vec<Vec<f32>> = vectors.by_ref().take(chunks.len()).collect();
            out.documents += 1;
            out.chunks += chunks.len() as u64;
            writes.push(document_write(d, hash, chunks, mine));
        }
        if !writes.is_empty() {
            backend.upsert(name, writes).await?;
        }
        Ok(out)
    }

    async fn do_query(&self, name: &str, req: QueryRequest) -> Result<Vec<Hit>, VectorError> {
        let started = std::time::Instant::now();
        let (backend, spec) = self.locate(name).await?;
        let input = match req.input {
            QueryInput::Vector(_) => "vector",
            QueryInput::Text(_) => "text",
        };
        let vector = match req.input {
            QueryInput::Vector(v) => v,
            QueryInput::Text(t) => {
                if t.trim().is_empty() {
                    return Err(VectorError::InvalidRequest("the query text is empty".into()));
                }
                let e = &self.inner.embedder;
                e.check_pinned(&spec).await?;
                let estimate = e.estimate(&spec.model, &t).await;
                let t = e.apply_policy(&spec, &t, estimate)?.to_owned();
                e.embed(&spec, &[t]).await?.remove(0)
            }
        };
        let hits = backend.query(name, &VectorQuery { vector, k: req.k, filter: req.filter }).await?;
        self.inner.observed.query(backend.name(), input, started.elapsed());
        Ok(hits)
    }

    /// What the store observed (query latencies, index jobs), for the job kinds.
    pub(crate) fn observed(&self) -> &crate::metrics::Observed {
        &self.inner.observed
    }
}

impl VectorService for Collections {
    fn create(&self, req: CreateCollection) -> BoxFuture<'_, Result<CollectionRecord, VectorError>> {
        Box::pin(self.do_create(req))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<CollectionRecord>, VectorError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for b in &self.inner.backends {
                all.extend(b.collections().await?.into_iter().filter(|c| !c.spec.name.starts_with('_')));
            }
            all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            Ok(all)
        })
    }

    fn show<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<CollectionRecord, VectorError>> {
        Box::pin(async move {
            let (backend, _) = self.locate(name).await?;
            backend.collection(name).await?.ok_or_else(|| VectorError::NotFound(name.to_owned()))
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, VectorError>> {
        Box::pin(async move {
            validate_collection_name(name)?;
            self.forget(name);
            let mut any = false;
            for b in &self.inner.backends {
                any |= b.delete_collection(name).await?;
            }
            self.forget(name);
            Ok(any)
        })
    }

    fn upsert<'a>(
        &'a self,
        name: &'a str,
        docs: Vec<DocumentInput>,
    ) -> BoxFuture<'a, Result<UpsertOutcome, VectorError>> {
        Box::pin(self.do_upsert(name, docs))
    }

    fn delete_documents<'a>(&'a self, name: &'a str, ids: Vec<String>) -> BoxFuture<'a, Result<u64, VectorError>> {
        Box::pin(async move {
            let gate = self.gate(name);
            let _writing = gate.read().await;
            let (backend, _) = self.locate(name).await?;
            backend.delete_documents(name, &ids).await
        })
    }

    fn query<'a>(&'a self, name: &'a str, req: QueryRequest) -> BoxFuture<'a, Result<Vec<Hit>, VectorError>> {
        Box::pin(self.do_query(name, req))
    }

    fn index<'a>(&'a self, name: &'a str, paths: Vec<PathBuf>) -> BoxFuture<'a, Result<JobSnapshot, VectorError>> {
        Box::pin(async move {
            self.locate(name).await?;
            if paths.is_empty() {
                return Err(VectorError::InvalidRequest("name at least one file or directory to index".into()));
            }
            let mut abs = Vec::new();
            for p in paths {
                let c = self.check_index_path(&p)?;
                if c.is_file() && Format::from_path(&c).is_none() {
                    return Err(Format::unsupported(&c));
                }
                abs.push(c.display().to_string());
            }
            let spec = IndexSpec { collection: name.to_owned(), paths: abs };
            Ok(self.jobs()?.submit::<IndexKind>(&spec).await?)
        })
    }

    fn set_model<'a>(&'a self, name: &'a str, model: String) -> BoxFuture<'a, Result<JobSnapshot, VectorError>> {
        Box::pin(async move {
            self.locate(name).await?;
            self.inner.embedder.resolve(&model).await?;
            let spec = ReembedSpec { collection: name.to_owned(), model };
            Ok(self.jobs()?.submit::<ReembedKind>(&spec).await?)
        })
    }

    fn stats(&self) -> VectorStats {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.inner.embedder.stats;
        VectorStats {
            embedded: s.embedded.load(Relaxed),
            embedded_tokens: s.tokens.load(Relaxed),
            queries: self.inner.observed.query_latencies(),
            index_jobs: self.inner.observed.index_jobs(),
            cache_hits: s.cache_hits.load(Relaxed),
            embed_seconds: s.micros.load(Relaxed) as f64 / 1e6,
        }
    }
}
