//! Quantizing into the registry, as the `quantize` job kind (`ondevice-jobs`).
//!
//! [`Quantizer::quantize`] resolves the source (a registry model, a GGUF file or a safetensors
//! directory on the daemon's machine), checks the parameters and submits the job; the same source
//! digest, parameters and target name join the job in progress. [`QuantizeKind`] runs it in the
//! `cpu-heavy` class:
//!
//! 1. a staging directory inside the blob store's directory (`blobs/.tmp-quantize-<job id>/`, on
//!    the same filesystem as the blobs, so the result is renamed, never copied, into place);
//! 2. the source model's blobs are GC roots (`quantize-input`/job id) while the job runs; a
//!    safetensors model is materialized (hard links) in the staging directory;
//! 3. the output's size is estimated and reserved under the registry's quota before anything is
//!    written ([`Registry::reserve`], shared with pulls);
//! 4. `ondevice quantize-task` runs through [`Supervisor::run_task`], sandboxed (reads the
//!    source, the importance matrix and the program; writes only the staging directory; no
//!    network, empty environment); its `progress STAGE DONE TOTAL` lines become the job's
//!    progress, its `receipt {json}` line the provenance; a cancel kills it. With `make_imatrix`
//!    the task computes the importance matrix first, as `ondevice quantize --output
//!    --make-imatrix` does (the same [`crate::pipeline::run`]; the matrix file is written in the
//!    staging directory, the step shown as `computing importance matrix`, its SHA-256 and the
//!    text's in the receipt);
//! 5. on success the daemon hashes the output itself, and the registry moves it into the blob
//!    store and records the model, its provenance (receipt, parent model) in one step
//!    ([`Registry::register_made`]).
//!
//! Checkpoints ([`JobCheckpoint`], the job's stored checkpoint): the task reports each finished
//! step (`checkpoint {json}` lines: the F16 intermediate of a safetensors directory converted; the
//! importance matrix computed for `make_imatrix`; the output quantized and synced, before the
//! quality gate), with each staged file's SHA-256 and size; when the task prints its receipt the
//! job records the finished output it describes. A daemon that stops (even by `kill -9`) leaves
//! the staging directory and the roots, and no registry row; at the next start the job keeps only
//! the files its checkpoint names, the task checks each against its digest and size and skips the
//! steps whose files match (anything else is removed and made again), or the daemon checks the
//! finished output and only registers it. A path source whose size or time changed starts over.
//!
//! Whatever other way the job ends (success, failure, cancel) the staging directory goes, with
//! the roots and the reservation; [`QuantizeKind::new`] removes the directories of jobs that will
//! not resume.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ondevice_jobs::{
    BoxFuture, CancelReason, JobContext, JobError, JobFailure, JobKind, JobSnapshot, Jobs, ResourceClass,
};
use ondevice_registry::provenance::made_now;
use ondevice_registry::quota::{QuotaPolicy, ReserveError};
use ondevice_registry::{DEFAULT_TAG, Digest, ModelRef, Registry, RegistryError, RootOwner, SAFETENSORS_FORMAT};
use ondevice_sandbox::SandboxPolicy;
use ondevice_supervisor::{Supervisor, TaskError, TaskLine, TaskSpec, TaskStream};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::imatrix::hex;
use crate::pipeline::{Checkpoint, InputDigest, StagedFile};
use crate::{QuantType, ggml_type_from_name};

/// The job kind's name.
pub const KIND: &str = "quantize";
/// Owner kind of the GC roots that keep a job's source model.
pub const ROOT_KIND: &str = "quantize-input";
/// Prefix of a job's staging directory in `blobs/` (a temporary name `gc` leaves alone while it
/// is a directory).
pub const STAGING_PREFIX: &str = ".tmp-quantize-";
/// The output's name in the staging directory.
pub const OUTPUT_NAME: &str = "output.gguf";

/// A `quantize` job's checkpoint (JSON, stored by `ondevice-jobs`): the steps of the task that
/// finished, with their staged files, and once the task is done the output its receipt describes.
/// A resumed job checks every file against its SHA-256 and size before reusing it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCheckpoint {
    /// The task's last checkpoint (the F16 intermediate, the quantized output before the quality
    /// gate), files in the staging directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Checkpoint>,
    /// The task's finished output ([`OUTPUT_NAME`] in the staging directory): only its
    /// registration is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<FinishedOutput>,
}

/// The output of a task that succeeded, before it is registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishedOutput {
    /// The output file, as the receipt describes it (checked before a resume uses it).
    pub file: StagedFile,
    /// The task's receipt.
    pub receipt: serde_json::Value,
}

impl JobCheckpoint {
    /// The checkpoint with only the files directly inside `staging` (the task writes nowhere
    /// else; anything naming another place is dropped, never kept or reused).
    pub fn confined(mut self, staging: &Path) -> JobCheckpoint {
        let inside = |f: &StagedFile| f.path.parent() == Some(staging) && f.path.file_name().is_some();
        if let Some(t) = &mut self.task {
            t.converted = t.converted.take().filter(&inside);
            t.imatrix = t.imatrix.take().filter(&inside);
            t.quantized = t.quantized.take().filter(|q| inside(&q.file));
        }
        self.output = self.output.filter(|o| inside(&o.file) && o.file.path.file_name() == Some(OUTPUT_NAME.as_ref()));
        self
    }

    /// The staged files it names.
    pub fn files(&self) -> Vec<&StagedFile> {
        let mut files = Vec::new();
        if let Some(t) = &self.task {
            files.extend(t.converted.as_ref());
            files.extend(t.imatrix.as_ref());
            files.extend(t.quantized.as_ref().map(|q| &q.file));
        }
        files.extend(self.output.as_ref().map(|o| &o.file));
        files
    }
}

/// What a user asks for (the HTTP body, the gRPC request and the CLI flags carry these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizeParams {
    /// A registry model (`name:tag` or `sha256:` digest), or the absolute path of a GGUF file or
    /// a Hugging Face safetensors directory on the daemon's machine.
    pub source: String,
    /// The GGUF type (`Q8_0`, `Q4_K_M`, ...).
    pub quant_type: String,
    /// `name[:tag]` to register (default: the source's name with the type appended).
    pub name: Option<String>,
    /// Absolute path of an importance matrix on the daemon's machine.
    pub imatrix: Option<PathBuf>,
    /// Compute the importance matrix from the source with the engine, in the job's task (over
    /// the text the quality gate reads), and quantize with it; excludes `imatrix`.
    pub make_imatrix: bool,
    /// Quantize tensors that are already quantized.
    pub allow_requantize: bool,
    /// Per-tensor types, `PATTERN=TYPE`.
    pub tensor_types: Vec<String>,
    /// Type of `output.weight`.
    pub output_tensor_type: Option<String>,
    /// Type of `token_embd.weight`.
    pub token_embedding_type: Option<String>,
    /// Skip the quality gate (perplexity, KL-divergence).
    pub no_quality: bool,
}

/// Where a job reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    /// A registry model, by the digest it had at submission.
    Model {
        /// `name:tag` as resolved.
        model: String,
        /// Its digest (a GGUF blob, or a safetensors layout).
        digest: String,
        /// `gguf` or `safetensors`.
        format: String,
    },
    /// A file or directory on the daemon's machine.
    Path {
        /// Absolute path.
        path: PathBuf,
    },
}

/// The persisted request of a `quantize` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizeSpec {
    /// The source.
    pub source: SourceSpec,
    /// The canonical type name.
    pub quant_type: String,
    /// `name:tag` to register.
    pub model: String,
    /// Importance matrix.
    pub imatrix: Option<PathBuf>,
    /// Compute the importance matrix in the task (never with `imatrix`).
    #[serde(default)]
    pub make_imatrix: bool,
    /// Quantize already-quantized tensors.
    pub allow_requantize: bool,
    /// Per-tensor types.
    pub tensor_types: Vec<String>,
    /// Type of `output.weight`.
    pub output_tensor_type: Option<String>,
    /// Type of `token_embd.weight`.
    pub token_embedding_type: Option<String>,
    /// Skip the quality gate.
    #[serde(default)]
    pub no_quality: bool,
    /// What identifies the source content: a registry digest, or for a path its canonical path,
    /// size and modification time (hashing a large file before answering would keep the caller
    /// waiting; the receipt records the content's SHA-256).
    pub source_id: String,
}

impl QuantizeSpec {
    /// The source as people read it: `name:tag` or the path.
    pub fn source_text(&self) -> String {
        match &self.source {
            SourceSpec::Model { model, .. } => model.clone(),
            SourceSpec::Path { path } => path.display().to_string(),
        }
    }
}

/// A quantization that cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeJobError {
    /// A parameter is invalid (unknown type, override syntax, relative path, missing imatrix).
    #[error("{0}")]
    Invalid(String),
    /// The source is neither a registry model nor an existing file or directory.
    #[error(
        "source {0} is neither a registered model nor a file or directory on the daemon's machine: see `ondevice models list`, or give an absolute path"
    )]
    SourceNotFound(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The job queue failed.
    #[error(transparent)]
    Jobs(#[from] JobError),
}

/// What the edge needs to start quantizations (object-safe; the daemon wires [`Quantizer`]).
pub trait QuantizeService: Send + Sync {
    /// Checks the request and starts (or joins) the `quantize` job.
    fn quantize(&self, params: QuantizeParams) -> BoxFuture<'_, Result<JobSnapshot, QuantizeJobError>>;
}

/// How the kind runs the task.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The `ondevice` binary (its hidden `quantize-task` subcommand does the work).
    pub program: PathBuf,
    /// The sandbox (the job adds the paths it reads and writes).
    pub sandbox: SandboxPolicy,
    /// Threads for llama.cpp's quantizer (`None`: all).
    pub threads: Option<usize>,
    /// Space rules (from `[registry]`).
    pub quota: QuotaPolicy,
}

/// The `quantize` job kind.
pub struct QuantizeKind {
    registry: Arc<Registry>,
    supervisor: Supervisor,
    config: TaskConfig,
}

impl std::fmt::Debug for QuantizeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizeKind").field("program", &self.config.program).finish_non_exhaustive()
    }
}

impl QuantizeKind {
    /// The kind. Removes staging directories (and roots) left by jobs that are no longer queued
    /// or running (a daemon killed during a job that was then cancelled or failed); those of
    /// resumable jobs are cleaned when they start again. Blocking (a directory scan).
    pub fn new(registry: Arc<Registry>, supervisor: Supervisor, config: TaskConfig) -> Arc<QuantizeKind> {
        let kind = QuantizeKind { registry, supervisor, config };
        kind.sweep();
        Arc::new(kind)
    }

    /// A job's staging directory.
    pub fn staging_dir(&self, job_id: &str) -> PathBuf {
        self.registry.blobs().dir().join(format!("{STAGING_PREFIX}{job_id}"))
    }

    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(self.registry.blobs().dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(STAGING_PREFIX) else { continue };
            let active = match self.registry.store().get_job(id) {
                Ok(j) => j.is_some_and(|j| j.state == "queued" || j.state == "running"),
                Err(_) => true,
            };
            if active {
                continue;
            }
            let _ = std::fs::remove_dir_all(entry.path());
            self.drop_roots(id);
            tracing::info!(path = %entry.path().display(), "removed the staging directory of an ended quantize job");
        }
    }

    fn drop_roots(&self, id: &str) {
        let Ok(owner) = RootOwner::new(ROOT_KIND, id) else { return };
        if let Ok(roots) = self.registry.list_roots() {
            for r in roots.into_iter().filter(|r| r.owner == owner) {
                let _ = self.registry.remove_root(&r.digest, &owner);
            }
        }
    }
}

/// Bits per weight of a type, rounded up (for the space estimate).
fn bits_per_weight(t: &str) -> f64 {
    match t {
        "F32" => 32.0,
        "F16" | "BF16" => 16.0,
        "Q8_0" => 8.5,
        "Q6_K" => 6.6,
        t if t.starts_with("Q5") => 6.0,
        t if t.starts_with("Q4") || t.starts_with("IQ4") => 5.0,
        t if t.starts_with("Q3") || t.starts_with("IQ3") => 4.5,
        _ => 3.5,
    }
}

/// The bytes the output may take: parameters at the type's width, plus a margin for the tensors
/// llama.cpp keeps wider (norms, output) and the tokenizer.
pub fn estimate_output(parameters: u64, quant_type: &str) -> u64 {
    let body = parameters as f64 * bits_per_weight(quant_type) / 8.0;
    (body * 1.2) as u64 + (64 << 20)
}

/// The default registry name: the source's name with the type appended (`smollm2-q8_0`), a known
/// type suffix of the source's name replaced (`smollm2-q4_1` → `smollm2-q8_0`); the source's tag
/// for a registry model, else `latest`.
pub fn default_name(source: &SourceSpec, quant_type: &str) -> Result<ModelRef, QuantizeJobError> {
    let (base, tag) = match source {
        SourceSpec::Model { model, .. } => match model.parse::<ModelRef>()? {
            ModelRef::Named { name, tag } => (name, tag),
            ModelRef::Digest(_) => ("model".to_owned(), DEFAULT_TAG.to_owned()),
        },
        SourceSpec::Path { path } => {
            let stem = path.file_stem().or_else(|| path.file_name()).map(|s| s.to_string_lossy().into_owned());
            (ondevice_registry::sanitize_name(&stem.unwrap_or_else(|| "model".into())), DEFAULT_TAG.to_owned())
        }
    };
    let lower = base.to_ascii_lowercase();
    let mut stem = base.as_str();
    for t in QuantType::ALL {
        let suffix = format!("-{}", t.name().to_ascii_lowercase());
        if lower.ends_with(&suffix) && lower.len() > suffix.len() {
            stem = &base[..base.len() - suffix.len()];
            break;
        }
    }
    let name = format!("{stem}-{}", quant_type.to_ascii_lowercase());
    Ok(format!("{name}:{tag}").parse::<ModelRef>()?)
}

impl From<ondevice_registry::RefError> for QuantizeJobError {
    fn from(e: ondevice_registry::RefError) -> Self {
        QuantizeJobError::Registry(e.into())
    }
}

/// Starts quantizations: checks the request, resolves the source, submits the `quantize` job.
/// Cheap to clone.
#[derive(Clone)]
pub struct Quantizer {
    registry: Arc<Registry>,
    jobs: Jobs,
}

impl std::fmt::Debug for Quantizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quantizer").finish_non_exhaustive()
    }
}

impl Quantizer {
    /// Quantizations through `jobs`, a queue the [`QuantizeKind`] is registered with.
    pub fn new(registry: Arc<Registry>, jobs: Jobs) -> Quantizer {
        Quantizer { registry, jobs }
    }

    /// The spec a request gives, checked (blocking: registry and file lookups).
    pub fn spec(registry: &Registry, p: &QuantizeParams) -> Result<QuantizeSpec, QuantizeJobError> {
        let invalid = QuantizeJobError::Invalid;
        let t = QuantType::from_name(&p.quant_type).map_err(|e| invalid(e.to_string()))?;
        if p.make_imatrix && p.imatrix.is_some() {
            return Err(invalid(
                "make_imatrix (--make-imatrix) computes an importance matrix and imatrix (--imatrix) gives one: \
                 choose one"
                    .into(),
            ));
        }
        if t.needs_imatrix() && p.imatrix.is_none() && !p.make_imatrix {
            return Err(invalid(format!(
                "{} needs an importance matrix: pass --imatrix FILE (llama-imatrix output) or --make-imatrix \
                 (make_imatrix) to compute one from the source",
                t.name()
            )));
        }
        if p.make_imatrix && t.converter_type().is_some() {
            return Err(invalid(format!(
                "{} does not use an importance matrix: make_imatrix (--make-imatrix) applies to llama.cpp's \
                 quantized types (Q4_K_M, IQ2_XS, ...)",
                t.name()
            )));
        }
        for o in &p.tensor_types {
            let (_, ty) = o.rsplit_once('=').ok_or_else(|| {
                invalid(format!("tensor type override {o:?} is not PATTERN=TYPE (for example attn_v=Q8_0)"))
            })?;
            ggml_type_from_name(ty).map_err(|e| invalid(e.to_string()))?;
        }
        for ty in [&p.output_tensor_type, &p.token_embedding_type].into_iter().flatten() {
            ggml_type_from_name(ty).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(m) = &p.imatrix {
            if !m.is_absolute() || !m.is_file() {
                return Err(invalid(format!(
                    "importance matrix {} is not an absolute path to a file on the daemon's machine",
                    m.display()
                )));
            }
        }
        let (source, source_id) = Self::resolve_source(registry, &p.source)?;
        let model = match &p.name {
            Some(n) => n.parse::<ModelRef>()?,
            None => default_name(&source, t.name())?,
        };
        let ModelRef::Named { .. } = &model else {
            return Err(invalid("--name needs a name[:tag], not a digest".into()));
        };
        let model = model.to_string();
        if let SourceSpec::Model { model: from, .. } = &source {
            if *from == model {
                return Err(invalid(format!("the result would replace its source {from}: choose another --name")));
            }
        }
        Ok(QuantizeSpec {
            source,
            quant_type: t.name().to_owned(),
            model,
            imatrix: p.imatrix.clone(),
            make_imatrix: p.make_imatrix,
            allow_requantize: p.allow_requantize,
            tensor_types: p.tensor_types.clone(),
            output_tensor_type: p.output_tensor_type.clone(),
            token_embedding_type: p.token_embedding_type.clone(),
            no_quality: p.no_quality,
            source_id,
        })
    }

    fn resolve_source(registry: &Registry, source: &str) -> Result<(SourceSpec, String), QuantizeJobError> {
        let path = Path::new(source);
        if path.is_absolute() {
            let meta = std::fs::metadata(path).map_err(|_| QuantizeJobError::SourceNotFound(source.to_owned()))?;
            let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let id = format!("path:{}:{}:{mtime}", canonical.display(), meta.len());
            return Ok((SourceSpec::Path { path: canonical }, id));
        }
        let r: ModelRef = match source.parse() {
            Ok(r) => r,
            Err(_) if path.exists() => {
                return Err(QuantizeJobError::Invalid(format!(
                    "{source} is a relative path: give the absolute path (the daemon may run elsewhere)"
                )));
            }
            Err(e) => return Err(QuantizeJobError::Registry(e.into())),
        };
        let m = match registry.show(&r) {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => return Err(QuantizeJobError::SourceNotFound(source.to_owned())),
            Err(e) => return Err(e.into()),
        };
        let spec = SourceSpec::Model { model: m.reference(), digest: m.digest.to_string(), format: m.format.clone() };
        Ok((spec, m.digest.to_string()))
    }

    /// Starts a quantization (or joins the one in progress with the same source, parameters and
    /// name).
    pub async fn quantize(&self, params: QuantizeParams) -> Result<JobSnapshot, QuantizeJobError> {
        let registry = self.registry.clone();
        let spec = tokio::task::spawn_blocking(move || Self::spec(&registry, &params))
            .await
            .map_err(|_| QuantizeJobError::Jobs(JobError::ShuttingDown))??;
        let job = self.jobs.submit::<QuantizeKind>(&spec).await?;
        tracing::info!(job = %job.id, model = %spec.model, source = %spec.source_text(), r#type = %spec.quant_type, "quantize submitted");
        Ok(job)
    }
}

impl QuantizeService for Quantizer {
    fn quantize(&self, params: QuantizeParams) -> BoxFuture<'_, Result<JobSnapshot, QuantizeJobError>> {
        Box::pin(Quantizer::quantize(self, params))
    }
}

/// The dedup key of a job: SHA-256 over the source's identity (a registry digest, or a path's
/// identity), the parameters and the target name.
pub fn dedup_key(spec: &QuantizeSpec) -> String {
    let mut params = serde_json::json!({
        "source": spec.source_id,
        "type": spec.quant_type,
        "model": spec.model,
        "imatrix": spec.imatrix,
        "allow_requantize": spec.allow_requantize,
        "tensor_types": spec.tensor_types,
        "output_tensor_type": spec.output_tensor_type,
        "token_embedding_type": spec.token_embedding_type,
        "no_quality": spec.no_quality,
    });
    // Only when set, so the keys of jobs without it stay what they were.
    if spec.make_imatrix {
        params["make_imatrix"] = true.into();
    }
    hex(&Sha256::digest(params.to_string().as_bytes()))
}

impl JobKind for QuantizeKind {
    const KIND: &'static str = KIND;
    type Spec = QuantizeSpec;

    fn dedup_key(&self, spec: &QuantizeSpec) -> Option<String> {
        Some(dedup_key(spec))
    }

    fn class(&self, _: &QuantizeSpec) -> ResourceClass {
        ResourceClass::CpuHeavy
    }

    fn initial_detail(&self, spec: &QuantizeSpec) -> serde_json::Value {
        serde_json::json!({
            "model": spec.model,
            "source": spec.source_text(),
            "type": spec.quant_type,
        })
    }

    async fn run(self: Arc<Self>, spec: QuantizeSpec, ctx: JobContext) -> Result<(), JobFailure> {
        let staging = self.staging_dir(ctx.id());
        let owner = RootOwner::new(ROOT_KIND, ctx.id()).map_err(|e| JobFailure::Failed(e.to_string()))?;
        let result = self.execute(&spec, &ctx, &staging, &owner).await;
        // A daemon that stops keeps the job's staged files and roots for its resume at the next
        // start. Any other end leaves nothing behind: no staging directory, no roots, no
        // reservation.
        let resumable = result.is_err() && ctx.cancel_reason() == Some(CancelReason::Shutdown);
        let (kind, dir, id) = (self.clone(), staging.clone(), ctx.id().to_owned());
        let _ = tokio::task::spawn_blocking(move || {
            if !resumable {
                let _ = std::fs::remove_dir_all(&dir);
                kind.drop_roots(&id);
            }
            kind.registry.release(&id);
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(Stop::Cancelled) => Err(JobFailure::Cancelled),
            Err(Stop::Failed(msg)) if ctx.cancel_reason().is_some() => {
                tracing::debug!(job = %ctx.id(), error = %msg, "quantize stopped by its cancel");
                Err(JobFailure::Cancelled)
            }
            Err(Stop::Failed(msg)) => Err(JobFailure::Failed(msg)),
        }
    }
}

/// How a run ended early.
enum Stop {
    Cancelled,
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.to_string())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Stop> + Send + 'static) -> Result<T, Stop> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Stop::Failed(format!("a blocking step failed: {e}")))?
}

/// The task's stdout protocol: `progress STAGE DONE TOTAL` and `receipt {json}`.
fn apply_line(ctx: &JobContext, line: &TaskLine, receipt: &mut Option<serde_json::Value>, last_error: &mut String) {
    match line.stream {
        TaskStream::Stdout => {
            if let Some(rest) = line.text.strip_prefix("progress ") {
                let mut parts = rest.split(' ');
                let (Some(stage), Some(done), Some(total)) = (parts.next(), parts.next(), parts.next()) else {
                    return;
                };
                let (Ok(done), Ok(total)) = (done.parse::<u64>(), total.parse::<u64>()) else { return };
                let stage = stage.replace('_', " ");
                let unit = match stage.as_str() {
                    "quantizing" => "tensors",
                    "computing importance matrix" => "chunks",
                    "converting" | "converting to F16" => "bytes",
                    _ => "steps",
                };
                if ctx.snapshot().progress.message.as_deref() != Some(stage.as_str()) {
                    ctx.message(stage.clone());
                    ctx.update_detail(|d| d["stage"] = serde_json::Value::String(stage.clone()));
                }
                ctx.progress(done, (total > 0).then_some(total), unit);
            } else if let Some(json) = line.text.strip_prefix("receipt ") {
                *receipt = serde_json::from_str(json).ok();
            } else if let Some(step) = line.text.strip_prefix("resumed ") {
                // The furthest step the task skipped (they come in order).
                let step = step.to_owned();
                ctx.update_detail(|d| d["resumed_from"] = serde_json::Value::String(step));
            }
        }
        TaskStream::Stderr => {
            if let Some(e) = line.text.strip_prefix("error: ") {
                *last_error = e.to_owned();
            }
        }
    }
}

/// Saves the task's `checkpoint {json}` line as the job's checkpoint.
async fn save_task_checkpoint(ctx: &JobContext, staging: &Path, json: &str) {
    let task: Checkpoint = match serde_json::from_str(json) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = %ctx.id(), error = %e, "the quantize task sent an unreadable checkpoint");
            return;
        }
    };
    let checkpoint = JobCheckpoint { task: Some(task), output: None }.confined(staging);
    let bytes = serde_json::to_vec(&checkpoint).unwrap_or_default();
    match ctx.save_checkpoint_async(bytes).await {
        Ok(()) => tracing::debug!(job = %ctx.id(), "quantize checkpoint saved"),
        Err(e) => tracing::warn!(job = %ctx.id(), error = %e, "cannot save the quantize checkpoint"),
    }
}

/// Saves the finished output a task's receipt describes (`output_sha256`, `output_size`) as the
/// job's checkpoint.
async fn save_output_checkpoint(ctx: &JobContext, staging: &Path, receipt: &serde_json::Value) {
    let (Some(sha256), Some(size)) = (receipt["output_sha256"].as_str(), receipt["output_size"].as_u64()) else {
        return;
    };
    let file = StagedFile { path: staging.join(OUTPUT_NAME), sha256: sha256.to_owned(), size };
    let checkpoint = JobCheckpoint { task: None, output: Some(FinishedOutput { file, receipt: receipt.clone() }) };
    match ctx.save_checkpoint_async(serde_json::to_vec(&checkpoint).unwrap_or_default()).await {
        Ok(()) => tracing::debug!(job = %ctx.id(), "quantize checkpoint saved: the output is finished"),
        Err(e) => tracing::warn!(job = %ctx.id(), error = %e, "cannot save the quantize checkpoint"),
    }
}

/// Empties the staging directory `dir` but for the regular files in `keep` (creating it when
/// missing); returns the bytes kept.
fn clean_staging(dir: &Path, keep: &[PathBuf]) -> Result<u64, Stop> {
    if keep.is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if !dir.is_dir() {
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(|e| Stop::Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut kept = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| Stop::Failed(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Stop::Failed(format!("cannot read {}: {e}", dir.display())))?;
        let path = entry.path();
        // `DirEntry::metadata` does not follow a symbolic link.
        let meta = entry.metadata().map_err(|e| Stop::Failed(format!("cannot stat {}: {e}", path.display())))?;
        if meta.is_file() && keep.contains(&path) {
            kept += meta.len();
            continue;
        }
        let removed = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|e| Stop::Failed(format!("cannot remove {}: {e}", path.display())))?;
    }
    Ok(kept)
}

/// Where the output of a task that finished before a restart is.
enum Finished {
    /// Still staged, as hashed.
    Staged,
    /// Already registered under the job's name (the daemon stopped before the job's end was
    /// recorded).
    Registered(Box<ondevice_registry::ModelRecord>),
    /// Gone or changed: the task runs again.
    Gone,
}

impl QuantizeKind {
    /// Whether the source is what it was when the job was submitted: a registry model's digest
    /// is its content; a path's size and modification time are compared. Blocking.
    fn source_unchanged(&self, spec: &QuantizeSpec) -> bool {
        match &spec.source {
            SourceSpec::Model { .. } => true,
            SourceSpec::Path { path } => Quantizer::resolve_source(&self.registry, &path.to_string_lossy())
                .is_ok_and(|(_, id)| id == spec.source_id),
        }
    }

    /// What became of a finished output recorded in the checkpoint. Blocking.
    fn finished_state(&self, done: &FinishedOutput, target: &ModelRef) -> Finished {
        if crate::pipeline::reusable(&done.file) {
            return Finished::Staged;
        }
        match self.registry.show(target) {
            Ok(m) if m.digest.hex() == done.file.sha256 => Finished::Registered(Box::new(m)),
            _ => Finished::Gone,
        }
    }

    async fn execute(
        self: &Arc<Self>,
        spec: &QuantizeSpec,
        ctx: &JobContext,
        staging: &Path,
        owner: &RootOwner,
    ) -> Result<(), Stop> {
        let target: ModelRef = spec.model.parse()?;
        // A resumed job keeps the files its checkpoint names (each is checked before it is
        // reused) and nothing else: whatever was being written when it stopped goes.
        let checkpoint = match ctx.checkpoint() {
            None => None,
            Some(bytes) => match serde_json::from_slice::<JobCheckpoint>(bytes) {
                Ok(c) => Some(c.confined(staging)),
                Err(e) => {
                    tracing::warn!(job = %ctx.id(), error = %e, "unreadable quantize checkpoint; starting over");
                    None
                }
            },
        };
        ctx.update_detail(|d| {
            if let Some(o) = d.as_object_mut() {
                o.remove("resumed_from");
            }
        });
        let (kind, dir, sp, own, id) =
            (self.clone(), staging.to_path_buf(), spec.clone(), owner.clone(), ctx.id().to_owned());
        ctx.message("preparing");
        let (input, parent, parameters, known, checkpoint, kept) = blocking(move || {
            let checkpoint = checkpoint.filter(|_| {
                let same = kind.source_unchanged(&sp);
                if !same {
                    tracing::info!(job = %id, "the quantize source changed since the checkpoint; starting over");
                }
                same
            });
            let keep: Vec<PathBuf> = checkpoint.iter().flat_map(|c| c.files()).map(|f| f.path.clone()).collect();
            let kept = clean_staging(&dir, &keep)?;
            let (input, parent, parameters, known) = kind.prepare_source(&sp, &dir, &own, &id)?;
            Ok((input, parent, parameters, known, checkpoint.unwrap_or_default(), kept))
        })
        .await?;
        if ctx.cancel_token().is_cancelled() {
            return Err(Stop::Cancelled);
        }

        // Reserve the output (and a converter's F16 intermediate) before anything is written.
        let mut needed = estimate_output(parameters, &spec.quant_type);
        if input.is_dir() && QuantType::from_name(&spec.quant_type).ok().and_then(QuantType::converter_type).is_none() {
            needed = needed.saturating_add(estimate_output(parameters, "F16"));
        }
        let (kind, id, what, dir) =
            (self.clone(), ctx.id().to_owned(), spec.model.clone(), self.registry.blobs().dir().to_path_buf());
        blocking(move || {
            kind.registry.reserve(&id, &what, needed, kept, &dir, &kind.config.quota).map_err(|e| match e {
                ReserveError::Quota(q) => Stop::Failed(q.to_string()),
                ReserveError::Registry(r) => Stop::Failed(r.to_string()),
            })
        })
        .await?;
        ctx.update_detail(|d| d["reserved_bytes"] = needed.into());

        // The task had finished before the daemon stopped: only the registration is left.
        if let Some(done) = checkpoint.output.clone() {
            let (kind, d, t) = (self.clone(), done.clone(), target.clone());
            let state = blocking(move || Ok(kind.finished_state(&d, &t))).await?;
            match state {
                Finished::Staged => {
                    ctx.update_detail(|d| d["resumed_from"] = "output".into());
                    return self.register(ctx, spec, &target, done, parent).await;
                }
                Finished::Registered(record) => {
                    tracing::info!(job = %ctx.id(), model = %record.reference(), "the quantized model was registered before the restart");
                    ctx.update_detail(|d| d["resumed_from"] = "registered".into());
                    self.finished(ctx, &record);
                    return Ok(());
                }
                Finished::Gone => {
                    tracing::info!(job = %ctx.id(), "the finished output is gone; quantizing again");
                }
            }
        }

        let output = staging.join(OUTPUT_NAME);
        let request = serde_json::json!({
            "source": input,
            "output": output,
            "quant_type": spec.quant_type,
            "imatrix": spec.imatrix,
            "make_imatrix": spec.make_imatrix,
            "allow_requantize": spec.allow_requantize,
            "overrides": spec.tensor_types,
            "output_tensor_type": spec.output_tensor_type,
            "token_embedding_type": spec.token_embedding_type,
            "no_quality": spec.no_quality,
            "threads": self.config.threads,
            "scratch": staging,
            "known_digests": known,
            "checkpoints": true,
            "resume": checkpoint.task,
        });
        let mut task = TaskSpec::new(
            format!("quantize-{}", ctx.id()),
            [
                OsString::from(&self.config.program),
                "quantize-task".into(),
                "--request".into(),
                request.to_string().into(),
            ],
        );
        task.clear_env = true;
        task.cwd = Some(staging.to_path_buf());
        let mut sandbox = self.config.sandbox.clone();
        sandbox.fs_read.push(input.clone());
        sandbox.fs_read.push(self.config.program.clone());
        if let Some(m) = &spec.imatrix {
            sandbox.fs_read.push(m.clone());
        }
        sandbox.fs_write.push(staging.to_path_buf());
        task.sandbox = sandbox;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<TaskLine>(256);
        task.lines = Some(tx);
        ctx.message("starting");
        let reader = {
            let (ctx, staging) = (ctx.clone(), staging.to_path_buf());
            tokio::spawn(async move {
                let (mut receipt, mut last_error) = (None, String::new());
                while let Some(line) = rx.recv().await {
                    // A step finished: recorded before the next line is read, so a stage shown
                    // after it implies the checkpoint is stored.
                    if let (TaskStream::Stdout, Some(json)) = (line.stream, line.text.strip_prefix("checkpoint ")) {
                        save_task_checkpoint(&ctx, &staging, json).await;
                        continue;
                    }
                    apply_line(&ctx, &line, &mut receipt, &mut last_error);
                    // The output is in place when the task prints its receipt: a restart from
                    // here checks it against the receipt's digest and only registers it.
                    if let (TaskStream::Stdout, Some(r)) = (line.stream, &receipt) {
                        if line.text.starts_with("receipt ") {
                            save_output_checkpoint(&ctx, &staging, r).await;
                        }
                    }
                }
                (receipt, last_error)
            })
        };
        let outcome = self.supervisor.run_task(task, ctx.cancel_token().clone()).await;
        let (receipt, last_error) = reader.await.unwrap_or_default();
        let outcome = match outcome {
            Ok(o) => o,
            Err(TaskError::Cancelled { .. }) => return Err(Stop::Cancelled),
            Err(e) => return Err(Stop::Failed(format!("cannot start the quantize task: {e}"))),
        };
        if outcome.cancelled {
            return Err(Stop::Cancelled);
        }
        if !outcome.success() {
            let why = if last_error.is_empty() {
                outcome.stderr_text().lines().last().unwrap_or_default().to_owned()
            } else {
                last_error
            };
            let why = if why.is_empty() { String::new() } else { format!(": {why}") };
            return Err(Stop::Failed(format!(
                "quantizing {} to {} {outcome}{why}",
                spec.source_text(),
                spec.quant_type
            )));
        }
        let receipt = receipt.ok_or_else(|| Stop::Failed("the quantize task ended without a receipt".into()))?;
        if ctx.cancel_token().is_cancelled() {
            return Err(Stop::Cancelled);
        }

        // The daemon hashes the output itself (the blob store is content-addressed; the
        // registration refuses a receipt that describes other bytes).
        ctx.message("hashing the output");
        let out = output.clone();
        let file = blocking(move || {
            let err = |e: std::io::Error| Stop::Failed(format!("cannot hash the output: {e}"));
            let size = std::fs::metadata(&out).map_err(err)?.len();
            let file = std::fs::File::open(&out).map_err(err)?;
            let digest =
                ondevice_registry::bundle::sha256_of(std::io::BufReader::with_capacity(1 << 20, file)).map_err(err)?;
            Ok(StagedFile { path: out, sha256: digest.hex(), size })
        })
        .await?;
        self.register(ctx, spec, &target, FinishedOutput { file, receipt }, parent).await
    }

    /// Registers a finished output with its provenance.
    async fn register(
        self: &Arc<Self>,
        ctx: &JobContext,
        spec: &QuantizeSpec,
        target: &ModelRef,
        done: FinishedOutput,
        parent: Option<(String, Digest)>,
    ) -> Result<(), Stop> {
        ctx.message("registering");
        let (kind, model, from) = (self.clone(), target.clone(), spec.source_text());
        let record = blocking(move || {
            let digest: Digest = format!("sha256:{}", done.file.sha256).parse()?;
            let provenance = made_now(done.receipt, parent);
            Ok(kind.registry.register_made(&done.file.path, digest, &model, &format!("quantize:{from}"), provenance)?)
        })
        .await?;
        tracing::info!(job = %ctx.id(), model = %record.reference(), digest = %record.digest, "quantized model registered");
        self.finished(ctx, &record);
        Ok(())
    }

    fn finished(&self, ctx: &JobContext, record: &ondevice_registry::ModelRecord) {
        ctx.update_detail(|d| {
            d["digest"] = serde_json::Value::String(record.digest.to_string());
            d["size"] = record.size.into();
            d["stage"] = "done".into();
        });
        ctx.message("done");
    }

    /// Roots the source model's blobs and finds the input the task reads: a GGUF blob in place, a
    /// safetensors model materialized under `staging`, or the given path. Returns the input, the
    /// parent model (`name:tag`, digest), the parameter count and the digests of the input's files
    /// the blob store already holds (content-addressed: the task need not hash them again).
    /// Blocking.
    #[allow(clippy::type_complexity)]
    fn prepare_source(
        &self,
        spec: &QuantizeSpec,
        staging: &Path,
        owner: &RootOwner,
        _id: &str,
    ) -> Result<(PathBuf, Option<(String, Digest)>, u64, Vec<InputDigest>), Stop> {
        match &spec.source {
            SourceSpec::Model { model, digest, format } => {
                let d: Digest = digest.parse()?;
                let m = self.registry.show(&ModelRef::Digest(d)).map_err(|_| {
                    Stop::Failed(format!("the source model {model} ({digest}) is no longer in the registry"))
                })?;
                self.registry.add_root(&d, owner)?;
                let parameters = m.parameter_count.unwrap_or(0);
                let (input, known) = if format == SAFETENSORS_FORMAT {
                    // Named after the model: a conversion's `general.name` is its directory's name.
                    let base = model.split(':').next().unwrap_or("model").replace('/', "-");
                    let dir = staging.join(if base.is_empty() { "model".to_owned() } else { base });
                    self.registry.materialize(&m, &dir)?;
                    // The receipt names a directory's files by their paths inside it.
                    let known = self.registry.layout(&m)?.map_or_else(Vec::new, |layout| {
                        layout
                            .files
                            .iter()
                            .filter_map(|f| {
                                let sha256 = f.digest.strip_prefix("sha256:")?.to_owned();
                                Some(InputDigest { name: f.path.clone(), sha256, size: f.size })
                            })
                            .collect()
                    });
                    (dir, known)
                } else {
                    // A GGUF blob is read in place; the receipt names a file by its file name.
                    let path = self.registry.blobs().path(&d);
                    let known = vec![InputDigest { name: d.file_name(), sha256: d.hex(), size: m.size }];
                    (path, known)
                };
                Ok((input, Some((model.clone(), d)), parameters, known))
            }
            SourceSpec::Path { path } => {
                let parameters = if path.is_dir() {
                    ondevice_gguf::HfModelDir::open(path)?.parameter_count()
                } else {
                    ondevice_gguf::GgufFile::open_without_arrays(path)?.parameter_count()
                };
                Ok((path.clone(), None, parameters, Vec::new()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_append_the_type_and_keep_the_tag() {
        let model = |m: &str| SourceSpec::Model { model: m.into(), digest: String::new(), format: "gguf".into() };
        let name = |s: &SourceSpec, t: &str| default_name(s, t).unwrap().to_string();
        assert_eq!(name(&model("smollm2:latest"), "Q8_0"), "smollm2-q8_0:latest");
        assert_eq!(name(&model("smollm2-q4_1:135m"), "Q8_0"), "smollm2-q8_0:135m");
        assert_eq!(name(&model("llama-q4_k_m:8b"), "Q4_K_M"), "llama-q4_k_m:8b");
        let path = SourceSpec::Path { path: "/models/All-MiniLM-L6-v2".into() };
        assert_eq!(name(&path, "F16"), "all-minilm-l6-v2-f16:latest");
        let file = SourceSpec::Path { path: "/m/SmolLM2-135M-Instruct-Q4_1.gguf".into() };
        assert_eq!(name(&file, "Q8_0"), "smollm2-135m-instruct-q8_0:latest");
    }

    #[test]
    fn estimates_grow_with_the_width_of_the_type() {
        let n = 135_000_000;
        assert!(estimate_output(n, "Q8_0") > estimate_output(n, "Q4_K_M"));
        assert!(estimate_output(n, "F16") > estimate_output(n, "Q8_0"));
        assert!(estimate_output(n, "Q8_0") as f64 > n as f64 * 8.5 / 8.0);
    }

    fn staged(path: &Path, bytes: &[u8]) -> StagedFile {
        std::fs::write(path, bytes).unwrap();
        StagedFile { path: path.to_owned(), sha256: hex(&Sha256::digest(bytes)), size: bytes.len() as u64 }
    }

    #[test]
    fn a_checkpoint_keeps_only_files_inside_the_staging_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join(".tmp-quantize-j1");
        std::fs::create_dir(&staging).unwrap();
        let converted = staged(&staging.join(".ondevice-convert-f16.gguf"), b"f16");
        let outside = staged(&tmp.path().join("elsewhere.gguf"), b"x");
        let quantized = crate::pipeline::QuantizedStep {
            file: outside.clone(),
            inputs: vec![],
            source_sha256: String::new(),
            imatrix_sha256: None,
        };
        let imatrix = staged(&staging.join(crate::pipeline::IMATRIX_NAME), b"matrix");
        let task = Checkpoint {
            sources: vec![],
            converted: Some(converted.clone()),
            imatrix: Some(imatrix.clone()),
            quantized: Some(quantized),
        };
        let cp = JobCheckpoint { task: Some(task), output: None }.confined(&staging);
        assert_eq!(cp.files(), vec![&converted, &imatrix], "a file outside the staging directory is never kept");
        let elsewhere = Checkpoint { imatrix: Some(outside.clone()), ..Checkpoint::default() };
        let cp_out = JobCheckpoint { task: Some(elsewhere), output: None }.confined(&staging);
        assert!(cp_out.files().is_empty(), "an importance matrix outside is never kept either");
        let mut output = staged(&staging.join("other.gguf"), b"out");
        let named =
            JobCheckpoint { task: None, output: Some(FinishedOutput { file: output.clone(), receipt: 1.into() }) };
        assert!(named.confined(&staging).output.is_none(), "the output is output.gguf");
        output.path = staging.join("sub").join(OUTPUT_NAME);
        let nested = JobCheckpoint { task: None, output: Some(FinishedOutput { file: output, receipt: 1.into() }) };
        assert!(nested.confined(&staging).output.is_none());
        // The JSON stored in the job: readable back.
        let json = serde_json::to_vec(&cp).unwrap();
        assert_eq!(serde_json::from_slice::<JobCheckpoint>(&json).unwrap(), cp);
    }

    #[test]
    fn cleaning_the_staging_directory_keeps_only_the_checkpointed_files() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join(".tmp-quantize-j2");
        std::fs::create_dir(&staging).unwrap();
        let keep = staged(&staging.join(".ondevice-convert-f16.gguf"), b"f16 bytes");
        staged(&staging.join(".output.gguf.123.partial"), b"half");
        std::fs::create_dir(staging.join("model")).unwrap();
        staged(&staging.join("model").join("config.json"), b"{}");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&keep.path, staging.join("link")).unwrap();
        let kept = clean_staging(&staging, std::slice::from_ref(&keep.path)).ok().unwrap();
        assert_eq!(kept, 9);
        let names: Vec<String> = std::fs::read_dir(&staging)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![".ondevice-convert-f16.gguf".to_owned()]);
        // Nothing to keep: a fresh, empty directory (created when missing).
        assert_eq!(clean_staging(&staging, &[]).ok(), Some(0));
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        std::fs::remove_dir(&staging).unwrap();
        assert_eq!(clean_staging(&staging, &[]).ok(), Some(0));
        assert!(staging.is_dir());
    }

    #[test]
    fn dedup_keys_follow_source_parameters_and_name() {
        let spec = QuantizeSpec {
            source: SourceSpec::Path { path: "/m.gguf".into() },
            quant_type: "Q8_0".into(),
            model: "m-q8_0:latest".into(),
            imatrix: None,
            make_imatrix: false,
            allow_requantize: false,
            tensor_types: vec![],
            output_tensor_type: None,
            token_embedding_type: None,
            no_quality: false,
            source_id: "sha256:aa".into(),
        };
        let key = dedup_key;
        let mut other = spec.clone();
        other.quant_type = "Q4_0".into();
        assert_ne!(key(&spec), key(&other));
        let mut same = spec.clone();
        same.source = SourceSpec::Path { path: "/elsewhere.gguf".into() };
        assert_eq!(key(&spec), key(&same), "the source's identity, not its path, counts");
        let mut renamed = spec.clone();
        renamed.model = "other:latest".into();
        assert_ne!(key(&spec), key(&renamed));
        let mut computed = spec.clone();
        computed.make_imatrix = true;
        assert_ne!(key(&spec), key(&computed), "a computed importance matrix is another job");
        // A job stored before `make_imatrix` existed reads back (without it).
        let mut stored = serde_json::to_value(&spec).unwrap();
        stored.as_object_mut().unwrap().remove("make_imatrix");
        let old: QuantizeSpec = serde_json::from_value(stored).expect("a spec stored without make_imatrix");
        assert_eq!(old, spec);
    }
}
