//! The `index` job kind (files → chunks → embeddings → a collection) and the `reembed` kind (a
//! collection moved to another embedding model), on `ondevice-jobs`.
//!
//! Indexing is idempotent per file: a document's id is its canonical path and its content hash is
//! stored with it, so a file whose stored hash matches is skipped, and a document is written in one
//! transaction replacing all of its chunks. A run that is killed (even with `kill -9`) therefore
//! resumes without re-embedding finished files and without duplicate chunks; each file is
//! queryable as soon as it is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ondevice_jobs::{JobContext, JobFailure, JobKind, ResourceClass};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chunk::{self, Format};
use crate::service::{Collections, DocumentInput, content_hash};
use crate::{CollectionSpec, Metadata, VectorError};

/// What to index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    /// The collection.
    pub collection: String,
    /// Canonical paths of files and directories on the daemon's machine.
    pub paths: Vec<String>,
}

/// The `index` kind.
#[derive(Debug)]
pub struct IndexKind {
    pub(crate) collections: Collections,
}

/// Directories never walked into.
const SKIPPED_DIRS: &[&str] = &["node_modules", "target", "__pycache__", "venv", ".venv"];

/// Files at most this big are indexed (larger ones are counted as skipped).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Supported files under `paths` (hidden entries and build directories skipped, symlinked
/// directories not followed), sorted, and how many files were left out.
pub fn walk(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, u64), VectorError> {
    let mut files = Vec::new();
    let mut skipped = 0u64;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&p).map_err(|e| VectorError::Io { path: p.display().to_string(), source: e })?;
        if meta.is_dir() {
            let rd = std::fs::read_dir(&p).map_err(|e| VectorError::Io { path: p.display().to_string(), source: e })?;
            for entry in rd {
                let entry = entry.map_err(|e| VectorError::Io { path: p.display().to_string(), source: e })?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || SKIPPED_DIRS.contains(&name.as_ref()) {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| VectorError::Io { path: p.display().to_string(), source: e })?;
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() {
                    if Format::from_path(&entry.path()).is_some() {
                        files.push(entry.path());
                    } else {
                        skipped += 1;
                    }
                }
            }
        } else if meta.is_file() || meta.file_type().is_symlink() {
            if Format::from_path(&p).is_some() {
                files.push(p);
            } else {
                skipped += 1;
            }
        }
    }
    files.sort();
    files.dedup();
    Ok((files, skipped))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counters {
    files_total: u64,
    files_done: u64,
    files_indexed: u64,
    files_unchanged: u64,
    files_skipped: u64,
    chunks: u64,
}

impl IndexKind {
    async fn index_file(&self, name: &str, path: &Path) -> Result<Option<u64>, VectorError> {
        let c = &self.collections;
        let gate = c.gate(name);
        let _writing = gate.read().await;
        // Located under the gate: a re-embed that swapped the collection meanwhile changed its spec.
        let (backend, spec) = c.locate(name).await?;
        let spec = &spec;
        let id = path.display().to_string();
        // The walk saw a regular file inside an index root; it may have become a symlink since.
        let now = std::fs::canonicalize(path).map_err(|e| VectorError::Io { path: id.clone(), source: e })?;
        if now != path {
            return Err(VectorError::UnsupportedFormat {
                path: id,
                detail: "it became a symbolic link; not followed".into(),
            });
        }
        let meta = tokio::fs::metadata(path).await.map_err(|e| VectorError::Io { path: id.clone(), source: e })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(VectorError::UnsupportedFormat {
                path: id,
                detail: format!("file of {} bytes is over the {} MiB limit", meta.len(), MAX_FILE_BYTES >> 20),
            });
        }
        let bytes = tokio::fs::read(path).await.map_err(|e| VectorError::Io { path: id.clone(), source: e })?;
        let hash = content_hash(&bytes);
        let stored = backend.content_hashes(&spec.name, std::slice::from_ref(&id)).await?;
        if stored.get(&id) == Some(&hash) {
            return Ok(None);
        }
        let format = Format::from_path(path).ok_or_else(|| Format::unsupported(path))?;
        let text = chunk::decode(&id, &bytes)?;
        let mut metadata = Metadata::new();
        metadata.insert("path".into(), json!(id));
        metadata.insert("format".into(), json!(format.as_str()));
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            metadata.insert("ext".into(), json!(ext.to_ascii_lowercase()));
        }
        let doc = DocumentInput { id: id.clone(), text, source: Some(id), metadata, format };
        let write = c.prepare(spec, doc, hash).await?;
        let n = write.chunks.len() as u64;
        backend.upsert(&spec.name, vec![write]).await?;
        Ok(Some(n))
    }
}

impl JobKind for IndexKind {
    const KIND: &'static str = "index";
    type Spec = IndexSpec;

    fn dedup_key(&self, spec: &IndexSpec) -> Option<String> {
        Some(format!("{}:{}", spec.collection, content_hash(spec.paths.join("\n").as_bytes())))
    }

    fn class(&self, _spec: &IndexSpec) -> ResourceClass {
        ResourceClass::CpuHeavy
    }

    fn initial_detail(&self, spec: &IndexSpec) -> serde_json::Value {
        json!({"collection": spec.collection, "paths": spec.paths})
    }

    async fn run(self: Arc<Self>, spec: IndexSpec, ctx: JobContext) -> Result<(), JobFailure> {
        let (_, cspec) = self.collections.locate(&spec.collection).await?;
        self.collections.embedder().check_pinned(&cspec).await?;
        // Checked again when the job runs: the roots may have changed since it was queued.
        let mut roots = Vec::new();
        for p in &spec.paths {
            roots.push(self.collections.check_index_path(Path::new(p))?);
        }
        let (files, skipped) = tokio::task::spawn_blocking(move || walk(&roots))
            .await
            .map_err(|e| JobFailure::Failed(format!("walking the files stopped: {e}")))??;
        let mut n = Counters { files_total: files.len() as u64, files_skipped: skipped, ..Counters::default() };
        let started = Instant::now();
        let mut new_chunks = 0u64;
        let observed = self.collections.observed();
        let job_id = ctx.id().to_string();
        struct Finished<'a>(&'a crate::metrics::Observed, &'a str);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.index_finished(self.1);
            }
        }
        let _finished = Finished(observed, &job_id);
        let publish = |n: &Counters, new_chunks: u64, current: Option<&Path>| {
            observed.index_progress(crate::metrics::IndexProgress {
                job: job_id.clone(),
                collection: spec.collection.clone(),
                files_done: n.files_done,
                files_total: n.files_total,
                chunks: new_chunks,
            });
            let rate = new_chunks as f64 / started.elapsed().as_secs_f64().max(1e-3);
            ctx.progress(n.files_done, Some(n.files_total), "files");
            ctx.message(format!("{}/{} files, {} chunks, {:.1} chunks/s", n.files_done, n.files_total, n.chunks, rate));
            ctx.update_detail(|d| {
                if let Some(o) = d.as_object_mut() {
                    for (k, v) in [
                        ("files_total", json!(n.files_total)),
                        ("files_done", json!(n.files_done)),
                        ("files_indexed", json!(n.files_indexed)),
                        ("files_unchanged", json!(n.files_unchanged)),
                        ("files_skipped", json!(n.files_skipped)),
                        ("chunks", json!(n.chunks)),
                        ("chunks_per_s", json!((rate * 10.0).round() / 10.0)),
                        ("current", json!(current.map(|p| p.display().to_string()))),
                    ] {
                        o.insert(k.into(), v);
                    }
                }
            });
        };
        publish(&n, 0, None);
        for path in &files {
            if ctx.cancel_token().is_cancelled() {
                return Err(JobFailure::Cancelled);
            }
            publish(&n, new_chunks, Some(path));
            let result = tokio::select! {
                r = self.index_file(&cspec.name, path) => r,
                () = ctx.cancelled() => return Err(JobFailure::Cancelled),
            };
            match result {
                Ok(Some(chunks)) => {
                    n.files_indexed += 1;
                    n.chunks += chunks;
                    new_chunks += chunks;
                }
                Ok(None) => n.files_unchanged += 1,
                Err(VectorError::UnsupportedFormat { path, detail }) => {
                    tracing::info!(job = %ctx.id(), %path, %detail, "file skipped");
                    n.files_skipped += 1;
                }
                Err(e) => return Err(JobFailure::Failed(e.to_string())),
            }
            n.files_done += 1;
            publish(&n, new_chunks, None);
            if n.files_done % 16 == 0 {
                let cp = serde_json::to_vec(&n).unwrap_or_default();
                ctx.save_checkpoint_async(cp).await?;
            }
        }
        let (backend, _) = self.collections.locate(&spec.collection).await?;
        backend.flush().await?;
        publish(&n, new_chunks, None);
        Ok(())
    }
}

/// Copies into `new` (the shadow collection) every document of `live` whose content differs from
/// the shadow's copy, embedding its stored chunk texts with the new model; returns how many.
/// With `total`, reports progress in documents.
async fn copy_changed(
    c: &Collections,
    backend: &dyn crate::VectorBackend,
    live: &str,
    new: &CollectionSpec,
    ctx: &JobContext,
    total: Option<u64>,
) -> Result<u64, JobFailure> {
    let mut done = 0u64;
    let mut seen = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = backend.documents_page(live, after.as_deref(), 64).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen += page.len() as u64;
        let ids: Vec<String> = page.iter().map(|d| d.id.clone()).collect();
        let have = backend.content_hashes(&new.name, &ids).await?;
        let mut writes = Vec::new();
        for d in page {
            if have.get(&d.id) == Some(&d.content_hash) {
                continue;
            }
            if ctx.cancel_token().is_cancelled() {
                return Err(JobFailure::Cancelled);
            }
            let vectors = c.embedder().embed(new, &d.chunks).await?;
            writes.push(crate::DocumentWrite {
                id: d.id,
                source: d.source,
                content_hash: d.content_hash,
                metadata: d.metadata,
                chunks: d
                    .chunks
                    .into_iter()
                    .zip(vectors)
                    .map(|(text, embedding)| crate::ChunkWrite { text, embedding })
                    .collect(),
            });
        }
        done += writes.len() as u64;
        if !writes.is_empty() {
            backend.upsert(&new.name, writes).await?;
        }
        if let Some(total) = total {
            ctx.progress(seen, Some(total.max(seen)), "documents");
        }
    }
    Ok(done)
}

/// Moving a collection to another model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReembedSpec {
    /// The collection.
    pub collection: String,
    /// The new embedding model.
    pub model: String,
}

/// The `reembed` kind: builds `_reembed.<collection>` with the new model from the stored chunk
/// texts, catches up with writes made meanwhile, then swaps it in atomically.
#[derive(Debug)]
pub struct ReembedKind {
    pub(crate) collections: Collections,
}

impl JobKind for ReembedKind {
    const KIND: &'static str = "reembed";
    type Spec = ReembedSpec;

    fn dedup_key(&self, spec: &ReembedSpec) -> Option<String> {
        Some(spec.collection.clone())
    }

    fn class(&self, _spec: &ReembedSpec) -> ResourceClass {
        ResourceClass::CpuHeavy
    }

    fn initial_detail(&self, spec: &ReembedSpec) -> serde_json::Value {
        json!({"collection": spec.collection, "model": spec.model})
    }

    async fn run(self: Arc<Self>, spec: ReembedSpec, ctx: JobContext) -> Result<(), JobFailure> {
        let c = &self.collections;
        let (backend, old) = c.locate(&spec.collection).await?;
        let shadow = format!("_reembed.{}", spec.collection);
        let e = c.embedder();
        let resolved = e.resolve(&spec.model).await?;
        let dimension = e.probe_dimension(&spec.model, &resolved).await?;
        let digest = resolved.digest;
        let new = CollectionSpec {
            name: shadow.clone(),
            model: spec.model.clone(),
            model_digest: digest,
            dimension,
            ..old.clone()
        };
        match backend.collection(&shadow).await? {
            // A shadow left by an earlier run with the same model is resumed; one built for
            // another model or dimension is started over.
            Some(r) if r.spec.model_digest == new.model_digest && r.spec.dimension == new.dimension => {}
            Some(_) => {
                backend.delete_collection(&shadow).await?;
                backend.create_collection(&new).await?;
            }
            None => {
                backend.create_collection(&new).await?;
            }
        }
        let total = backend.collection(&spec.collection).await?.map(|r| r.documents).unwrap_or(0);
        // First pass while writes go on; then, with the collection's writes held off, a catch-up
        // pass, the removal of documents deleted meanwhile, and the swap. Holding the gate means a
        // delete can neither fall between the last comparison and the swap (and be resurrected)
        // nor an upsert embed with the old model and land in the new collection.
        let mut done = copy_changed(c, backend.as_ref(), &spec.collection, &new, &ctx, Some(total)).await?;
        let gate = c.gate(&spec.collection);
        let _swap = tokio::select! {
            g = gate.write() => g,
            () = ctx.cancelled() => return Err(JobFailure::Cancelled),
        };
        done += copy_changed(c, backend.as_ref(), &spec.collection, &new, &ctx, None).await?;
        let mut after: Option<String> = None;
        loop {
            let page = backend.documents_page(&shadow, after.as_deref(), 256).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let ids: Vec<String> = page.into_iter().map(|d| d.id).collect();
            let live = backend.content_hashes(&spec.collection, &ids).await?;
            let dead: Vec<String> = ids.into_iter().filter(|id| !live.contains_key(id)).collect();
            if !dead.is_empty() {
                backend.delete_documents(&shadow, &dead).await?;
            }
        }
        backend.replace_collection(&shadow, &spec.collection).await?;
        c.forget(&spec.collection);
        c.forget(&shadow);
        ctx.update_detail(|d| {
            if let Some(o) = d.as_object_mut() {
                o.insert("documents_embedded".into(), json!(done));
            }
        });
        Ok(())
    }
}
