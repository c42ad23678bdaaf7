//! The queue: submit (with dedup), per-class concurrency, run, record, resume at start, prune.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ondevice_store::{JobProgressRow, JobRow, Store};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::BoxFuture;
use crate::context::{CancelReason, JobContext};
use crate::kind::{Erased, ErasedKind, JobFailure, JobKind, ResourceClass};
use crate::types::{JobError, JobFilter, JobSnapshot, JobState, Progress};

/// Limits and retention of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// Jobs of each class running at once: downloads, cpu-heavy, io (0 counts as 1).
    pub downloads: usize,
    /// See `downloads`.
    pub cpu_heavy: usize,
    /// See `downloads`.
    pub io: usize,
    /// Finished jobs older than this are deleted.
    pub keep_finished_for: Duration,
    /// At most this many finished jobs are kept (the newest).
    pub keep_finished: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            downloads: 2,
            cpu_heavy: 1,
            io: 2,
            keep_finished_for: Duration::from_secs(7 * 86400),
            keep_finished: 500,
        }
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: time and a counter still give unique ids within this database.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        b = (n ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A job this daemon is running or will run.
pub(crate) struct LiveJob {
    pub info: watch::Sender<JobSnapshot>,
    pub cancel: CancellationToken,
    pub user_cancelled: AtomicBool,
    dedup_key: Option<String>,
}

struct Inner {
    store: Arc<Store>,
    kinds: HashMap<&'static str, Arc<dyn ErasedKind>>,
    slots: [Arc<Semaphore>; 3],
    config: JobsConfig,
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
    /// Serialises the dedup check with the insert of a new job.
    submit: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The job queue. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("kinds", &self.inner.kinds.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

/// Registers the kinds, then starts the queue.
pub struct JobsBuilder {
    store: Arc<Store>,
    config: JobsConfig,
    kinds: HashMap<&'static str, Arc<dyn ErasedKind>>,
}

impl JobsBuilder {
    /// Adds a kind of job.
    #[must_use]
    pub fn kind<K: JobKind>(mut self, kind: Arc<K>) -> JobsBuilder {
        self.kinds.insert(K::KIND, Arc::new(Erased(kind)));
        self
    }

    /// Starts the queue: prunes old finished jobs and resumes those a previous daemon left
    /// queued or running (from their last checkpoint). Running jobs stop, resumable, when
    /// `shutdown` is cancelled.
    pub async fn start(self, shutdown: CancellationToken) -> Result<Jobs, JobError> {
        let c = &self.config;
        let slots = [c.downloads, c.cpu_heavy, c.io].map(|n| Arc::new(Semaphore::new(n.max(1))));
        let jobs = Jobs {
            inner: Arc::new(Inner {
                store: self.store,
                kinds: self.kinds,
                slots,
                config: self.config,
                live: Mutex::new(HashMap::new()),
                submit: tokio::sync::Mutex::new(()),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        jobs.prune().await;
        let store = jobs.inner.store.clone();
        let rows = blocking(move || store.list_jobs(None, None)).await?;
        for row in rows {
            let state = JobState::parse(&row.state).unwrap_or(JobState::Failed);
            if state.is_terminal() {
                continue;
            }
            let Some(kind) = jobs.inner.kinds.get(row.kind.as_str()).cloned() else {
                tracing::warn!(job = %row.id, kind = %row.kind, "job of a kind this build does not know; marking it failed");
                jobs.fail_stored(&row, format!("unknown job kind {:?}", row.kind)).await;
                continue;
            };
            let spec: serde_json::Value = match serde_json::from_str(&row.spec) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(job = %row.id, error = %e, "unreadable job spec; marking it failed");
                    jobs.fail_stored(&row, format!("unreadable job spec: {e}")).await;
                    continue;
                }
            };
            let class = ResourceClass::ALL.into_iter().find(|c| c.as_str() == row.class).unwrap_or(ResourceClass::Io);
            tracing::info!(job = %row.id, kind = %row.kind, done = row.done, "resuming job");
            let snapshot = snapshot_from_row(&row);
            jobs.spawn(kind, spec, class, row.dedup_key.clone(), snapshot, row.checkpoint.map(Arc::from));
        }
        Ok(jobs)
    }
}

impl Jobs {
    /// A queue over `store`; add kinds, then [`JobsBuilder::start`].
    pub fn builder(store: Arc<Store>, config: JobsConfig) -> JobsBuilder {
        JobsBuilder { store, config, kinds: HashMap::new() }
    }

    /// Submits a job of kind `K`; a job of the same kind and dedup key that is queued or running
    /// is returned instead of a new one.
    pub async fn submit<K: JobKind>(&self, spec: &K::Spec) -> Result<JobSnapshot, JobError> {
        let value = serde_json::to_value(spec).map_err(|source| JobError::Spec { kind: K::KIND.to_owned(), source })?;
        self.submit_value(K::KIND, value).await
    }

    async fn submit_value(&self, kind_name: &str, spec: serde_json::Value) -> Result<JobSnapshot, JobError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        let kind = self.inner.kinds.get(kind_name).cloned().ok_or_else(|| JobError::UnknownKind(kind_name.into()))?;
        let prepared = kind.prepare(&spec).map_err(|source| JobError::Spec { kind: kind_name.to_owned(), source })?;
        let _submitting = self.inner.submit.lock().await;
        if let Some(key) = &prepared.dedup_key {
            let live = lock(&self.inner.live);
            let existing = live.values().find(|j| {
                let s = j.info.borrow();
                j.dedup_key.as_ref() == Some(key) && s.kind == kind_name && !s.state.is_terminal()
            });
            if let Some(j) = existing {
                let s = j.info.borrow().clone();
                tracing::info!(job = %s.id, kind = kind_name, key = %key, "submission joins the job in progress");
                return Ok(s);
            }
        }
        let at = now();
        let row = JobRow {
            id: new_id(),
            kind: kind_name.to_owned(),
            spec: spec.to_string(),
            dedup_key: prepared.dedup_key.clone(),
            class: prepared.class.as_str().to_owned(),
            state: JobState::Queued.as_str().to_owned(),
            error: None,
            done: 0,
            total: None,
            unit: String::new(),
            message: None,
            checkpoint: None,
            detail: prepared.detail.to_string(),
            created_at: at,
            updated_at: at,
            finished_at: None,
        };
        let snapshot = snapshot_from_row(&row);
        let store = self.inner.store.clone();
        let r = row.clone();
        blocking(move || store.insert_job(&r)).await?;
        tracing::info!(job = %row.id, kind = kind_name, class = prepared.class.as_str(), "job queued");
        self.spawn(kind, spec, prepared.class, prepared.dedup_key, snapshot.clone(), None);
        Ok(snapshot)
    }

    fn spawn(
        &self,
        kind: Arc<dyn ErasedKind>,
        spec: serde_json::Value,
        class: ResourceClass,
        dedup_key: Option<String>,
        snapshot: JobSnapshot,
        checkpoint: Option<Arc<[u8]>>,
    ) {
        let id = snapshot.id.clone();
        let (tx, _) = watch::channel(snapshot);
        let job = Arc::new(LiveJob {
            info: tx,
            cancel: self.inner.shutdown.child_token(),
            user_cancelled: AtomicBool::new(false),
            dedup_key,
        });
        lock(&self.inner.live).insert(id.clone(), job.clone());
        let ctx = JobContext { id, job, store: self.inner.store.clone(), checkpoint };
        let jobs = self.clone();
        self.inner.tasks.spawn(async move { jobs.run(kind, spec, class, ctx).await });
    }

    async fn run(self, kind: Arc<dyn ErasedKind>, spec: serde_json::Value, class: ResourceClass, ctx: JobContext) {
        let slots = self.inner.slots[class.index()].clone();
        let permit = tokio::select! {
            p = slots.acquire_owned() => p.ok(),
            () = ctx.job.cancel.cancelled() => None,
        };
        let result = match permit {
            Some(_permit) => {
                self.record(&ctx, JobState::Running, None).await;
                // A panic in a job is that job's failure, not the daemon's.
                let run = tokio::spawn(kind.run(spec, ctx.clone()));
                match run.await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => Err(JobFailure::Failed("the job panicked: this is a bug".into())),
                    Err(_) => Err(JobFailure::Cancelled),
                }
            }
            None => Err(JobFailure::Cancelled),
        };
        let (state, error) = match result {
            Ok(()) => (JobState::Succeeded, None),
            Err(failure) => match (ctx.cancel_reason(), failure) {
                (Some(CancelReason::User), _) => (JobState::Cancelled, None),
                (Some(CancelReason::Shutdown), JobFailure::Cancelled) => {
                    // The job stays queued/running in the table and resumes at the next start.
                    tracing::info!(job = %ctx.id, kind = kind.name(), "job paused for shutdown");
                    lock(&self.inner.live).remove(&ctx.id);
                    return;
                }
                (_, JobFailure::Cancelled) => {
                    (JobState::Failed, Some("the job stopped without being cancelled".into()))
                }
                (_, JobFailure::Failed(msg)) => (JobState::Failed, Some(msg)),
            },
        };
        match &error {
            Some(e) => tracing::warn!(job = %ctx.id, kind = kind.name(), error = %e, "job failed"),
            None => tracing::info!(job = %ctx.id, kind = kind.name(), state = state.as_str(), "job finished"),
        }
        self.record(&ctx, state, error).await;
        lock(&self.inner.live).remove(&ctx.id);
        self.prune().await;
    }

    /// Sets the state (persisted with the progress and detail) and tells watchers.
    async fn record(&self, ctx: &JobContext, state: JobState, error: Option<String>) {
        let at = now();
        let mut snap = ctx.snapshot();
        snap.state = state;
        snap.error = error;
        snap.updated_at = at;
        if state.is_terminal() {
            snap.finished_at = Some(at);
            if state == JobState::Succeeded {
                if let Some(t) = snap.progress.total {
                    snap.progress.done = t;
                }
            }
        }
        let store = self.inner.store.clone();
        let (id, s) = (ctx.id.clone(), snap.clone());
        let stored = blocking(move || {
            let progress = JobProgressRow {
                done: i64::try_from(s.progress.done).unwrap_or(i64::MAX),
                total: s.progress.total.and_then(|t| i64::try_from(t).ok()),
                unit: &s.progress.unit,
                message: s.progress.message.as_deref(),
            };
            store.set_job_state(&id, s.state.as_str(), s.error.as_deref(), progress, &s.detail.to_string(), at)
        })
        .await;
        if let Err(e) = stored {
            tracing::warn!(job = %ctx.id, error = %e, "cannot record job state");
        }
        ctx.job.info.send_replace(snap);
    }

    async fn fail_stored(&self, row: &JobRow, error: String) {
        let store = self.inner.store.clone();
        let row = row.clone();
        let r = blocking(move || {
            let progress = JobProgressRow { done: row.done, total: row.total, unit: &row.unit, message: None };
            store.set_job_state(&row.id, JobState::Failed.as_str(), Some(&error), progress, &row.detail, now())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record job state");
        }
    }

    async fn prune(&self) {
        let c = &self.inner.config;
        let before = now().saturating_sub(i64::try_from(c.keep_finished_for.as_secs()).unwrap_or(i64::MAX));
        let keep = c.keep_finished;
        let store = self.inner.store.clone();
        match blocking(move || store.prune_jobs(before, keep)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "pruned finished jobs"),
            Err(e) => tracing::warn!(error = %e, "cannot prune finished jobs"),
        }
    }

    /// Jobs, oldest first: live ones as they are now, finished ones from the table.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobSnapshot>, JobError> {
        let store = self.inner.store.clone();
        let (kind, state) = (filter.kind.clone(), filter.state);
        let rows = blocking(move || store.list_jobs(kind.as_deref(), state.map(JobState::as_str))).await?;
        let live = lock(&self.inner.live);
        Ok(rows
            .iter()
            .map(|r| live.get(&r.id).map_or_else(|| snapshot_from_row(r), |j| j.info.borrow().clone()))
            // A live job may have moved on from the state the filter matched in the table.
            .filter(|s| filter.state.is_none_or(|st| st == s.state))
            .collect())
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobSnapshot, JobError> {
        if let Some(j) = lock(&self.inner.live).get(id) {
            return Ok(j.info.borrow().clone());
        }
        let store = self.inner.store.clone();
        let key = id.to_owned();
        let row = blocking(move || store.get_job(&key)).await?;
        row.as_ref().map(snapshot_from_row).ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// Live updates of a job (the current value first); `None` for jobs that are not live.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<JobSnapshot>> {
        lock(&self.inner.live).get(id).map(|j| j.info.subscribe())
    }

    /// Cancels a queued or running job and waits (up to 30 s) for it to stop.
    pub async fn cancel(&self, id: &str) -> Result<JobSnapshot, JobError> {
        let job = lock(&self.inner.live).get(id).cloned();
        let Some(job) = job else {
            let s = self.get(id).await?;
            return Err(JobError::Finished { id: id.to_owned(), state: s.state });
        };
        let state = job.info.borrow().state;
        if state.is_terminal() {
            return Err(JobError::Finished { id: id.to_owned(), state });
        }
        job.user_cancelled.store(true, Ordering::SeqCst);
        job.cancel.cancel();
        let mut rx = job.info.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.state.is_terminal())).await;
        let s = job.info.borrow().clone();
        Ok(s)
    }

    /// Waits for running jobs to stop (after the shutdown token was cancelled).
    pub async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn snapshot_from_row(row: &JobRow) -> JobSnapshot {
    JobSnapshot {
        id: row.id.clone(),
        kind: row.kind.clone(),
        state: JobState::parse(&row.state).unwrap_or(JobState::Failed),
        progress: Progress {
            done: u64::try_from(row.done).unwrap_or(0),
            total: row.total.and_then(|t| u64::try_from(t).ok()),
            unit: row.unit.clone(),
            message: row.message.clone(),
        },
        error: row.error.clone(),
        detail: serde_json::from_str(&row.detail).unwrap_or(serde_json::Value::Null),
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ondevice_store::StoreError> + Send + 'static,
) -> Result<T, JobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(JobError::from),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(JobError::ShuttingDown),
    }
}

/// What the edge needs of the queue (object-safe; the daemon wires [`Jobs`]).
pub trait JobService: Send + Sync {
    /// Jobs matching the filter, oldest first.
    fn list<'a>(&'a self, filter: &'a JobFilter) -> BoxFuture<'a, Result<Vec<JobSnapshot>, JobError>>;
    /// One job.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobSnapshot, JobError>>;
    /// Cancels a queued or running job.
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobSnapshot, JobError>>;
    /// Live updates of a job; `None` when it is not live (finished or unknown).
    fn watch(&self, id: &str) -> Option<watch::Receiver<JobSnapshot>>;
}

impl JobService for Jobs {
    fn list<'a>(&'a self, filter: &'a JobFilter) -> BoxFuture<'a, Result<Vec<JobSnapshot>, JobError>> {
        Box::pin(Jobs::list(self, filter))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobSnapshot, JobError>> {
        Box::pin(Jobs::get(self, id))
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<JobSnapshot, JobError>> {
        Box::pin(Jobs::cancel(self, id))
    }

    fn watch(&self, id: &str) -> Option<watch::Receiver<JobSnapshot>> {
        Jobs::watch(self, id)
    }
}
