//! What a job is as watchers and the edge see it, and the queue's errors.

use ondevice_store::StoreError;

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for a slot of its class.
    Queued,
    /// Running.
    Running,
    /// Finished its work.
    Succeeded,
    /// Gave up; see the error.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

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

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a job is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, once known.
    pub total: Option<u64>,
    /// What a unit is: `bytes`, `tensors`, `documents`, `files` ...
    pub unit: String,
    /// What the job is doing now, for people.
    pub message: Option<String>,
}

/// A job as watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    /// Job id.
    pub id: String,
    /// Kind, such as `pull`.
    pub kind: String,
    /// State.
    pub state: JobState,
    /// Progress.
    pub progress: Progress,
    /// Why it failed.
    pub error: Option<String>,
    /// Kind-specific detail (a JSON object the kind defines).
    pub detail: serde_json::Value,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
}

/// A failure of the queue itself (the failure of a job is its `error`).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job has this id (finished jobs are pruned after a while).
    #[error("no job {0}: see `ondevice jobs list`")]
    NotFound(String),
    /// The job already finished, so it cannot be cancelled.
    #[error("job {id} already {state}")]
    Finished {
        /// Job id.
        id: String,
        /// Its state.
        state: JobState,
    },
    /// No kind of this name is registered with the queue.
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    /// The spec cannot be encoded or decoded.
    #[error("job spec of kind {kind}: {source}")]
    Spec {
        /// The kind.
        kind: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The daemon is stopping: no new jobs start.
    #[error("the daemon is stopping: start the job again after it restarts")]
    ShuttingDown,
    /// The job table failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
