//! One collection's HNSW graph (`hnsw.rs`) and its files: `<id>.hnsw` and `<id>.meta.json`, which
//! records the change-log position the file is current with, its vector count and the SHA-256 of
//! the index file. Opening verifies the checksum, replays the log when the file is behind and
//! rebuilds from SQLite when the file is missing, damaged, ahead of the database or older than the
//! pruned log, and when more of its nodes are removed ones than live ones (a rebuild compacts).
//! Saving writes both files to temporaries, fsyncs and renames (index first, then meta), so a crash
//! at any point leaves a pair that verifies or one that is rebuilt.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::hnsw::{Hnsw, Params};
use crate::metric::Space;
use crate::{backend_err, decode_embedding};
use ondevice_store::{Store, VectorCollectionRow};
use ondevice_vector::{CollectionSpec, VectorError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How an index came to be in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOpen {
    /// A new, empty collection.
    Fresh,
    /// Loaded from its file, which was current.
    Loaded,
    /// Loaded from its file, which was behind: `replayed` changes of the log applied.
    CaughtUp {
        /// Changes replayed.
        replayed: usize,
    },
    /// Rebuilt from the database.
    Rebuilt {
        /// Why the file could not be used.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    seq: i64,
    count: u64,
    dimension: u32,
    sha256: String,
}

/// 2: cosine collections hold unit vectors in the index (`metric.rs`); 3: as half floats; 4: the
/// graph is ondevice's own (`hnsw.rs`) instead of usearch's. A file of an older format is rebuilt
/// at open.
const META_FORMAT: u32 = 4;

/// A loaded file with more removed nodes than this and than live ones is rebuilt, compacted.
const COMPACT_AFTER: usize = 1024;

pub(crate) struct Loaded {
    pub id: i64,
    pub spec: CollectionSpec,
    pub index: RwLock<Hnsw>,
    /// The change-log position the in-memory index reflects.
    pub applied: AtomicI64,
    /// Changes since the last save.
    pub unsaved: AtomicU64,
    /// Serialises writers (database commit + index update) and saves.
    pub write: Mutex<()>,
    pub opened: IndexOpen,
    dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The graph parameters of a collection.
fn params(spec: &CollectionSpec) -> Params {
    Params {
        space: Space::of(spec.distance),
        dim: spec.dimension as usize,
        m: spec.index.m as usize,
        ef_construction: spec.index.ef_construction as usize,
        ef_search: spec.index.ef_search as usize,
    }
}

/// A new empty index for `spec`.
fn new_index(spec: &CollectionSpec) -> Result<Hnsw, VectorError> {
    let index = Hnsw::new(params(spec));
    if index.dimensions() != spec.dimension as usize {
        return Err(backend_err(format!(
            "collection {:?} has {} dimensions; the embedded index holds at most {} (use the pgvector backend or \
             a smaller embedding model)",
            spec.name,
            spec.dimension,
            crate::hnsw::MAX_DIM
        )));
    }
    Ok(index)
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io_err(path: &Path, e: std::io::Error) -> VectorError {
    VectorError::Io { path: path.display().to_string(), source: e }
}

pub(crate) fn index_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.hnsw"))
}

/// Where format 3 and older kept the graph (usearch's file); removed once a new file is saved.
fn legacy_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.usearch"))
}

fn meta_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.meta.json"))
}

/// Removes a collection's files.
pub(crate) fn remove_files(dir: &Path, id: i64) {
    for p in [index_path(dir, id), meta_path(dir, id), legacy_path(dir, id)] {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove vector index file");
        }
    }
}

/// Adds vectors (replacing keys already there).
pub(crate) fn add_all(index: &mut Hnsw, items: &[(u64, Vec<f32>)]) -> Result<(), VectorError> {
    if let Some((k, v)) = items.iter().find(|(_, v)| v.len() != index.dimensions()) {
        return Err(backend_err(format!(
            "chunk {k} has an embedding of {} components, its collection {}: the database is damaged",
            v.len(),
            index.dimensions()
        )));
    }
    index.reserve(items.len());
    for (k, v) in items {
        index.add(*k, v);
    }
    Ok(())
}

impl Loaded {
    /// Brings a collection's index into memory (see the module docs).
    pub fn open(store: &Store, dir: &Path, row: &VectorCollectionRow) -> Result<Loaded, VectorError> {
        let spec: CollectionSpec = serde_json::from_str(&row.spec)
            .map_err(|e| backend_err(format!("collection {:?} has an unreadable spec: {e}", row.name)))?;
        let (index, applied, opened) = match Self::from_file(store, dir, row, &spec) {
            Ok((index, applied, opened)) => (index, applied, opened),
            Err(reason) if reason.is_empty() && row.chunks == 0 => {
                let index = new_index(&spec)?;
                (index, row.head_seq, IndexOpen::Fresh)
            }
            Err(reason) => {
                let reason = if reason.is_empty() { "no index file".to_string() } else { reason };
                tracing::warn!(collection = %row.name, %reason, "rebuilding vector index from the database");
                let index = Self::rebuild(store, row, &spec)?;
                (index, row.head_seq, IndexOpen::Rebuilt { reason })
            }
        };
        let loaded = Loaded {
            id: row.id,
            spec,
            index: RwLock::new(index),
            applied: AtomicI64::new(applied),
            unsaved: AtomicU64::new(0),
            write: Mutex::new(()),
            opened,
            dir: dir.to_path_buf(),
        };
        if matches!(loaded.opened, IndexOpen::Rebuilt { .. } | IndexOpen::CaughtUp { .. }) {
            loaded.save(store)?;
        }
        Ok(loaded)
    }

    /// Loads and verifies the file; `Err("")` when there is none, `Err(reason)` when unusable.
    fn from_file(
        store: &Store,
        dir: &Path,
        row: &VectorCollectionRow,
        spec: &CollectionSpec,
    ) -> Result<(Hnsw, i64, IndexOpen), String> {
        let (ip, mp) = (index_path(dir, row.id), meta_path(dir, row.id));
        let meta_bytes = match std::fs::read(&mp) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ip.exists() => return Err(String::new()),
            Err(e) => return Err(format!("index metadata unreadable: {e}")),
        };
        let meta: Meta = serde_json::from_slice(&meta_bytes).map_err(|e| format!("index metadata damaged: {e}"))?;
        if meta.format != META_FORMAT || meta.dimension != spec.dimension {
            return Err("index metadata is for another format or dimension".into());
        }
        let bytes = std::fs::read(&ip).map_err(|e| format!("index file unreadable: {e}"))?;
        if format!("sha256:{:x}", Sha256::digest(&bytes)) != meta.sha256 {
            return Err("index file checksum mismatch (damaged or partly written)".into());
        }
        if meta.seq > row.head_seq {
            return Err("index file is ahead of the database".into());
        }
        if meta.seq < row.pruned_seq {
            return Err("index file is older than the change log".into());
        }
        let mut index = Hnsw::from_bytes(&bytes, params(spec))?;
        drop(bytes);
        if index.len() as u64 != meta.count {
            return Err("index file does not match its metadata".into());
        }
        if index.removed() > COMPACT_AFTER.max(index.len()) {
            return Err(format!("index file holds {} removed nodes and {} live ones", index.removed(), index.len()));
        }
        index.set_ef_search(spec.index.ef_search as usize);
        let changes = store.vector_changes_after(row.id, meta.seq).map_err(|e| e.to_string())?;
        if changes.is_empty() {
            return Ok((index, meta.seq, IndexOpen::Loaded));
        }
        // The last change per chunk decides; removed first, then the added ones still stored.
        let mut last: HashMap<i64, bool> = HashMap::new();
        for c in &changes {
            last.insert(c.chunk_id, c.added);
        }
        let mut adds = Vec::new();
        for (&id, &added) in &last {
            index.remove(id as u64);
            if added && let Some(bytes) = store.vector_embedding(row.id, id).map_err(|e| e.to_string())? {
                let v = decode_embedding(&bytes).map_err(|e| e.to_string())?;
                adds.push((id as u64, crate::metric::unit(spec.distance, v)));
            }
        }
        add_all(&mut index, &adds).map_err(|e| e.to_string())?;
        let head = changes.last().map(|c| c.seq).unwrap_or(meta.seq).max(row.head_seq);
        Ok((index, head, IndexOpen::CaughtUp { replayed: changes.len() }))
    }

    fn rebuild(store: &Store, row: &VectorCollectionRow, spec: &CollectionSpec) -> Result<Hnsw, VectorError> {
        let mut index = new_index(spec)?;
        index.reserve(row.chunks.max(0) as usize);
        let mut after = 0;
        loop {
            let page = store.vector_embeddings_page(row.id, after, 8192).map_err(backend_err)?;
            let Some(last) = page.last() else { break };
            after = last.0;
            let items = page
                .iter()
                .map(|(id, b)| Ok((*id as u64, crate::metric::unit(spec.distance, decode_embedding(b)?))))
                .collect::<Result<Vec<_>, VectorError>>()?;
            add_all(&mut index, &items)?;
        }
        Ok(index)
    }

    /// Writes the index and its metadata durably, then prunes the log up to the saved position.
    pub fn save(&self, store: &Store) -> Result<(), VectorError> {
        let (ip, mp) = (index_path(&self.dir, self.id), meta_path(&self.dir, self.id));
        let tmp_i = ip.with_extension("hnsw.tmp");
        let tmp_m = mp.with_extension("json.tmp");
        let (seq, count, unsaved, hash, file) = {
            let _w = lock(&self.write);
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let seq = self.applied.load(Ordering::SeqCst);
            let file = std::fs::File::create(&tmp_i).map_err(|e| io_err(&tmp_i, e))?;
            // Buffered before the hash, so the hash sees large slices.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, Hashing { inner: file, hash: Sha256::new() });
            index.write_to(&mut out).and_then(|()| out.flush()).map_err(|e| io_err(&tmp_i, e))?;
            let Hashing { inner: file, hash } = out.into_inner().map_err(|e| io_err(&tmp_i, e.into_error()))?;
            (seq, index.len() as u64, self.unsaved.load(Ordering::SeqCst), hash, file)
        };
        // Synced with the locks released: writers do not wait on the disk.
        file.sync_all().map_err(|e| io_err(&tmp_i, e))?;
        let sha256 = format!("sha256:{:x}", hash.finalize());
        let meta = Meta { format: META_FORMAT, seq, count, dimension: self.spec.dimension, sha256 };
        let bytes = serde_json::to_vec(&meta).map_err(backend_err)?;
        {
            let mut f = std::fs::File::create(&tmp_m).map_err(|e| io_err(&tmp_m, e))?;
            f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(|e| io_err(&tmp_m, e))?;
        }
        std::fs::rename(&tmp_i, &ip).map_err(|e| io_err(&ip, e))?;
        std::fs::rename(&tmp_m, &mp).map_err(|e| io_err(&mp, e))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let legacy = legacy_path(&self.dir, self.id);
        if let Err(e) = std::fs::remove_file(&legacy)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %legacy.display(), error = %e, "cannot remove the old index file");
        }
        store.vector_prune_changes(self.id, seq).map_err(backend_err)?;
        self.unsaved.fetch_sub(unsaved.min(self.unsaved.load(Ordering::SeqCst)), Ordering::SeqCst);
        Ok(())
    }

    /// Bytes of the index file (or of the index in memory before its first save).
    pub fn bytes(&self) -> u64 {
        match std::fs::metadata(index_path(&self.dir, self.id)) {
            Ok(m) => m.len(),
            Err(_) => self.index.read().unwrap_or_else(|e| e.into_inner()).serialized_len() as u64,
        }
    }
}
