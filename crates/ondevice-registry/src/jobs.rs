//! The download queue: pull jobs persisted in the store, run at most `max_concurrent_jobs` at a
//! time, deduplicated (a second pull of a model while one is queued or running joins it), with
//! live progress for watchers, cancel, and resume of unfinished jobs when the daemon starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ondevice_store::{JobRow, Store, StoreError};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogSource};
use crate::download::{ChunkState, Download, DownloadError, Hooks, Progress, Source, Tuning, blocking};
use crate::fetch::Fetcher;
use crate::quota::{QuotaError, QuotaPolicy, free_space};
use crate::reference::{DEFAULT_TAG, Digest, ModelRef, RefError, sanitize_name};
use crate::safety::{UrlError, parse_url, redact_url};
use crate::{Registry, RegistryError};

/// How pulls run (from `[registry]`).
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Download tuning.
    pub tuning: Tuning,
    /// Jobs downloading at once; more wait queued.
    pub max_concurrent_jobs: usize,
    /// Space rules.
    pub quota: QuotaPolicy,
    /// Catalogs after the bundled one.
    pub catalogs: Vec<CatalogSource>,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            tuning: Tuning::default(),
            max_concurrent_jobs: 2,
            quota: QuotaPolicy::default(),
            catalogs: Vec::new(),
        }
    }
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
    /// The job table failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such job.
    #[error("no job {0}: see `GET /api/v1/jobs`")]
    NoSuchJob(String),
    /// The job is already finished.
    #[error("job {id} already {state}")]
    Finished {
        /// Job id.
        id: String,
        /// Its state.
        state: &'static str,
    },
}

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a slot.
    Queued,
    /// Downloading.
    Running,
    /// Registered.
    Succeeded,
    /// Gave up; see the error.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }

    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// What a watcher sees of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// Job id.
    pub id: String,
    /// `pull`.
    pub kind: &'static str,
    /// The model being pulled (`name:tag`).
    pub model: String,
    /// Where from: a catalog name or a URL (redacted).
    pub source: String,
    /// State.
    pub state: JobState,
    /// Bytes to download, once known.
    pub total_bytes: Option<u64>,
    /// Bytes downloaded.
    pub done_bytes: u64,
    /// Recent speed.
    pub bytes_per_second: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The digest registered, on success.
    pub digest: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The persisted request of a pull job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PullSpec {
    model: String,
    source: String,
    urls: Vec<String>,
    size: Option<u64>,
    sha256: Option<String>,
    license: Option<String>,
}

struct Job {
    info: watch::Sender<JobInfo>,
    cancel: CancellationToken,
    user_cancelled: AtomicBool,
}

struct Inner {
    registry: Arc<Registry>,
    store: Arc<Store>,
    fetcher: Fetcher,
    config: PullConfig,
    slots: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    reservations: Mutex<HashMap<String, u64>>,
    catalog: tokio::sync::Mutex<Option<(Instant, Arc<Catalog>)>>,
    /// Serialises the check for a running pull of a model with the start of a new one.
    submit: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

/// The job queue. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Jobs {
    /// Starts the queue and resumes the jobs a previous daemon left queued or running. Running
    /// jobs stop (and stay resumable) when `shutdown` is cancelled.
    pub async fn start(
        registry: Arc<Registry>,
        fetcher: Fetcher,
        config: PullConfig,
        shutdown: CancellationToken,
    ) -> Result<Jobs, PullError> {
        let store = registry.store().clone();
        let jobs = Jobs {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_concurrent_jobs.max(1))),
                registry,
                store: store.clone(),
                fetcher,
                config,
                jobs: Mutex::new(HashMap::new()),
                reservations: Mutex::new(HashMap::new()),
                catalog: tokio::sync::Mutex::new(None),
                submit: tokio::sync::Mutex::new(()),
                shutdown,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        };
        let rows = blocking(move || store.list_jobs()).await?;
        let week_ago = now() - 7 * 86400;
        let store = jobs.inner.store.clone();
        let _ = blocking(move || store.prune_jobs(week_ago)).await;
        for row in rows {
            let state = JobState::parse(&row.state);
            if state.is_terminal() {
                continue;
            }
            let Ok(spec) = serde_json::from_str::<PullSpec>(&row.spec) else {
                tracing::warn!(job = %row.id, "unreadable job spec; marking it failed");
                let store = jobs.inner.store.clone();
                let id = row.id.clone();
                let _ =
                    blocking(move || store.set_job_state(&id, "failed", Some("unreadable job record"), None, now()))
                        .await;
                continue;
            };
            let chunks = ChunkState {
                total: row.total_bytes.and_then(|t| u64::try_from(t).ok()),
                chunk_size: row.chunk_size.and_then(|c| u64::try_from(c).ok()).unwrap_or(0),
                done: row.chunks.clone(),
            };
            tracing::info!(job = %row.id, model = %spec.model, done = chunks.done_bytes(), "resuming pull");
            let info = info_from_row(&row, &spec);
            jobs.spawn(row.id.clone(), spec, info, chunks);
        }
        Ok(jobs)
    }

    /// The merged catalog (cached for a minute).
    pub async fn catalog(&self) -> Arc<Catalog> {
        let mut cached = self.inner.catalog.lock().await;
        if let Some((at, c)) = cached.as_ref() {
            if at.elapsed() < Duration::from_secs(60) {
                return c.clone();
            }
        }
        let mut sources = vec![CatalogSource::Bundled];
        sources.extend(self.inner.config.catalogs.iter().cloned());
        let c = Arc::new(Catalog::load(&sources, &self.inner.fetcher).await);
        *cached = Some((Instant::now(), c.clone()));
        c
    }

    /// Starts a pull of a catalog name or an http(s) URL, registered as `name` (default: the
    /// catalog name, or the URL's file name). A pull of a model that is already being pulled
    /// returns that job.
    pub async fn pull(&self, target: &str, name: Option<ModelRef>) -> Result<JobInfo, PullError> {
        let spec = if target.contains("://") {
            let url = parse_url(target)?;
            self.inner.fetcher.policy().check_url(&url).await?;
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
        // One download per model: join a job that is queued or running.
        let _submitting = self.inner.submit.lock().await;
        if let Some(existing) = self.active_for(&spec.model) {
            tracing::info!(model = %spec.model, job = %existing.id, "pull joins the running job");
            return Ok(existing);
        }
        let id = new_id();
        let at = now();
        let row = JobRow {
            id: id.clone(),
            kind: "pull".into(),
            spec: serde_json::to_string(&spec).unwrap_or_default(),
            state: "queued".into(),
            error: None,
            total_bytes: spec.size.and_then(|s| i64::try_from(s).ok()),
            done_bytes: 0,
            chunk_size: None,
            chunks: Vec::new(),
            result: None,
            created_at: at,
            updated_at: at,
        };
        let info = info_from_row(&row, &spec);
        let store = self.inner.store.clone();
        blocking(move || store.insert_job(&row)).await?;
        tracing::info!(job = %id, model = %spec.model, source = %spec.source, "pull queued");
        self.spawn(id, spec, info.clone(), ChunkState::default());
        Ok(info)
    }

    fn active_for(&self, model: &str) -> Option<JobInfo> {
        let jobs = lock(&self.inner.jobs);
        jobs.values().map(|j| j.info.borrow().clone()).find(|i| i.model == model && !i.state.is_terminal())
    }

    fn spawn(&self, id: String, spec: PullSpec, info: JobInfo, chunks: ChunkState) {
        let (tx, _) = watch::channel(info);
        let job = Arc::new(Job {
            info: tx,
            cancel: self.inner.shutdown.child_token(),
            user_cancelled: AtomicBool::new(false),
        });
        lock(&self.inner.jobs).insert(id.clone(), job.clone());
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move { run(inner, id, spec, job, chunks).await });
    }

    /// Every job this daemon knows: live ones and finished ones from the table, oldest first.
    pub async fn list(&self) -> Result<Vec<JobInfo>, PullError> {
        let store = self.inner.store.clone();
        let rows = blocking(move || store.list_jobs()).await?;
        let live = lock(&self.inner.jobs);
        Ok(rows
            .iter()
            .map(|r| match live.get(&r.id) {
                Some(j) => j.info.borrow().clone(),
                None => info_from_stored(r),
            })
            .collect())
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobInfo, PullError> {
        if let Some(j) = lock(&self.inner.jobs).get(id) {
            return Ok(j.info.borrow().clone());
        }
        let store = self.inner.store.clone();
        let key = id.to_owned();
        let row = blocking(move || store.get_job(&key)).await?;
        row.as_ref().map(info_from_stored).ok_or_else(|| PullError::NoSuchJob(id.to_owned()))
    }

    /// Live updates of a job (the current value first); `None` for unknown or old jobs.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<JobInfo>> {
        lock(&self.inner.jobs).get(id).map(|j| j.info.subscribe())
    }

    /// Cancels a queued or running job; its partial file is removed.
    pub async fn cancel(&self, id: &str) -> Result<JobInfo, PullError> {
        let job = lock(&self.inner.jobs).get(id).cloned();
        let Some(job) = job else {
            let info = self.get(id).await?;
            return Err(PullError::Finished { id: id.to_owned(), state: info.state.as_str() });
        };
        let state = job.info.borrow().state;
        if state.is_terminal() {
            return Err(PullError::Finished { id: id.to_owned(), state: state.as_str() });
        }
        job.user_cancelled.store(true, Ordering::SeqCst);
        job.cancel.cancel();
        let mut rx = job.info.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|i| i.state.is_terminal())).await;
        let info = job.info.borrow().clone();
        Ok(info)
    }

    /// Waits for running jobs to stop (after the shutdown token was cancelled).
    pub async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
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

fn info_from_row(row: &JobRow, spec: &PullSpec) -> JobInfo {
    JobInfo {
        id: row.id.clone(),
        kind: "pull",
        model: spec.model.clone(),
        source: spec.source.clone(),
        state: JobState::parse(&row.state),
        total_bytes: row.total_bytes.and_then(|t| u64::try_from(t).ok()),
        done_bytes: u64::try_from(row.done_bytes).unwrap_or(0),
        bytes_per_second: 0,
        error: row.error.clone(),
        digest: row.result.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

fn info_from_stored(row: &JobRow) -> JobInfo {
    let spec = serde_json::from_str::<PullSpec>(&row.spec).unwrap_or(PullSpec {
        model: String::new(),
        source: String::new(),
        urls: Vec::new(),
        size: None,
        sha256: None,
        license: None,
    });
    info_from_row(row, &spec)
}

struct JobHooks {
    inner: Arc<Inner>,
    id: String,
    model: String,
}

impl Hooks for JobHooks {
    fn reserve(&self, bytes: u64) -> Result<(), String> {
        reserve(&self.inner, &self.id, &self.model, bytes).map_err(|e| e.to_string())
    }

    fn chunk_done(&self, state: &ChunkState) {
        let total = state.total.and_then(|t| i64::try_from(t).ok());
        let chunk = i64::try_from(state.chunk_size).ok();
        let done = i64::try_from(state.done_bytes()).unwrap_or(i64::MAX);
        if let Err(e) = self.inner.store.set_job_progress(&self.id, total, chunk, &state.done, done, now()) {
            tracing::warn!(job = %self.id, error = %e, "cannot record download progress");
        }
    }
}

/// Reserves `bytes` for a job under the quota and the free disk space, evicting least recently
/// used models when allowed. Blocking.
fn reserve(inner: &Inner, id: &str, model: &str, bytes: u64) -> Result<(), PullError> {
    let policy = &inner.config.quota;
    let mut reservations = lock(&inner.reservations);
    let others: u64 = reservations.iter().filter(|(k, _)| k.as_str() != id).map(|(_, v)| v).sum();
    if let Some(quota) = policy.quota {
        loop {
            let used = inner.registry.blob_bytes()?;
            if used.saturating_add(others).saturating_add(bytes) <= quota {
                break;
            }
            if policy.evict && inner.registry.evict_lru()?.is_some() {
                continue;
            }
            let available = quota.saturating_sub(used.saturating_add(others));
            return Err(QuotaError::Exceeded { model: model.to_owned(), needed: bytes, available, quota }.into());
        }
    }
    let dir = inner.registry.partials_dir();
    let on_disk = std::fs::metadata(inner.registry.partial_path(id)).map(|m| m.len()).unwrap_or(0);
    let still_needed = bytes.saturating_sub(on_disk).saturating_add(others);
    while let Some(free) = free_space(dir) {
        if free >= still_needed.saturating_add(policy.min_free) {
            break;
        }
        if policy.evict && inner.registry.evict_lru()?.is_some() {
            continue;
        }
        return Err(QuotaError::DiskFull {
            model: model.to_owned(),
            needed: still_needed,
            free,
            min_free: policy.min_free,
            path: dir.display().to_string(),
        }
        .into());
    }
    reservations.insert(id.to_owned(), bytes);
    Ok(())
}

async fn set_state(inner: &Inner, id: &str, job: &Job, state: JobState, error: Option<String>, digest: Option<String>) {
    let store = inner.store.clone();
    let (key, e, d) = (id.to_owned(), error.clone(), digest.clone());
    if let Err(err) =
        blocking(move || store.set_job_state(&key, state.as_str(), e.as_deref(), d.as_deref(), now())).await
    {
        tracing::warn!(job = %id, error = %err, "cannot record job state");
    }
    job.info.send_modify(|i| {
        i.state = state;
        i.error = error;
        i.digest = digest;
        i.updated_at = now();
        if state == JobState::Succeeded {
            i.done_bytes = i.total_bytes.unwrap_or(i.done_bytes);
        }
        i.bytes_per_second = 0;
    });
}

async fn run(inner: Arc<Inner>, id: String, spec: PullSpec, job: Arc<Job>, chunks: ChunkState) {
    let permit = tokio::select! {
        p = inner.slots.clone().acquire_owned() => p.ok(),
        () = job.cancel.cancelled() => None,
    };
    let result = match permit {
        Some(_permit) => {
            set_state(&inner, &id, &job, JobState::Running, None, None).await;
            execute(&inner, &id, &spec, &job, chunks).await
        }
        None => Err(PullError::Download { model: spec.model.clone(), source: DownloadError::Cancelled }),
    };
    lock(&inner.reservations).remove(&id);
    let user_cancelled = job.user_cancelled.load(Ordering::SeqCst);
    let partial = inner.registry.partial_path(&id);
    match result {
        Ok(digest) => {
            tracing::info!(job = %id, model = %spec.model, %digest, "pull finished");
            set_state(&inner, &id, &job, JobState::Succeeded, None, Some(digest.to_string())).await;
        }
        Err(PullError::Download { source: DownloadError::Cancelled, .. }) if !user_cancelled => {
            // The daemon is stopping: the job stays queued/running in the table and resumes.
            tracing::info!(job = %id, "pull paused for shutdown");
        }
        Err(e) => {
            let state = if user_cancelled { JobState::Cancelled } else { JobState::Failed };
            let msg = if user_cancelled { None } else { Some(e.to_string()) };
            if !user_cancelled {
                tracing::warn!(job = %id, model = %spec.model, error = %e, "pull failed");
            }
            let _ = blocking(move || std::fs::remove_file(partial)).await;
            set_state(&inner, &id, &job, state, msg, None).await;
        }
    }
}

async fn execute(
    inner: &Arc<Inner>,
    id: &str,
    spec: &PullSpec,
    job: &Arc<Job>,
    chunks: ChunkState,
) -> Result<Digest, PullError> {
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
    let hooks: Arc<dyn Hooks> =
        Arc::new(JobHooks { inner: inner.clone(), id: id.to_owned(), model: spec.model.clone() });
    let path = inner.registry.partial_path(id);
    let ticker = tokio::spawn(report_progress(job.clone(), progress.clone()));
    let dl = Download {
        fetcher: &inner.fetcher,
        source: &source,
        tuning: &inner.config.tuning,
        path: &path,
        hooks,
        progress,
        cancel: job.cancel.clone(),
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

/// Publishes progress to watchers four times a second, with a smoothed speed.
async fn report_progress(job: Arc<Job>, progress: Arc<Progress>) {
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
        job.info.send_if_modified(|i| {
            let changed = i.done_bytes != done || (total > 0 && i.total_bytes != Some(total));
            i.done_bytes = done;
            if total > 0 {
                i.total_bytes = Some(total);
            }
            i.bytes_per_second = speed as u64;
            changed
        });
    }
}
