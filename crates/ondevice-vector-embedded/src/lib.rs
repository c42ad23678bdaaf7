//! The embedded vector backend (the default): zero setup, inside `$ONDEVICE_HOME`.
//!
//! SQLite (through `ondevice-store`, the only SQLite owner) is the source of truth for collections,
//! documents, metadata, chunk texts and embeddings; a write is acknowledged once its transaction
//! commits, so it survives `kill -9`. Each collection's HNSW graph (`hnsw.rs`, ondevice's own)
//! lives in memory and in a checksummed file under `vectors/` (`index.rs`), updated after every
//! commit and saved every [`SAVE_EVERY`] changes and on [`VectorBackend::flush`]; at open a file
//! that is behind replays the change log and one that is damaged is rebuilt.
//!
//! Filtered queries pick their plan from the number of chunks the filter passes: few → exact
//! distances over those chunks; many → HNSW search with the filter applied inside the graph walk,
//! falling back to exact when the walk finds fewer than `k`. Either way `k` hits come back when at
//! least `k` chunks pass. Unfiltered queries on a small collection ([`EXACT_SCAN_COMPONENTS`])
//! scan every vector too.

#![warn(missing_docs)]

mod hnsw;
mod index;
mod metric;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ondevice_store::{Store, VectorDocInput, VectorFilterValue};
use ondevice_vector::{
    BoxFuture, CollectionRecord, CollectionSpec, DocumentWrite, Filter, Hit, Metadata, Scalar, StoredDocument,
    VectorBackend, VectorError, VectorQuery, check_vector, validate_document_id, validate_query,
};

pub use index::IndexOpen;
use index::Loaded;

/// Reads an index file's bytes as a collection with `distance` and the dimension the file
/// declares would, and when they are accepted, walks the graph once: the number of live vectors,
/// or why the bytes were refused. For the fuzz target (`fuzz/fuzz_targets/vector_index.rs`): any
/// input must give one of the two, never a panic or an out-of-bounds walk.
#[doc(hidden)]
pub fn check_index_file(bytes: &[u8], distance: ondevice_vector::Distance) -> Result<usize, String> {
    let dim = bytes.get(12..16).map_or(1, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let params = hnsw::Params { space: metric::Space::of(distance), dim, m: 16, ef_construction: 128, ef_search: 16 };
    let g = hnsw::Hnsw::from_bytes(bytes, params)?;
    let q = vec![0.5f32; g.dimensions()];
    let _ = g.search(&q, 4);
    let _ = g.exact_search(&q, 2);
    Ok(g.len())
}

/// The backend's name.
pub const BACKEND: &str = "embedded";

/// The index is saved after this many changes (a kill before then replays them at the next open).
pub const SAVE_EVERY: u64 = 50_000;

/// A filter passing at most this many chunks is answered by exact distances.
pub const EXACT_LIMIT: usize = 20_000;

/// An unfiltered query over a collection of at most this many vector components (chunks ×
/// dimension) scans every vector instead of walking the graph: about a million multiply-adds,
/// a fraction of a millisecond, which is what a graph walk costs too, and the answer is exact.
pub const EXACT_SCAN_COMPONENTS: usize = 1 << 20;

/// Extra candidates asked of the index, for chunks deleted between the index read and the row read.
const SLACK: usize = 8;

pub(crate) fn backend_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> VectorError {
    VectorError::backend(BACKEND, e)
}

/// Little-endian `f32`s.
pub(crate) fn encode_embedding(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode_embedding(b: &[u8]) -> Result<Vec<f32>, VectorError> {
    if b.len() % 4 != 0 {
        return Err(backend_err(format!("stored embedding has {} bytes, not a multiple of 4", b.len())));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    store: Arc<Store>,
    dir: PathBuf,
    /// Indexes in memory, by collection name.
    open: Mutex<HashMap<String, Arc<Loaded>>>,
}

/// The embedded backend. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VectorError> + Send + 'static,
) -> Result<T, VectorError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(backend_err(format!("blocking task stopped: {e}"))),
    }
}

fn filter_conditions(filter: &Filter) -> Vec<ondevice_store::VectorFilterCondition> {
    filter
        .conditions
        .iter()
        .map(|(k, values)| {
            let values = values
                .iter()
                .map(|v| match v {
                    Scalar::String(s) => VectorFilterValue::Text(s.clone()),
                    Scalar::Number(n) => VectorFilterValue::Number(*n),
                    Scalar::Bool(b) => VectorFilterValue::Bool(*b),
                })
                .collect();
            (k.clone(), values)
        })
        .collect()
}

impl EmbeddedBackend {
    /// A backend over `store`, keeping index files in `dir` (created, mode 0700 on Unix).
    pub fn open(store: Arc<Store>, dir: &Path) -> Result<EmbeddedBackend, VectorError> {
        std::fs::create_dir_all(dir).map_err(|e| VectorError::Io { path: dir.display().to_string(), source: e })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(EmbeddedBackend {
            inner: Arc::new(Inner { store, dir: dir.to_path_buf(), open: Mutex::new(HashMap::new()) }),
        })
    }

    /// How the collection's index was brought into memory (opening it now if needed).
    pub async fn index_open_state(&self, name: &str) -> Result<IndexOpen, VectorError> {
        let this = self.clone();
        let name = name.to_owned();
        blocking(move || Ok(this.loaded(&name)?.opened.clone())).await
    }

    /// The distance kernels the indexes use on this CPU (`"avx2+fma"` or usearch's portable ones).
    pub fn distance_kernel() -> &'static str {
        metric::kernel_name()
    }

    /// The index search alone: the ids and distances of the `k` chunks nearest to `vector`, without
    /// reading their rows (what an ANN library's own benchmark measures; for benchmarks and
    /// diagnostics: a query answers with [`VectorBackend::query`]). Blocks the calling thread.
    pub fn nearest_chunk_ids(&self, name: &str, vector: &[f32], k: usize) -> Result<Vec<(i64, f32)>, VectorError> {
        let l = self.loaded(name)?;
        check_vector(&l.spec, vector)?;
        let vector = metric::unit(l.spec.distance, vector.to_vec());
        let index = l.index.read().unwrap_or_else(|e| e.into_inner());
        Ok(index.search(&vector, k).into_iter().map(|(k, d)| (k as i64, d)).collect())
    }

    /// The index file of a collection (for tests and diagnostics).
    pub fn index_file(&self, name: &str) -> Result<Option<PathBuf>, VectorError> {
        let row = self.inner.store.vector_collection(name).map_err(backend_err)?;
        Ok(row.map(|r| index::index_path(&self.inner.dir, r.id)))
    }

    /// The loaded index of a collection, opening it first.
    fn loaded(&self, name: &str) -> Result<Arc<Loaded>, VectorError> {
        let mut open = lock(&self.inner.open);
        if let Some(l) = open.get(name) {
            return Ok(l.clone());
        }
        let row = self
            .inner
            .store
            .vector_collection(name)
            .map_err(backend_err)?
            .ok_or_else(|| VectorError::NotFound(name.to_owned()))?;
        let loaded = Arc::new(Loaded::open(&self.inner.store, &self.inner.dir, &row)?);
        open.insert(name.to_owned(), loaded.clone());
        Ok(loaded)
    }

    fn record(&self, row: ondevice_store::VectorCollectionRow) -> Result<CollectionRecord, VectorError> {
        let mut spec: CollectionSpec = serde_json::from_str(&row.spec)
            .map_err(|e| backend_err(format!("collection {:?} has an unreadable spec: {e}", row.name)))?;
        spec.name = row.name.clone(); // a replaced collection keeps the name it took over
        let index_bytes = lock(&self.inner.open)
            .get(&row.name)
            .map(|l| l.bytes())
            .or_else(|| std::fs::metadata(index::index_path(&self.inner.dir, row.id)).ok().map(|m| m.len()));
        Ok(CollectionRecord {
            spec,
            backend: BACKEND,
            documents: row.documents as u64,
            chunks: row.chunks as u64,
            index_bytes,
            created_at: row.created_at,
        })
    }

    fn upsert_blocking(&self, name: &str, docs: Vec<DocumentWrite>) -> Result<(), VectorError> {
        let l = self.loaded(name)?;
        let mut inputs = Vec::with_capacity(docs.len());
        let mut vectors = Vec::new();
        for d in docs {
            validate_document_id(&d.id)?;
            let mut chunks = Vec::with_capacity(d.chunks.len());
            for c in d.chunks {
                check_vector(&l.spec, &c.embedding)?;
                chunks.push((c.text, encode_embedding(&c.embedding)));
                vectors.push(metric::unit(l.spec.distance, c.embedding));
            }
            let metadata = serde_json::Value::Object(d.metadata).to_string();
            inputs.push(VectorDocInput {
                doc_id: d.id,
                source: d.source,
                content_hash: d.content_hash,
                metadata,
                chunks,
            });
        }
        let changes;
        {
            let _w = lock(&l.write);
            let out = self.inner.store.vector_upsert(l.id, &inputs, now()).map_err(backend_err)?;
            changes = (out.removed.len() + out.added.len()) as u64;
            let mut index = l.index.write().unwrap_or_else(|e| e.into_inner());
            for id in &out.removed {
                index.remove(*id as u64);
            }
            let items: Vec<(u64, Vec<f32>)> = out.added.iter().map(|id| *id as u64).zip(vectors).collect();
            index::add_all(&mut index, &items)?;
            l.applied.store(out.head_seq, Ordering::SeqCst);
        }
        if l.unsaved.fetch_add(changes, Ordering::SeqCst) + changes >= SAVE_EVERY {
            l.save(&self.inner.store)?;
        }
        Ok(())
    }

    fn delete_blocking(&self, name: &str, ids: &[String]) -> Result<u64, VectorError> {
        let l = self.loaded(name)?;
        let _w = lock(&l.write);
        let out = self.inner.store.vector_delete_documents(l.id, ids).map_err(backend_err)?;
        let mut index = l.index.write().unwrap_or_else(|e| e.into_inner());
        for id in &out.removed {
            index.remove(*id as u64);
        }
        l.applied.store(out.head_seq, Ordering::SeqCst);
        l.unsaved.fetch_add(out.removed.len() as u64, Ordering::SeqCst);
        Ok(out.existed)
    }

    fn query_blocking(&self, name: &str, q: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        let l = self.loaded(name)?;
        validate_query(&l.spec, q)?;
        let distance = l.spec.distance;
        let want = q.k + SLACK;
        // The query as the index compares it (unit length for cosine: `metric.rs`).
        let unit = metric::unit(distance, q.vector.clone());
        let exact = |ids: &[i64]| -> Result<Vec<(u64, f32)>, VectorError> {
            let index = l.index.read().unwrap_or_else(|e| e.into_inner());
            let mut scored = Vec::with_capacity(ids.len());
            for &id in ids {
                if let Some(v) = index.get(id as u64) {
                    scored.push((id as u64, distance.distance(&q.vector, &v)));
                }
            }
            scored.sort_by(|a, b| a.1.total_cmp(&b.1));
            scored.truncate(want);
            Ok(scored)
        };
        let found: Vec<(u64, f32)> = if q.filter.is_empty() {
            let index = l.index.read().unwrap_or_else(|e| e.into_inner());
            if index.len().saturating_mul(index.dimensions()) <= EXACT_SCAN_COMPONENTS {
                index.exact_search(&unit, want)
            } else {
                index.search(&unit, want)
            }
        } else {
            let ids =
                self.inner.store.vector_filtered_chunk_ids(l.id, &filter_conditions(&q.filter)).map_err(backend_err)?;
            if ids.len() <= EXACT_LIMIT.max(q.k) {
                exact(&ids)?
            } else {
                let set: HashSet<u64> = ids.iter().map(|i| *i as u64).collect();
                let walked = {
                    let index = l.index.read().unwrap_or_else(|e| e.into_inner());
                    index.search_filtered(&unit, want, |key| set.contains(&key))
                };
                if walked.len() < q.k.min(ids.len()) { exact(&ids)? } else { walked }
            }
        };
        // Rows for the nearest `k` first, and for every candidate the index's rounding could have
        // put behind the `k`-th (its distance within `metric::rounding` of it), so the exact
        // re-score decides near ties; the other candidates only when some of those were deleted
        // or rewritten since the index read. One statement per batch, rows borrowed from SQLite:
        // only what a hit keeps is copied.
        let mut hits = Vec::with_capacity(q.k);
        let mut next = 0;
        let mut keys = Vec::with_capacity(q.k);
        let mut stored = Vec::with_capacity(q.vector.len());
        let first = match found.get(q.k.saturating_sub(1)) {
            Some(&(_, kth)) => {
                let tie = kth + metric::rounding(distance, kth);
                q.k + found[q.k..].iter().take_while(|(_, d)| *d <= tie).count()
            }
            None => found.len(),
        };
        while hits.len() < q.k && next < found.len() {
            let take = if next == 0 { first } else { q.k - hits.len() };
            let batch = &found[next..(next + take).min(found.len())];
            next += batch.len();
            keys.clear();
            keys.extend(batch.iter().map(|(k, _)| *k as i64));
            self.inner
                .store
                .vector_chunks_with(l.id, &keys, |row| {
                    let Some(&(_, d)) = batch.iter().find(|(k, _)| *k as i64 == row.id) else { return };
                    let metadata: Metadata = serde_json::from_str(row.metadata).unwrap_or_default();
                    if !q.filter.matches(&metadata) {
                        return; // rewritten between the id read and the row read
                    }
                    // The exact distance from the stored embedding (the index's may be rounded:
                    // `metric.rs`); the index's when the row's embedding is unreadable.
                    let d = if row.embedding.len() == q.vector.len() * 4 {
                        stored.clear();
                        stored.extend(
                            row.embedding.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                        );
                        distance.distance(&q.vector, &stored)
                    } else {
                        d
                    };
                    hits.push(Hit {
                        document_id: row.doc_id.to_owned(),
                        chunk: row.seq as u32,
                        text: row.text.to_owned(),
                        source: row.source.map(str::to_owned),
                        metadata,
                        score: distance.score(d),
                        distance: d,
                    });
                })
                .map_err(backend_err)?;
        }
        // Exact ties in a stable order: by document, then chunk.
        hits.sort_by(|a, b| {
            a.distance.total_cmp(&b.distance).then_with(|| (&a.document_id, a.chunk).cmp(&(&b.document_id, b.chunk)))
        });
        hits.truncate(q.k);
        Ok(hits)
    }

    fn flush_blocking(&self) -> Result<(), VectorError> {
        let loaded: Vec<Arc<Loaded>> = lock(&self.inner.open).values().cloned().collect();
        for l in loaded {
            if l.unsaved.load(Ordering::SeqCst) > 0 {
                l.save(&self.inner.store)?;
            }
        }
        Ok(())
    }
}

impl VectorBackend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn create_collection<'a>(
        &'a self,
        spec: &'a CollectionSpec,
    ) -> BoxFuture<'a, Result<CollectionRecord, VectorError>> {
        let this = self.clone();
        let spec = spec.clone();
        Box::pin(blocking(move || {
            ondevice_vector::validate_stored_name(&spec.name)?;
            if spec.dimension == 0 || spec.dimension > 16_384 {
                return Err(VectorError::InvalidRequest(format!(
                    "dimension {} is out of range: use 1 to 16384",
                    spec.dimension
                )));
            }
            let json = serde_json::to_string(&spec).map_err(backend_err)?;
            let store = &this.inner.store;
            store
                .vector_create_collection(&spec.name, &json, now())
                .map_err(backend_err)?
                .ok_or_else(|| VectorError::Exists(spec.name.clone()))?;
            // A stale in-memory entry of a collection removed by another path is dropped.
            lock(&this.inner.open).remove(&spec.name);
            let row = store
                .vector_collection(&spec.name)
                .map_err(backend_err)?
                .ok_or_else(|| VectorError::NotFound(spec.name.clone()))?;
            this.record(row)
        }))
    }

    fn collection<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<CollectionRecord>, VectorError>> {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(blocking(move || match this.inner.store.vector_collection(&name).map_err(backend_err)? {
            Some(row) => this.record(row).map(Some),
            None => Ok(None),
        }))
    }

    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionRecord>, VectorError>> {
        let this = self.clone();
        Box::pin(blocking(move || {
            let rows = this.inner.store.vector_collections().map_err(backend_err)?;
            rows.into_iter().map(|r| this.record(r)).collect()
        }))
    }

    fn delete_collection<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, VectorError>> {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(blocking(move || {
            let loaded = lock(&this.inner.open).remove(&name);
            let _w = loaded.as_ref().map(|l| lock(&l.write));
            match this.inner.store.vector_delete_collection(&name).map_err(backend_err)? {
                Some(id) => {
                    index::remove_files(&this.inner.dir, id);
                    Ok(true)
                }
                None => Ok(false),
            }
        }))
    }

    fn replace_collection<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), VectorError>> {
        let this = self.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        Box::pin(blocking(move || {
            let incoming = this.loaded(&from)?;
            // Save the new index first so the switch leaves a current file behind.
            incoming.save(&this.inner.store)?;
            let mut open = lock(&this.inner.open);
            let old = this
                .inner
                .store
                .vector_replace_collection(&from, &to)
                .map_err(backend_err)?
                .ok_or_else(|| VectorError::NotFound(from.clone()))?;
            open.remove(&from);
            open.remove(&to);
            drop(open);
            if let Some(old) = old {
                index::remove_files(&this.inner.dir, old);
            }
            Ok(())
        }))
    }

    fn upsert<'a>(&'a self, collection: &'a str, docs: Vec<DocumentWrite>) -> BoxFuture<'a, Result<(), VectorError>> {
        let this = self.clone();
        let name = collection.to_owned();
        Box::pin(blocking(move || this.upsert_blocking(&name, docs)))
    }

    fn delete_documents<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, VectorError>> {
        let this = self.clone();
        let name = collection.to_owned();
        let ids = ids.to_vec();
        Box::pin(blocking(move || this.delete_blocking(&name, &ids)))
    }

    fn content_hashes<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, VectorError>> {
        let this = self.clone();
        let name = collection.to_owned();
        let ids = ids.to_vec();
        Box::pin(blocking(move || {
            let row =
                this.inner.store.vector_collection(&name).map_err(backend_err)?.ok_or(VectorError::NotFound(name))?;
            Ok(this.inner.store.vector_content_hashes(row.id, &ids).map_err(backend_err)?.into_iter().collect())
        }))
    }

    fn documents_page<'a>(
        &'a self,
        collection: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredDocument>, VectorError>> {
        let this = self.clone();
        let name = collection.to_owned();
        let after = after.map(str::to_owned);
        Box::pin(blocking(move || {
            let row =
                this.inner.store.vector_collection(&name).map_err(backend_err)?.ok_or(VectorError::NotFound(name))?;
            let page = this.inner.store.vector_documents_page(row.id, after.as_deref(), limit).map_err(backend_err)?;
            Ok(page
                .into_iter()
                .map(|d| StoredDocument {
                    id: d.doc_id,
                    source: d.source,
                    content_hash: d.content_hash,
                    metadata: serde_json::from_str(&d.metadata).unwrap_or_default(),
                    chunks: d.chunks,
                })
                .collect())
        }))
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a VectorQuery,
    ) -> BoxFuture<'a, Result<Vec<Hit>, VectorError>> {
        // A query is a short blocking call (index search and a few row reads). On a multi-thread
        // runtime it runs in place (`block_in_place`: the worker hands its other tasks to another
        // thread meanwhile), borrowing the query: that saves the hop to a blocking-pool thread and
        // back, a large part of a sub-millisecond query, and keeps the index's upper layers in this
        // core's cache. Elsewhere (a current-thread runtime) it goes to the blocking pool like
        // every other call.
        Box::pin(async move {
            if let Ok(tokio::runtime::RuntimeFlavor::MultiThread) =
                tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor())
            {
                return tokio::task::block_in_place(|| self.query_blocking(collection, query));
            }
            let this = self.clone();
            let name = collection.to_owned();
            let query = query.clone();
            blocking(move || this.query_blocking(&name, &query)).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        let this = self.clone();
        Box::pin(blocking(move || this.flush_blocking()))
    }
}
