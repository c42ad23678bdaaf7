//! Pulls as one kind of background job (`ondevice-jobs`): the `pull` kind downloads a catalog
//! entry or a URL into the registry; [`Pulls`] resolves what to pull and submits the job. One pull
//! per model at a time (the model name is the dedup key), in the `downloads` resource class.
//! The download's chunk bookkeeping ([`ChunkState`]) is the job's checkpoint, so a pull resumes
//! after a restart, even after `kill -9`, where it was.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ondevice_jobs::{
    BoxFuture, CancelReason, JobContext, JobError, JobFailure, JobKind, JobSnapshot, Jobs, JobsConfig, ResourceClass,
};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogSource};
use crate::download::{ChunkState, Download, DownloadError, Hooks, Progress, Source, Tuning, blocking};
use crate::fetch::Fetcher;
use crate::quota::{QuotaError, QuotaPolicy};
use crate::reference::{DEFAULT_TAG, Digest, ModelRef, RefError, sanitize_name};
use crate::safety::{UrlError, parse_url, redact_url};
use crate::{Registry, RegistryError};

/// How pulls run (from `[registry]`).
#[derive(Debug, Clone, Default)]
pub struct PullConfig {
    /// Download tuning.
    pub tuning: Tuning,
    /// Space rules.
    pub quota: QuotaPolicy,
    /// Catalogs after the bundled one.
    pub catalogs: Vec<CatalogSource>,
}

/// A pull that could not be started or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A name is invalid.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// The URL or its destination is refused.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The name is not in any catalog.
    #[error("model {name} is not in the catalog: see `ondevice models list --available`, or pull an http(s) URL")]
    NotInCatalog {
        /// The name.
        name: String,
    },
    /// The download failed.
    #[error("pull of {model} failed: {source}")]
    Download {
        /// The model.
        model: String,
        /// Why.
        source: DownloadError,
    },
    /// It does not fit.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// Registering failed (for example the file is not GGUF).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The job queue failed.
    #[error(transparent)]
    Jobs(#[from] JobError),
}

/// The persisted request of a pull job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullSpec {
    /// `name:tag` to register.
    pub model: String,
    /// Where from: `catalog:NAME` or the URL (redacted).
    pub source: String,
    /// Mirrors, tried in order.
    pub urls: Vec<String>,
    /// Size, when the catalog says.
    pub size: Option<u64>,
    /// Digest, when the catalog says.
    pub sha256: Option<String>,
    /// License, when the catalog says.
    pub license: Option<String>,
}

/// The `detail` of a pull job (JSON): what the pull API showed before jobs were generic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullDetail {
    /// The model being pulled, `name:tag`.
    pub model: String,
    /// Where from: `catalog:NAME` or the URL (query hidden).
    pub source: String,
    /// Bytes to download, once known.
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// Bytes downloaded so far.
    #[serde(default)]
    pub done_bytes: u64,
    /// Recent download speed.
    #[serde(default)]
    pub bytes_per_second: u64,
    /// The registered digest, on success.
    #[serde(default)]
    pub digest: Option<String>,
}

impl PullDetail {
    /// The pull detail of a job snapshot (defaults where the JSON lacks a field).
    pub fn of(job: &JobSnapshot) -> PullDetail {
        let mut d: PullDetail = serde_json::from_value(job.detail.clone()).unwrap_or_default();
        d.done_bytes = job.progress.done;
        d.total_bytes = job.progress.total;
        d
    }
}

struct PullShared {
    registry: Arc<Registry>,
    fetcher: Fetcher,
    config: PullConfig,
}

/// The `pull` job kind.
pub struct PullKind {
    shared: PullShared,
}

impl std::fmt::Debug for PullKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullKind").finish_non_exhaustive()
    }
}

impl PullKind {
    /// The kind, downloading into `registry` through `fetcher`.
    pub fn new(registry: Arc<Registry>, fetcher: Fetcher, config: PullConfig) -> Arc<PullKind> {
        Arc::new(PullKind { shared: PullShared { registry, fetcher, config } })
    }
}

impl JobKind for PullKind {
    const KIND: &'static str = "pull";
    type Spec = PullSpec;

    fn dedup_key(&self, spec: &PullSpec) -> Option<String> {
        Some(spec.model.clone())
    }

    fn class(&self, _spec: &PullSpec) -> ResourceClass {
        ResourceClass::Downloads
    }

    fn initial_detail(&self, spec: &PullSpec) -> serde_json::Value {
        let d = PullDetail {
            model: spec.model.clone(),
            source: spec.source.clone(),
            total_bytes: spec.size,
            ..PullDetail::default()
        };
        serde_json::to_value(d).unwrap_or_default()
    }

    async fn run(self: Arc<Self>, spec: PullSpec, ctx: JobContext) -> Result<(), JobFailure> {
        let inner = &self.shared;
        let chunks: ChunkState = match ctx.checkpoint() {
            Some(bytes) => serde_json::from_slice(bytes).unwrap_or_else(|e| {
                tracing::warn!(job = %ctx.id(), error = %e, "unreadable pull checkpoint; starting over");
                ChunkState::default()
            }),
            None => ChunkState::default(),
        };
        if chunks.total.is_some() {
            tracing::info!(job = %ctx.id(), model = %spec.model, done = chunks.done_bytes(), "resuming pull");
        }
        ctx.progress(chunks.done_bytes(), chunks.total.or(spec.size), "bytes");
        let result = execute(&self, &spec, &ctx, chunks).await;
        inner.registry.release(ctx.id());
        match result {
            Ok(digest) => {
                tracing::info!(job = %ctx.id(), model = %spec.model, %digest, "pull finished");
                ctx.update_detail(|d| {
                    d["digest"] = serde_json::Value::String(digest.to_string());
                    d["bytes_per_second"] = 0.into();
                });
                Ok(())
            }
            Err(PullError::Download { source: DownloadError::Cancelled, .. }) => {
                if ctx.cancel_reason() == Some(CancelReason::User) {
                    let partial = inner.registry.partial_path(ctx.id());
                    let _ = blocking(move || std::fs::remove_file(partial)).await;
                }
                Err(JobFailure::Cancelled)
            }
            Err(e) => {
                let partial = inner.registry.partial_path(ctx.id());
                let _ = blocking(move || std::fs::remove_file(partial)).await;
                ctx.update_detail(|d| d["bytes_per_second"] = 0.into());
                Err(JobFailure::Failed(e.to_string()))
            }
        }
    }
}

/// The merged catalog and when it was loaded.
type CachedCatalog = (Instant, Arc<Catalog>);

/// Starts pulls: resolves a catalog name or URL into a [`PullSpec`] and submits the `pull` job.
/// Cheap to clone.
#[derive(Clone)]
pub struct Pulls {
    kind: Arc<PullKind>,
    jobs: Jobs,
    catalog: Arc<tokio::sync::Mutex<Option<CachedCatalog>>>,
}

impl std::fmt::Debug for Pulls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pulls").finish_non_exhaustive()
    }
}

impl Pulls {
    /// Pulls through `jobs`, a queue `kind` is registered with.
    pub fn new(kind: Arc<PullKind>, jobs: Jobs) -> Pulls {
        Pulls { kind, jobs, catalog: Arc::new(tokio::sync::Mutex::new(None)) }
    }

    /// A queue of its own with only the pull kind (for tools and tests that pull without the daemon).
    pub async fn start(
        registry: Arc<Registry>,
        fetcher: Fetcher,
        config: PullConfig,
        jobs: JobsConfig,
        shutdown: CancellationToken,
    ) -> Result<Pulls, PullError> {
        let store = registry.store().clone();
        let kind = PullKind::new(registry, fetcher, config);
        let queue = Jobs::builder(store, jobs).kind(kind.clone()).start(shutdown).await?;
        Ok(Pulls::new(kind, queue))
    }

    /// The queue the pulls run in.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// The merged catalog (cached for a minute).
    pub async fn catalog(&self) -> Arc<Catalog> {
        let mut cached = self.catalog.lock().await;
        if let Some((at, c)) = cached.as_ref() {
            if at.elapsed() < Duration::from_secs(60) {
                return c.clone();
            }
        }
        let mut sources = vec![CatalogSource::Bundled];
        sources.extend(self.kind.shared.config.catalogs.iter().cloned());
        let c = Arc::new(Catalog::load(&sources, &self.kind.shared.fetcher).await);
        *cached = Some((Instant::now(), c.clone()));
        c
    }

    /// Starts a pull of a catalog name or an http(s) URL, registered as `name` (default: the
    /// catalog name, or the URL's file name). A pull of a model that is already being pulled
    /// returns that job.
    pub async fn pull(&self, target: &str, name: Option<ModelRef>) -> Result<JobSnapshot, PullError> {
        let spec = if target.contains("://") {
            let url = parse_url(target)?;
            self.kind.shared.fetcher.policy().check_url(&url).await?;
            let model = match name {
                Some(n) => n,
                None => {
                    let file = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or("model");
                    let stem = file.strip_suffix(".gguf").unwrap_or(file);
                    ModelRef::Named { name: sanitize_name(stem), tag: DEFAULT_TAG.to_owned() }
                }
            };
            PullSpec {
                model: named(&model)?.to_string(),
                source: redact_url(&url),
                urls: vec![url.to_string()],
                size: None,
                sha256: None,
                license: None,
            }
        } else {
            let wanted: ModelRef = target.parse()?;
            named(&wanted)?;
            let catalog = self.catalog().await;
            let entry = catalog.get(&wanted).ok_or_else(|| PullError::NotInCatalog { name: wanted.to_string() })?;
            let model = name.unwrap_or_else(|| wanted.clone());
            PullSpec {
                model: named(&model)?.to_string(),
                source: format!("catalog:{}", entry.name),
                urls: entry.file.urls.iter().map(ToString::to_string).collect(),
                size: Some(entry.file.size),
                sha256: Some(entry.file.digest.to_string()),
                license: entry.license.clone(),
            }
        };
        let job = self.jobs.submit::<PullKind>(&spec).await?;
        tracing::info!(job = %job.id, model = %spec.model, source = %spec.source, "pull submitted");
        Ok(job)
    }
}

/// What the edge needs to start pulls (object-safe; the daemon wires [`Pulls`]).
pub trait PullService: Send + Sync {
    /// See [`Pulls::pull`].
    fn pull<'a>(&'a self, target: &'a str, name: Option<ModelRef>) -> BoxFuture<'a, Result<JobSnapshot, PullError>>;
    /// See [`Pulls::catalog`].
    fn catalog(&self) -> BoxFuture<'_, Arc<Catalog>>;
}

impl PullService for Pulls {
    fn pull<'a>(&'a self, target: &'a str, name: Option<ModelRef>) -> BoxFuture<'a, Result<JobSnapshot, PullError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = Pulls::pull(self, target, name).await;
            crate::metrics::record(crate::metrics::Op::Pull, result.is_ok(), started.elapsed());
            result
        })
    }

    fn catalog(&self) -> BoxFuture<'_, Arc<Catalog>> {
        Box::pin(Pulls::catalog(self))
    }
}

fn named(r: &ModelRef) -> Result<&ModelRef, PullError> {
    match r {
        ModelRef::Named { .. } => Ok(r),
        ModelRef::Digest(_) => {
            Err(RefError { input: r.to_string(), reason: "a pull needs a name:tag or a URL, not a digest" }.into())
        }
    }
}

struct JobHooks {
    kind: Arc<PullKind>,
    ctx: JobContext,
    model: String,
}

impl Hooks for JobHooks {
    fn reserve(&self, bytes: u64) -> Result<(), String> {
        reserve(&self.kind.shared, self.ctx.id(), &self.model, bytes).map_err(|e| e.to_string())
    }

    fn chunk_done(&self, state: &ChunkState) {
        self.ctx.progress(state.done_bytes(), state.total, "bytes");
        let saved = serde_json::to_vec(state)
            .map_err(|e| e.to_string())
            .and_then(|cp| self.ctx.save_checkpoint(&cp).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::warn!(job = %self.ctx.id(), error = %e, "cannot record download progress");
        }
    }
}

/// Reserves `bytes` for a job under the quota and the free disk space (shared with every job that
/// writes into the store: [`Registry::reserve`]). Blocking.
fn reserve(inner: &PullShared, id: &str, model: &str, bytes: u64) -> Result<(), PullError> {
    let on_disk = std::fs::metadata(inner.registry.partial_path(id)).map(|m| m.len()).unwrap_or(0);
    inner.registry.reserve(id, model, bytes, on_disk, inner.registry.partials_dir(), &inner.config.quota).map_err(|e| {
        match e {
            crate::quota::ReserveError::Quota(q) => PullError::Quota(q),
            crate::quota::ReserveError::Registry(r) => PullError::Registry(r),
        }
    })
}

async fn execute(
    kind: &Arc<PullKind>,
    spec: &PullSpec,
    ctx: &JobContext,
    chunks: ChunkState,
) -> Result<Digest, PullError> {
    let (inner, id) = (&kind.shared, ctx.id());
    let model: ModelRef = spec.model.parse()?;
    let digest: Option<Digest> = spec.sha256.as_deref().map(str::parse).transpose()?;
    // Content we already hold is registered without a download.
    if let Some(d) = digest.filter(|d| inner.registry.blobs().contains(d)) {
        let (reg, m, src, lic) = (inner.registry.clone(), model.clone(), spec.source.clone(), spec.license.clone());
        blocking(move || reg.register_existing(d, &m, &src, lic)).await?;
        return Ok(d);
    }
    let mirrors: Vec<Url> = spec.urls.iter().map(|u| parse_url(u)).collect::<Result<_, _>>()?;
    let source = Source { mirrors, size: spec.size, digest };
    let progress = Arc::new(Progress::default());
    let hooks: Arc<dyn Hooks> = Arc::new(JobHooks { kind: kind.clone(), ctx: ctx.clone(), model: spec.model.clone() });
    let path = inner.registry.partial_path(id);
    let ticker = tokio::spawn(report_progress(ctx.clone(), progress.clone()));
    let dl = Download {
        fetcher: &inner.fetcher,
        source: &source,
        tuning: &inner.config.tuning,
        path: &path,
        hooks,
        progress,
        cancel: ctx.cancel_token().clone(),
    };
    let started = Instant::now();
    let done = dl.run(chunks).await;
    let downloaded = started.elapsed();
    ticker.abort();
    let done = done.map_err(|source| PullError::Download { model: spec.model.clone(), source })?;
    let (reg, m, src, lic) = (inner.registry.clone(), model, spec.source.clone(), spec.license.clone());
    let p = path.clone();
    let started = Instant::now();
    blocking(move || reg.register_download(&p, done.digest, &m, &src, lic)).await?;
    // Where a slow pull spent its time: the transfer (hashed as it goes), or making the blob
    // durable and registering it.
    tracing::debug!(job = %id, bytes = done.size, ?downloaded, registered = ?started.elapsed(), "pull timings");
    Ok(done.digest)
}

/// Publishes progress to watchers four times a second, with a smoothed speed in the detail.
async fn report_progress(ctx: JobContext, progress: Arc<Progress>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), progress.done.load(Ordering::Relaxed));
    let mut speed = 0f64;
    loop {
        tick.tick().await;
        let done = progress.done.load(Ordering::Relaxed);
        let total = progress.total.load(Ordering::Relaxed);
        let dt = last.0.elapsed().as_secs_f64();
        if dt > 0.0 {
            let inst = done.saturating_sub(last.1) as f64 / dt;
            speed = if speed == 0.0 { inst } else { 0.7 * speed + 0.3 * inst };
        }
        last = (Instant::now(), done);
        let known = ctx.snapshot().progress.total;
        ctx.progress(done, if total > 0 { Some(total) } else { known }, "bytes");
        ctx.update_detail(|d| d["bytes_per_second"] = (speed as u64).into());
    }
}
