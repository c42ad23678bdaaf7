//! The `diagnostics` job kind: builds a bundle into `$ONDEVICE_HOME/diagnostics/` and records it
//! in the job's detail (`file`, `size`, `sha256`, `download`), plus [`DiagnosticsService`], the
//! contract the edge calls to start one and to find its file for download.
//!
//! What goes into the bundle is the daemon's business ([`BundleMaker`], wired by the binary);
//! this module only runs it as a job. Concurrent requests join the job in progress; the newest
//! [`KEEP_BUNDLES`] bundles are kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ondevice_jobs::{BoxFuture, JobContext, JobError, JobFailure, JobKind, JobSnapshot, Jobs, ResourceClass};
use serde::{Deserialize, Serialize};

use crate::{BundleSummary, DiagError};

/// The job kind's name.
pub const KIND: &str = "diagnostics";
/// Bundles kept in the directory.
pub const KEEP_BUNDLES: usize = 5;

/// Builds a bundle at the given path (the binary implements it over the daemon's services).
pub trait BundleMaker: Send + Sync {
    /// Writes the bundle to `out`.
    fn make(&self, out: PathBuf) -> BoxFuture<'_, Result<BundleSummary, DiagError>>;
}

/// The job's spec (nothing to choose yet; a struct so options can be added compatibly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSpec {}

/// The `diagnostics` kind.
pub struct DiagnosticsKind {
    dir: PathBuf,
    maker: Arc<dyn BundleMaker>,
}

impl DiagnosticsKind {
    /// Bundles go to `home/diagnostics`.
    pub fn new(home: &Path, maker: Arc<dyn BundleMaker>) -> DiagnosticsKind {
        DiagnosticsKind { dir: bundles_dir(home), maker }
    }
}

/// Where bundles made by jobs are kept.
pub fn bundles_dir(home: &Path) -> PathBuf {
    home.join("diagnostics")
}

/// The file name of a job's bundle.
pub fn bundle_file(job_id: &str) -> String {
    format!("ondevice-diagnostics-{job_id}.tar.gz")
}

impl JobKind for DiagnosticsKind {
    const KIND: &'static str = KIND;
    type Spec = BundleSpec;

    fn dedup_key(&self, _: &BundleSpec) -> Option<String> {
        Some("bundle".into())
    }

    fn class(&self, _: &BundleSpec) -> ResourceClass {
        ResourceClass::Io
    }

    fn initial_detail(&self, _: &BundleSpec) -> serde_json::Value {
        serde_json::json!({})
    }

    async fn run(self: Arc<Self>, _: BundleSpec, ctx: JobContext) -> Result<(), JobFailure> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&self.dir).map_err(DiagError::io(&self.dir))?;
        ctx.message("collecting diagnostics");
        ctx.progress(0, Some(1), "bundles");
        let file = bundle_file(ctx.id());
        let out = self.dir.join(&file);
        let made = tokio::select! {
            r = self.maker.make(out.clone()) => r?,
            () = ctx.cancelled() => {
                let _ = std::fs::remove_file(&out);
                return Err(JobFailure::Cancelled);
            }
        };
        let id = ctx.id().to_owned();
        ctx.update_detail(|d| {
            *d = serde_json::json!({
                "file": file,
                "size": made.size,
                "sha256": made.sha256,
                "files": made.files,
                "redactions": made.redactions,
                "download": format!("/api/v1/diagnostics/bundles/{id}"),
            });
        });
        ctx.progress(1, Some(1), "bundles");
        prune(&self.dir);
        Ok(())
    }
}

/// Removes all but the newest [`KEEP_BUNDLES`] bundles.
fn prune(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, p) in files.into_iter().skip(KEEP_BUNDLES) {
        let _ = std::fs::remove_file(p);
    }
}

/// What the edge needs: start a bundle job, find a finished job's bundle.
pub trait DiagnosticsService: Send + Sync {
    /// Starts (or joins) a `diagnostics` job.
    fn start_bundle(&self) -> BoxFuture<'_, Result<JobSnapshot, JobError>>;
    /// The bundle file of a job, if the job made one that is still kept.
    fn bundle_path(&self, job_id: &str) -> Result<PathBuf, DiagError>;
}

/// [`DiagnosticsService`] over the job queue.
#[derive(Clone)]
pub struct Diagnostics {
    jobs: Jobs,
    dir: PathBuf,
}

impl Diagnostics {
    /// The service for the home `home`; `jobs` must have [`DiagnosticsKind`] registered.
    pub fn new(jobs: Jobs, home: &Path) -> Diagnostics {
        Diagnostics { jobs, dir: bundles_dir(home) }
    }
}

impl DiagnosticsService for Diagnostics {
    fn start_bundle(&self) -> BoxFuture<'_, Result<JobSnapshot, JobError>> {
        Box::pin(async move { self.jobs.submit::<DiagnosticsKind>(&BundleSpec::default()).await })
    }

    fn bundle_path(&self, job_id: &str) -> Result<PathBuf, DiagError> {
        // Job ids are hex; anything else never names a file.
        if job_id.is_empty() || job_id.len() > 64 || !job_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(DiagError::NoBundle(job_id.to_owned()));
        }
        let p = self.dir.join(bundle_file(job_id));
        if p.is_file() { Ok(p) } else { Err(DiagError::NoBundle(job_id.to_owned())) }
    }
}
