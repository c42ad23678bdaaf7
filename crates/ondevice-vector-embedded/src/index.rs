//! One collection's HNSW index (usearch) and its files: `<id>.usearch` and `<id>.meta.json`, which
//! records the change-log position the file is current with, its vector count and the SHA-256 of
//! the index file. Opening verifies the checksum, replays the log when the file is behind and
//! rebuilds from SQLite when the file is missing, damaged, ahead of the database or older than the
//! pruned log. Saving writes both files to temporaries, fsyncs and renames (index first, then
//! meta), so a crash at any point leaves a pair that verifies or one that is rebuilt.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use ondevice_store::{Store, VectorCollectionRow};
use ondevice_vector::{CollectionSpec, Distance, VectorError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use usearch::{Index, IndexOptions, MetricKind};

use crate::{backend_err, decode_embedding};

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

/// 2: cosine collections hold unit vectors in the index (`metric.rs`); 3: as half floats. A file
/// of an older format is rebuilt at open.
const META_FORMAT: u32 = 3;

pub(crate) struct Loaded {
    pub id: i64,
    pub spec: CollectionSpec,
    pub index: RwLock<Index>,
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

/// A new empty index for `spec`, with this CPU's distance kernel (`metric.rs`).
fn new_index(spec: &CollectionSpec) -> Result<Index, VectorError> {
    let mut index = bare_index(spec)?;
    crate::metric::install(&mut index, spec.distance, spec.dimension as usize);
    Ok(index)
}

/// A new empty index for `spec` with usearch's built-in metric (to `load` a file into, which
/// resets the metric; the kernel is installed after).
fn bare_index(spec: &CollectionSpec) -> Result<Index, VectorError> {
    let metric = match spec.distance {
        Distance::Cosine => MetricKind::Cos,
        Distance::Dot => MetricKind::IP,
        Distance::L2 => MetricKind::L2sq,
    };
    let options = IndexOptions {
        dimensions: spec.dimension as usize,
        metric,
        quantization: crate::metric::scalar_kind(spec.distance),
        connectivity: spec.index.m as usize,
        expansion_add: spec.index.ef_construction as usize,
        expansion_search: spec.index.ef_search as usize,
        multi: false,
    };
    Index::new(&options).map_err(|e| backend_err(format!("cannot create index: {e}")))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

fn io_err(path: &Path, e: std::io::Error) -> VectorError {
    VectorError::Io { path: path.display().to_string(), source: e }
}

pub(crate) fn index_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.usearch"))
}

fn meta_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.meta.json"))
}

/// Removes a collection's files.
pub(crate) fn remove_files(dir: &Path, id: i64) {
    for p in [index_path(dir, id), meta_path(dir, id)] {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove vector index file");
        }
    }
}

/// Grows the index so `extra` more vectors fit.
pub(crate) fn ensure_capacity(index: &Index, extra: usize) -> Result<(), VectorError> {
    let need = index.size() + extra;
    if need > index.capacity() {
        let cap = need.max(index.capacity() * 2).max(1024);
        index.reserve(cap).map_err(|e| backend_err(format!("cannot grow index to {cap}: {e}")))?;
    }
    Ok(())
}

/// Adds vectors, on every core for big batches.
pub(crate) fn add_all(index: &Index, items: &[(u64, Vec<f32>)]) -> Result<(), VectorError> {
    ensure_capacity(index, items.len())?;
    let threads =
        if items.len() < 512 { 1 } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8) };
    let add = |part: &[(u64, Vec<f32>)]| -> Result<(), VectorError> {
        for (k, v) in part {
            if index.contains(*k) {
                index.remove(*k).map_err(|e| backend_err(format!("index remove: {e}")))?;
            }
            index.add(*k, v).map_err(|e| backend_err(format!("index add: {e}")))?;
        }
        Ok(())
    };
    if threads == 1 {
        return add(items);
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(per).map(|part| s.spawn(move || add(part))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
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
    ) -> Result<(Index, i64, IndexOpen), String> {
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
        let sum = sha256_file(&ip).map_err(|e| format!("index file unreadable: {e}"))?;
        if sum != meta.sha256 {
            return Err("index file checksum mismatch (damaged or partly written)".into());
        }
        if meta.seq > row.head_seq {
            return Err("index file is ahead of the database".into());
        }
        if meta.seq < row.pruned_seq {
            return Err("index file is older than the change log".into());
        }
        let mut index = bare_index(spec).map_err(|e| e.to_string())?;
        let path = ip.to_str().ok_or("index path is not UTF-8")?;
        index.load(path).map_err(|e| format!("index file unreadable: {e}"))?;
        crate::metric::install(&mut index, spec.distance, spec.dimension as usize);
        if index.size() as u64 != meta.count || index.dimensions() != spec.dimension as usize {
            return Err("index file does not match its metadata".into());
        }
        index.change_expansion_search(spec.index.ef_search as usize);
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
            if index.contains(id as u64) {
                index.remove(id as u64).map_err(|e| e.to_string())?;
            }
            if added && let Some(bytes) = store.vector_embedding(row.id, id).map_err(|e| e.to_string())? {
                let v = decode_embedding(&bytes).map_err(|e| e.to_string())?;
                adds.push((id as u64, crate::metric::unit(spec.distance, v)));
            }
        }
        add_all(&index, &adds).map_err(|e| e.to_string())?;
        let head = changes.last().map(|c| c.seq).unwrap_or(meta.seq).max(row.head_seq);
        Ok((index, head, IndexOpen::CaughtUp { replayed: changes.len() }))
    }

    fn rebuild(store: &Store, row: &VectorCollectionRow, spec: &CollectionSpec) -> Result<Index, VectorError> {
        let index = new_index(spec)?;
        index
            .reserve((row.chunks as usize).max(1024))
            .map_err(|e| backend_err(format!("cannot reserve index: {e}")))?;
        let mut after = 0;
        loop {
            let page = store.vector_embeddings_page(row.id, after, 8192).map_err(backend_err)?;
            let Some(last) = page.last() else { break };
            after = last.0;
            let items = page
                .iter()
                .map(|(id, b)| Ok((*id as u64, crate::metric::unit(spec.distance, decode_embedding(b)?))))
                .collect::<Result<Vec<_>, VectorError>>()?;
            add_all(&index, &items)?;
        }
        Ok(index)
    }

    /// Writes the index and its metadata durably, then prunes the log up to the saved position.
    pub fn save(&self, store: &Store) -> Result<(), VectorError> {
        let (ip, mp) = (index_path(&self.dir, self.id), meta_path(&self.dir, self.id));
        let tmp_i = ip.with_extension("usearch.tmp");
        let tmp_m = mp.with_extension("json.tmp");
        let (seq, count, unsaved) = {
            let _w = lock(&self.write);
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let seq = self.applied.load(Ordering::SeqCst);
            let path = tmp_i.to_str().ok_or_else(|| backend_err("index path is not UTF-8"))?;
            index.save(path).map_err(|e| backend_err(format!("cannot save index {}: {e}", tmp_i.display())))?;
            (seq, index.size() as u64, self.unsaved.load(Ordering::SeqCst))
        };
        std::fs::File::open(&tmp_i).and_then(|f| f.sync_all()).map_err(|e| io_err(&tmp_i, e))?;
        let sha256 = sha256_file(&tmp_i).map_err(|e| io_err(&tmp_i, e))?;
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
        store.vector_prune_changes(self.id, seq).map_err(backend_err)?;
        self.unsaved.fetch_sub(unsaved.min(self.unsaved.load(Ordering::SeqCst)), Ordering::SeqCst);
        Ok(())
    }

    /// Bytes of the index file (or of the index in memory before its first save).
    pub fn bytes(&self) -> u64 {
        match std::fs::metadata(index_path(&self.dir, self.id)) {
            Ok(m) => m.len(),
            Err(_) => self.index.read().unwrap_or_else(|e| e.into_inner()).serialized_length() as u64,
        }
    }
}
