//! The model registry: which models exist (`name:tag` rows in the store), and their content
//! (content-addressed blobs under `<home>/blobs/`).
//!
//! It imports local GGUF files (validated by `ondevice-gguf` before anything is written), lists,
//! shows and removes models, re-hashes blobs (`verify`) and collects garbage (`gc`, which keeps
//! blobs held by [`roots`]). Pulls come
//! from the [`catalog`] or a URL through the [`jobs`] queue and the resumable, verified
//! [`download`] engine, guarded by [`safety`] (SSRF) and [`quota`] (whose reservations every job
//! writing into the store shares). Content a tool made (a quantization) carries its
//! [`provenance`]: the tool's receipt and the parent model, shown by `show` and kept in bundles.

#![warn(missing_docs)]

pub mod blobs;
pub mod bundle;
pub mod catalog;
pub mod download;
pub mod fetch;
pub mod jobs;
pub mod layout;
pub mod metrics;
pub mod provenance;
pub mod quota;
pub mod reference;
pub mod roots;
pub mod safety;
pub mod service;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ondevice_gguf::{GgufError, GgufFile};
use ondevice_store::{BlobRow, ModelRow, Store, StoreError};

pub use blobs::{BlobError, BlobStore, ImportMode, Stored};
pub use layout::{Layout, LayoutFile, SAFETENSORS_FORMAT};
pub use provenance::Provenance;
pub use quota::ReserveError;
pub use reference::{DEFAULT_TAG, Digest, ModelRef, RefError, sanitize_name};
pub use roots::{BlobRoot, RootOwner, RootOwnerError};
pub use service::{ModelService, RegistryModels};

/// Temporary and partial files younger than this are left alone by [`Registry::gc`]: they may
/// belong to an import or download in progress.
pub const STALE_PARTIAL_AGE: Duration = Duration::from_secs(3600);

/// [`Registry::touch`] writes a model's use time at most this often (seconds).
pub const TOUCH_INTERVAL_S: i64 = 60;

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name, tag or digest is invalid.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// The file to import is not a valid GGUF file; nothing was written.
    #[error("cannot import {}: {source}", path.display())]
    InvalidModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: GgufError,
    },
    /// The directory to import is not a valid Hugging Face safetensors directory; nothing was
    /// written.
    #[error("cannot import {}: {reason}", path.display())]
    InvalidModelDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A multi-file model's layout is malformed, or names files that are not there.
    #[error("{}: {reason}", path.display())]
    InvalidLayout {
        /// The directory imported, or the layout blob.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No model matches the reference.
    #[error("model {reference} not found: see `ondevice models list`")]
    NotFound {
        /// The reference, as given.
        reference: String,
    },
    /// A stored model row has a digest that does not parse.
    #[error("model {model}: stored digest {digest:?} is invalid; remove the model and import it again")]
    BadStoredDigest {
        /// `name:tag`.
        model: String,
        /// The stored value.
        digest: String,
    },
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A bundle is malformed or hostile; nothing was registered.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// A provenance receipt does not describe the content it comes with; nothing was registered.
    #[error("provenance of {digest}: {reason}")]
    InvalidProvenance {
        /// The content.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    /// Model name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// The blob holding the model file.
    pub digest: Digest,
    /// File format (`gguf`).
    pub format: String,
    /// Architecture, e.g. `llama`.
    pub architecture: Option<String>,
    /// Number of parameters.
    pub parameter_count: Option<u64>,
    /// Quantization, e.g. `Q4_1`.
    pub quantization: Option<String>,
    /// Trained context length in tokens.
    pub context_length: Option<u64>,
    /// Size in bytes.
    pub size: u64,
    /// Where it came from, e.g. `import:model.gguf`.
    pub source: String,
    /// License.
    pub license: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// Never evicted.
    pub pinned: bool,
    /// Where the content came from (a quantization's receipt and parent), when recorded.
    pub provenance: Option<Provenance>,
}

impl ModelRecord {
    /// `name:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    fn from_row(row: ModelRow) -> Result<Self, RegistryError> {
        let digest = row.digest.parse().map_err(|_| RegistryError::BadStoredDigest {
            model: format!("{}:{}", row.name, row.tag),
            digest: row.digest.clone(),
        })?;
        let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        Ok(ModelRecord {
            digest,
            format: row.format,
            architecture: row.architecture,
            parameter_count: unsigned(row.parameter_count),
            quantization: row.quantization,
            context_length: unsigned(row.context_length),
            size: u64::try_from(row.size).unwrap_or(0),
            source: row.source,
            license: row.license,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            pinned: row.pinned,
            provenance: None,
            name: row.name,
            tag: row.tag,
        })
    }

    fn to_row(&self) -> ModelRow {
        let signed = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        ModelRow {
            name: self.name.clone(),
            tag: self.tag.clone(),
            digest: self.digest.to_string(),
            format: self.format.clone(),
            architecture: self.architecture.clone(),
            parameter_count: signed(self.parameter_count),
            quantization: self.quantization.clone(),
            context_length: signed(self.context_length),
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            source: self.source.clone(),
            license: self.license.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            pinned: self.pinned,
        }
    }
}

/// The outcome of verifying one model's blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// `name:tag`.
    pub model: String,
    /// The blob checked: the model's own, or the first failing file of a multi-file model.
    pub digest: Digest,
    /// For a multi-file model whose file failed: that file's path in the layout.
    pub file: Option<String>,
    /// What was found.
    pub status: VerifyStatus,
}

/// What [`Registry::verify`] found for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyStatus {
    /// The content hashes to the digest.
    Ok,
    /// The blob file is missing.
    Missing,
    /// The content hashes to something else.
    Corrupt {
        /// The digest of the content found.
        actual: Digest,
    },
    /// The blob could not be read.
    Unreadable {
        /// Why.
        error: String,
    },
}

/// What [`Registry::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs neither a model nor a GC root refers to.
    pub removed_blobs: Vec<Digest>,
    /// Stale temporary and partial files.
    pub removed_partials: Vec<PathBuf>,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// The model registry over one store and one blob directory.
#[derive(Debug)]
pub struct Registry {
    store: Arc<Store>,
    blobs: BlobStore,
    partials: PathBuf,
    /// Serialises imports with `gc`, so gc never sees a blob between its rename and its row.
    /// (In-process only; a second process on the same home is not yet coordinated.)
    write_lock: Mutex<()>,
    /// Names the models a runtime is serving right now; eviction skips them.
    in_use: InUseHook,
    /// Bytes reserved by jobs that are writing into the store (pulls, quantizations), by job id.
    reservations: Mutex<HashMap<String, u64>>,
}

/// Set once, when the daemon wires the registry to the orchestrator.
#[derive(Default)]
struct InUseHook(std::sync::OnceLock<InUse>);

impl std::fmt::Debug for InUseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InUseHook")
    }
}

/// Reports the `name:tag` of every model currently loaded (see [`Registry::set_in_use`]).
pub type InUse = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

impl Registry {
    /// A registry using `store` and the blobs under `<home>/blobs`.
    pub fn new(store: Arc<Store>, home: &Path) -> Result<Self, RegistryError> {
        let partials = home.join("partials");
        std::fs::create_dir_all(&partials).map_err(|source| BlobError::Io {
            op: "create directory",
            path: partials.clone(),
            source,
        })?;
        Ok(Registry {
            store,
            blobs: BlobStore::open(home)?,
            partials,
            write_lock: Mutex::new(()),
            in_use: InUseHook::default(),
            reservations: Mutex::new(HashMap::new()),
        })
    }

    /// Tells the registry which models are loaded, so eviction leaves them alone: a worker maps
    /// its model's blob, so deleting it would free no space until the model is unloaded, and the
    /// next load would fail. Only the first call takes effect.
    pub fn set_in_use(&self, in_use: InUse) {
        let _ = self.in_use.0.set(in_use);
    }

    /// The models loaded right now (empty without [`Registry::set_in_use`]).
    pub(crate) fn in_use(&self) -> Vec<String> {
        self.in_use.0.get().map_or_else(Vec::new, |f| f())
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// `<home>/partials`: downloads in progress, one file per job.
    pub fn partials_dir(&self) -> &Path {
        &self.partials
    }

    /// The partial file of a job (`id` is generated by the job queue: hex only).
    pub fn partial_path(&self, job_id: &str) -> PathBuf {
        self.partials.join(format!("{job_id}{}", blobs::PARTIAL_SUFFIX))
    }

    /// The blobs a model needs: its file, or its layout and every file the layout lists.
    pub(crate) fn referenced_blobs(&self, m: &ModelRecord) -> Result<Vec<Digest>, RegistryError> {
        let mut blobs = vec![m.digest];
        if let Some(layout) = self.layout(m)? {
            blobs.extend(layout.digests());
        }
        Ok(blobs)
    }

    /// Registers a verified download: the partial file is validated as GGUF (nothing is
    /// registered otherwise), moved into the blob store and recorded as `name`.
    pub fn register_download(
        &self,
        partial: &Path,
        digest: Digest,
        name: &ModelRef,
        source: &str,
        license: Option<String>,
    ) -> Result<ModelRecord, RegistryError> {
        let ModelRef::Named { name, tag } = name else {
            return Err(RefError { input: name.to_string(), reason: "a pull needs a name, not a digest" }.into());
        };
        let gguf = GgufFile::open(partial)
            .map_err(|source| RegistryError::InvalidModelFile { path: partial.to_path_buf(), source })?;
        let _guard = self.lock();
        let stored = self.blobs.adopt(partial, &digest)?;
        self.record(name, tag, &gguf, stored, source.to_owned(), license)
    }

    /// Registers `name` for a blob already in the store (a pull of content we hold).
    pub fn register_existing(
        &self,
        digest: Digest,
        name: &ModelRef,
        source: &str,
        license: Option<String>,
    ) -> Result<ModelRecord, RegistryError> {
        let ModelRef::Named { name, tag } = name else {
            return Err(RefError { input: name.to_string(), reason: "a pull needs a name, not a digest" }.into());
        };
        let path = self.blobs.path(&digest);
        let gguf =
            GgufFile::open(&path).map_err(|source| RegistryError::InvalidModelFile { path: path.clone(), source })?;
        let size = std::fs::metadata(&path).map_err(|source| BlobError::Io { op: "stat", path, source })?.len();
        let _guard = self.lock();
        let stored = Stored { digest, size, linked: false, cloned: false, existed: true };
        self.record(name, tag, &gguf, stored, source.to_owned(), license)
    }

    /// Writes the blob and model rows for a stored GGUF blob; on failure a new blob is removed.
    fn record(
        &self,
        name: &str,
        tag: &str,
        gguf: &GgufFile,
        stored: Stored,
        source: String,
        license: Option<String>,
    ) -> Result<ModelRecord, RegistryError> {
        let now = now();
        let record = ModelRecord {
            name: name.to_owned(),
            tag: tag.to_owned(),
            digest: stored.digest,
            format: "gguf".into(),
            architecture: gguf.architecture().map(str::to_owned),
            parameter_count: Some(gguf.parameter_count()),
            quantization: gguf.quantization().map(str::to_owned),
            context_length: gguf.context_length(),
            size: stored.size,
            source,
            license: license.or_else(|| gguf.license().map(str::to_owned)),
            created_at: now,
            last_used_at: None,
            pinned: false,
            provenance: None,
        };
        let record = self.write_rows(record, &[stored])?;
        tracing::info!(model = %record.reference(), digest = %record.digest, "registered model");
        Ok(record)
    }

    /// Writes the blob rows and the model row (keeping the pin of a model it replaces); on
    /// failure the blobs this operation added are removed. The caller holds the write lock.
    fn write_rows(&self, mut record: ModelRecord, stored: &[Stored]) -> Result<ModelRecord, RegistryError> {
        let written = (|| {
            if let Some(old) = self.store.get_model(&record.name, &record.tag)? {
                record.pinned = old.pinned;
            }
            for s in stored {
                let size = i64::try_from(s.size).unwrap_or(i64::MAX);
                self.store.insert_blob(&BlobRow {
                    digest: s.digest.to_string(),
                    size,
                    created_at: record.created_at,
                })?;
            }
            self.store.insert_model(&record.to_row())
        })();
        if let Err(e) = written {
            for s in stored.iter().filter(|s| !s.existed) {
                let _ = self.store.delete_blob(&s.digest.to_string());
            }
            self.forget_new(stored);
            return Err(e.into());
        }
        Ok(record)
    }

    /// Removes the blob files an unfinished operation added (those that did not exist before).
    fn forget_new(&self, stored: &[Stored]) {
        for s in stored.iter().filter(|s| !s.existed) {
            let _ = self.blobs.remove(&s.digest);
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Imports a local GGUF file as `name` (default: from `general.name`, else the file stem).
    /// The file is validated first: an invalid or hostile file writes nothing. The blob is a
    /// copy-on-write clone of the file where the filesystem offers one, else a copy. An existing
    /// `name:tag` is replaced.
    pub fn import_gguf(&self, path: &Path, name: Option<ModelRef>) -> Result<ModelRecord, RegistryError> {
        self.import_gguf_with(path, name, ImportMode::default())
    }

    /// [`Registry::import_gguf`], the file stored as `mode` says.
    pub fn import_gguf_with(
        &self,
        path: &Path,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> Result<ModelRecord, RegistryError> {
        let gguf = GgufFile::open(path)
            .map_err(|source| RegistryError::InvalidModelFile { path: path.to_path_buf(), source })?;
        let (name, tag) = match name {
            Some(ModelRef::Named { name, tag }) => (name, tag),
            Some(r @ ModelRef::Digest(_)) => {
                return Err(RefError { input: r.to_string(), reason: "import needs a name, not a digest" }.into());
            }
            None => {
                let text = gguf
                    .name()
                    .filter(|n| !n.trim().is_empty())
                    .map(str::to_owned)
                    .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                (reference::sanitize_name(&text), DEFAULT_TAG.to_owned())
            }
        };
        let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();

        let _guard = self.lock();
        let stored = self.blobs.import_file(path, mode)?;
        let record = self.record(&name, &tag, &gguf, stored, format!("import:{file_name}"), None)?;
        tracing::info!(
            model = %record.reference(), linked = stored.linked, cloned = stored.cloned, existed = stored.existed,
            "imported model"
        );
        Ok(record)
    }

    /// Imports a local path: a Hugging Face safetensors directory, a bundle written by `export`
    /// (tar), else a GGUF file. Files are cloned or copied, never shared with their owner.
    pub fn import_path(&self, path: &Path, name: Option<ModelRef>) -> Result<ModelRecord, RegistryError> {
        self.import_path_with(path, name, ImportMode::default())
    }

    /// [`Registry::import_path`], files (not bundles, whose blobs are always written) stored as
    /// `mode` says.
    pub fn import_path_with(
        &self,
        path: &Path,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> Result<ModelRecord, RegistryError> {
        if path.is_dir() {
            self.import_hf_dir_with(path, name, mode)
        } else if bundle::is_bundle(path) {
            self.import_bundle(path, name)
        } else {
            self.import_gguf_with(path, name, mode)
        }
    }

    /// Pins (never evicted) or unpins the models a reference names; returns them as they are now.
    pub fn set_pinned(&self, r: &ModelRef, pinned: bool) -> Result<Vec<ModelRecord>, RegistryError> {
        let _guard = self.lock();
        let found = self.resolve(r)?;
        if found.is_empty() {
            return Err(RegistryError::NotFound { reference: r.to_string() });
        }
        let mut out = Vec::with_capacity(found.len());
        for mut m in found {
            self.store.set_model_pinned(&m.name, &m.tag, pinned)?;
            m.pinned = pinned;
            out.push(m);
        }
        Ok(out)
    }

    /// Records that `m` was used now (for least-recently-used eviction). Writes at most once a
    /// minute per model, so a busy model does not cost a database write per request.
    pub fn touch(&self, m: &ModelRecord) -> Result<(), RegistryError> {
        let now = now();
        if m.last_used_at.is_some_and(|t| (0..TOUCH_INTERVAL_S).contains(&(now - t))) {
            return Ok(());
        }
        self.store.touch_model(&m.name, &m.tag, now)?;
        Ok(())
    }

    /// Every model, by name then tag.
    pub fn list(&self) -> Result<Vec<ModelRecord>, RegistryError> {
        let mut models: Vec<ModelRecord> =
            self.store.list_models()?.into_iter().map(ModelRecord::from_row).collect::<Result<_, _>>()?;
        self.attach_provenance(&mut models)?;
        Ok(models)
    }

    /// The models a reference names: one for `name:tag`, every model with that blob for a digest.
    fn resolve(&self, r: &ModelRef) -> Result<Vec<ModelRecord>, RegistryError> {
        let found = match r {
            ModelRef::Named { name, tag } => {
                let mut found: Vec<ModelRecord> =
                    self.store.get_model(name, tag)?.map(ModelRecord::from_row).transpose()?.into_iter().collect();
                self.attach_provenance(&mut found)?;
                found
            }
            ModelRef::Digest(d) => self.list()?.into_iter().filter(|m| m.digest == *d).collect(),
        };
        Ok(found)
    }

    /// One model (for a digest, the first model using that blob).
    pub fn show(&self, r: &ModelRef) -> Result<ModelRecord, RegistryError> {
        self.resolve(r)?.into_iter().next().ok_or_else(|| RegistryError::NotFound { reference: r.to_string() })
    }

    /// Registers the model `from` names under the name `to` as well (same blobs, nothing copied;
    /// Ollama's `copy`). An existing `to` is replaced, keeping its pin; returns the new record.
    pub fn copy(&self, from: &ModelRef, to: &ModelRef) -> Result<ModelRecord, RegistryError> {
        let ModelRef::Named { name, tag } = to else {
            return Err(RefError { input: to.to_string(), reason: "a copy needs a name, not a digest" }.into());
        };
        let _guard = self.lock();
        let source = self.show(from)?;
        let record = ModelRecord {
            name: name.clone(),
            tag: tag.clone(),
            source: format!("copy:{}", source.reference()),
            created_at: now(),
            last_used_at: None,
            pinned: false,
            ..source
        };
        let record = self.write_rows(record, &[])?;
        tracing::info!(from = %from, to = %record.reference(), "copied model");
        Ok(record)
    }

    /// Removes the model rows a reference names (blobs stay until [`Registry::gc`]); returns them.
    pub fn remove(&self, r: &ModelRef) -> Result<Vec<ModelRecord>, RegistryError> {
        let found = self.resolve(r)?;
        if found.is_empty() {
            return Err(RegistryError::NotFound { reference: r.to_string() });
        }
        for m in &found {
            self.store.delete_model(&m.name, &m.tag)?;
        }
        Ok(found)
    }

    /// Re-hashes the blobs of one model (or all), each blob once.
    pub fn verify(&self, r: Option<&ModelRef>) -> Result<Vec<VerifyReport>, RegistryError> {
        let models = match r {
            Some(r) => {
                let found = self.resolve(r)?;
                if found.is_empty() {
                    return Err(RegistryError::NotFound { reference: r.to_string() });
                }
                found
            }
            None => self.list()?,
        };
        let mut seen: HashMap<Digest, VerifyStatus> = HashMap::new();
        let mut check = |d: &Digest| {
            seen.entry(*d)
                .or_insert_with(|| match self.blobs.verify(d) {
                    Ok(()) => VerifyStatus::Ok,
                    Err(BlobError::Missing { .. }) => VerifyStatus::Missing,
                    Err(BlobError::Corrupt { actual, .. }) => VerifyStatus::Corrupt { actual },
                    Err(e) => VerifyStatus::Unreadable { error: e.to_string() },
                })
                .clone()
        };
        let mut reports = Vec::with_capacity(models.len());
        for m in models {
            // The model's own blob (its file, or its layout), then each file of a layout.
            let mut report =
                VerifyReport { model: m.reference(), digest: m.digest, file: None, status: check(&m.digest) };
            if report.status == VerifyStatus::Ok {
                match self.layout(&m) {
                    Ok(None) => {}
                    Ok(Some(layout)) => {
                        for f in &layout.files {
                            let Ok(d) = f.digest.parse::<Digest>() else { continue };
                            let status = check(&d);
                            if status != VerifyStatus::Ok {
                                report = VerifyReport {
                                    model: m.reference(),
                                    digest: d,
                                    file: Some(f.path.clone()),
                                    status,
                                };
                                break;
                            }
                        }
                    }
                    Err(e) => report.status = VerifyStatus::Unreadable { error: e.to_string() },
                }
            }
            if report.status != VerifyStatus::Ok {
                tracing::warn!(model = %m.reference(), digest = %report.digest, file = ?report.file, status = ?report.status, "blob failed verification");
            }
            reports.push(report);
        }
        Ok(reports)
    }

    /// Deletes blobs neither a model nor a GC root ([`roots`]) refers to (rows and files) and
    /// temporary/partial files in `blobs/` older than [`STALE_PARTIAL_AGE`].
    pub fn gc(&self) -> Result<GcReport, RegistryError> {
        self.gc_older_than(STALE_PARTIAL_AGE)
    }

    /// [`Registry::gc`] with another age for temporary/partial files.
    pub fn gc_older_than(&self, partial_age: Duration) -> Result<GcReport, RegistryError> {
        let _guard = self.lock();
        let mut report = GcReport::default();
        let mut referenced: BTreeSet<Digest> = self.rooted_blobs()?;
        for m in self.list()? {
            referenced.extend(self.referenced_blobs(&m)?);
        }
        let scan = self.blobs.scan()?;
        let mut orphans: BTreeSet<Digest> = BTreeSet::new();
        for row in self.store.list_blobs()? {
            // A row whose digest does not parse cannot name a file; drop just the row.
            match row.digest.parse::<Digest>() {
                Ok(d) if referenced.contains(&d) => {}
                Ok(d) => {
                    if self.store.delete_blob(&row.digest)? {
                        orphans.insert(d);
                    }
                }
                Err(_) => {
                    self.store.delete_blob(&row.digest)?;
                }
            }
        }
        for (d, size) in &scan.blobs {
            if !referenced.contains(d) {
                orphans.insert(*d);
                report.freed_bytes += size;
            }
        }
        for d in orphans {
            self.blobs.remove(&d)?;
            self.store.delete_provenance(&d.to_string())?;
            tracing::info!(digest = %d, "removed unreferenced blob");
            report.removed_blobs.push(d);
        }
        for p in scan.partials {
            if p.age >= partial_age {
                match std::fs::remove_file(&p.path) {
                    Ok(()) => {
                        report.freed_bytes += p.size;
                        report.removed_partials.push(p.path);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(BlobError::Io { op: "remove", path: p.path, source }.into()),
                }
            }
        }
        self.gc_partials(&mut report)?;
        Ok(report)
    }
}

impl Registry {
    /// Removes download partials whose job is not queued or running (stale: the job failed, was
    /// cancelled or deleted while the daemon was down).
    fn gc_partials(&self, report: &mut GcReport) -> Result<(), RegistryError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { op, path, source }
        };
        let entries = match std::fs::read_dir(&self.partials) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("read directory", &self.partials)(e).into()),
        };
        for entry in entries {
            let entry = entry.map_err(io("read directory", &self.partials))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(blobs::PARTIAL_SUFFIX).unwrap_or(&name);
            let active = self.store.get_job(id)?.is_some_and(|j| j.state == "queued" || j.state == "running");
            if active {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed stale partial download");
                    report.freed_bytes += size;
                    report.removed_partials.push(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e).into()),
            }
        }
        Ok(())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
