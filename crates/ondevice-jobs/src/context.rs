//! What a running job gets from the queue: progress, detail, checkpoints and its cancel token.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ondevice_store::{JobProgressRow, Store};
use tokio_util::sync::CancellationToken;

use crate::queue::{LiveJob, now};
use crate::types::{JobError, JobSnapshot};

/// Why a job's cancel token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// A user cancelled the job: it ends `cancelled`.
    User,
    /// The daemon is stopping: the job stays resumable and continues at the next start.
    Shutdown,
}

/// The handle a running job reports through. Cheap to clone; usable from blocking threads.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) id: String,
    pub(crate) job: Arc<LiveJob>,
    pub(crate) store: Arc<Store>,
    pub(crate) checkpoint: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").field("id", &self.id).finish_non_exhaustive()
    }
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the previous run of this job saved with [`JobContext::save_checkpoint`], when this
    /// run is a resume.
    pub fn checkpoint(&self) -> Option<&[u8]> {
        self.checkpoint.as_deref()
    }

    /// The token that fires on a user's cancel or a daemon shutdown (see [`JobContext::cancel_reason`]).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.job.cancel
    }

    /// Waits until the job is cancelled.
    pub async fn cancelled(&self) {
        self.job.cancel.cancelled().await;
    }

    /// Why the token fired, or `None` while it has not.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        if !self.job.cancel.is_cancelled() {
            None
        } else if self.job.user_cancelled.load(Ordering::SeqCst) {
            Some(CancelReason::User)
        } else {
            Some(CancelReason::Shutdown)
        }
    }

    /// Publishes progress to watchers (kept in memory; stored with the next checkpoint or state).
    pub fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.job.info.send_if_modified(|s| {
            let changed = s.progress.done != done || s.progress.total != total || s.progress.unit != unit;
            s.progress.done = done;
            s.progress.total = total;
            if s.progress.unit != unit {
                s.progress.unit = unit.to_owned();
            }
            if changed {
                s.updated_at = now();
            }
            changed
        });
    }

    /// Sets the message people see beside the progress (`"converting tensor 12 of 30"`).
    pub fn message(&self, message: impl Into<String>) {
        let message = Some(message.into());
        self.job.info.send_if_modified(|s| {
            let changed = s.progress.message != message;
            s.progress.message = message;
            changed
        });
    }

    /// Changes the kind-specific detail watchers see (stored with the next checkpoint or state).
    pub fn update_detail(&self, f: impl FnOnce(&mut serde_json::Value)) {
        self.job.info.send_modify(|s| f(&mut s.detail));
    }

    /// The job as watchers see it now.
    pub fn snapshot(&self) -> JobSnapshot {
        self.job.info.borrow().clone()
    }

    /// Persists `checkpoint` with the current progress and detail: if the daemon stops (even by
    /// `kill -9`) after this returns, the next run starts with these bytes. Blocking (one small
    /// SQLite write): call it from a blocking thread or through [`JobContext::save_checkpoint_async`].
    pub fn save_checkpoint(&self, checkpoint: &[u8]) -> Result<(), JobError> {
        let s = self.snapshot();
        let detail = s.detail.to_string();
        let progress = JobProgressRow {
            done: i64::try_from(s.progress.done).unwrap_or(i64::MAX),
            total: s.progress.total.and_then(|t| i64::try_from(t).ok()),
            unit: &s.progress.unit,
            message: s.progress.message.as_deref(),
        };
        self.store.set_job_checkpoint(&self.id, checkpoint, progress, &detail, now())?;
        Ok(())
    }

    /// [`JobContext::save_checkpoint`] on the blocking pool.
    pub async fn save_checkpoint_async(&self, checkpoint: Vec<u8>) -> Result<(), JobError> {
        let ctx = self.clone();
        match tokio::task::spawn_blocking(move || ctx.save_checkpoint(&checkpoint)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(JobError::ShuttingDown),
        }
    }
}
