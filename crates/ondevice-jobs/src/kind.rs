//! The contract a kind of job implements, and its type-erased form the queue stores.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::BoxFuture;
use crate::context::JobContext;

/// Which concurrency limit a job counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceClass {
    /// Network transfers (pulls).
    Downloads,
    /// Work that keeps CPU cores busy (conversion, quantization, embedding).
    CpuHeavy,
    /// Disk-bound work (bundles, exports, verification).
    Io,
}

impl ResourceClass {
    /// Every class.
    pub const ALL: [ResourceClass; 3] = [ResourceClass::Downloads, ResourceClass::CpuHeavy, ResourceClass::Io];

    /// The name stored and shown: `downloads`, `cpu-heavy` or `io`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceClass::Downloads => "downloads",
            ResourceClass::CpuHeavy => "cpu-heavy",
            ResourceClass::Io => "io",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ResourceClass::Downloads => 0,
            ResourceClass::CpuHeavy => 1,
            ResourceClass::Io => 2,
        }
    }
}

/// Why a run ended without success.
#[derive(Debug)]
pub enum JobFailure {
    /// The run stopped because its cancel token fired; the queue decides from the
    /// [`crate::CancelReason`] whether the job is cancelled or resumes at the next start.
    Cancelled,
    /// The job failed; the message is its `error`.
    Failed(String),
}

impl<E: std::error::Error> From<E> for JobFailure {
    fn from(e: E) -> Self {
        JobFailure::Failed(e.to_string())
    }
}

/// A kind of background job.
pub trait JobKind: Send + Sync + 'static {
    /// The kind's name (`pull`, `quantize`, `index`, ...), stored with each job.
    const KIND: &'static str;
    /// The typed request, persisted as JSON so a restarted daemon can run it again.
    type Spec: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Jobs of this kind with the same key are one job while it is queued or running: a second
    /// submission joins the first. `None`: never deduplicated.
    fn dedup_key(&self, spec: &Self::Spec) -> Option<String>;

    /// The concurrency limit the job counts against.
    fn class(&self, spec: &Self::Spec) -> ResourceClass;

    /// The detail a new job starts with (a JSON object; the run updates it through the context).
    fn initial_detail(&self, spec: &Self::Spec) -> serde_json::Value;

    /// Runs the job. `ctx.checkpoint()` holds what the previous run saved, if this is a resume.
    /// Returning `Err(JobFailure::Cancelled)` after the cancel token fired is the expected way to
    /// stop; the queue records a user's cancel and keeps a shutdown's job resumable.
    fn run(self: Arc<Self>, spec: Self::Spec, ctx: JobContext) -> impl Future<Output = Result<(), JobFailure>> + Send;
}

/// A kind with its spec as JSON, as the queue stores it.
pub(crate) trait ErasedKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn prepare(&self, spec: &serde_json::Value) -> Result<Prepared, serde_json::Error>;
    fn run(&self, spec: serde_json::Value, ctx: JobContext) -> BoxFuture<'static, Result<(), JobFailure>>;
}

/// What the queue needs to know of a new job before it runs.
pub(crate) struct Prepared {
    pub dedup_key: Option<String>,
    pub class: ResourceClass,
    pub detail: serde_json::Value,
}

pub(crate) struct Erased<K>(pub Arc<K>);

impl<K: JobKind> ErasedKind for Erased<K> {
    fn name(&self) -> &'static str {
        K::KIND
    }

    fn prepare(&self, spec: &serde_json::Value) -> Result<Prepared, serde_json::Error> {
        let spec = K::Spec::deserialize(spec)?;
        Ok(Prepared {
            dedup_key: self.0.dedup_key(&spec),
            class: self.0.class(&spec),
            detail: self.0.initial_detail(&spec),
        })
    }

    fn run(&self, spec: serde_json::Value, ctx: JobContext) -> BoxFuture<'static, Result<(), JobFailure>> {
        let kind = self.0.clone();
        Box::pin(async move {
            let spec =
                K::Spec::deserialize(spec).map_err(|e| JobFailure::Failed(format!("unreadable job spec: {e}")))?;
            kind.run(spec, ctx).await
        })
    }
}

use serde::Deserialize as _;
