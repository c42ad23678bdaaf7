//! The `quantize` job kind across daemon restarts, in the daemon's real queue (SQLite in a temp
//! dir, the registry, the supervisor), with a stand-in task program (no llama.cpp needed): a job
//! stopped by a shutdown keeps its staging directory for the resume; a job whose checkpoint holds
//! the finished output (recorded from the task's receipt) registers it at the next start without
//! running the task again (the stand-in that the resume runs fails, so a task run would fail the
//! job), and it ends successfully when the output was already registered; a finished output that
//! no longer matches its checkpoint is not registered: the task runs again, and its failure leaves
//! nothing staged. A `make_imatrix` job is checked up front, asks its task to compute the matrix
//! in the staging directory, shows that as a step, and a cancel during it leaves nothing staged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{GgmlType, Value};
use ondevice_jobs::{JobSnapshot, Jobs, JobsConfig};
use ondevice_quantize::job::{
    FinishedOutput, JobCheckpoint, OUTPUT_NAME, QuantizeJobError, QuantizeKind, QuantizeParams, Quantizer,
    STAGING_PREFIX, TaskConfig,
};
use ondevice_quantize::pipeline::StagedFile;
use ondevice_registry::quota::QuotaPolicy;
use ondevice_registry::{ModelRef, Registry};
use ondevice_sandbox::{SandboxMode, SandboxPolicy};
use ondevice_store::{JobProgressRow, Store};
use ondevice_supervisor::{Supervisor, SupervisorOptions};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

fn small_gguf(path: &Path, seed: u8) -> Vec<u8> {
    let bytes = GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.name", Value::String("tiny".into()))
        .metadata("general.file_type", Value::U32(0))
        .metadata("llama.context_length", Value::U32(2048))
        .tensor("token_embd.weight", &[4, 2], GgmlType::F32, vec![seed; 32])
        .tensor("out", &[3], GgmlType::F32, vec![seed.wrapping_add(1); 12])
        .to_bytes();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn sha(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A task program: a shell script with `body`.
fn program(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Daemon {
    jobs: Jobs,
    shutdown: CancellationToken,
    registry: Arc<Registry>,
}

async fn daemon(home: &Path, program: PathBuf) -> Daemon {
    let store = Arc::new(Store::open(&home.join("ondevice.db")).unwrap());
    let registry = Arc::new(Registry::new(store.clone(), home).unwrap());
    let supervisor = Supervisor::new(home.join("logs"), SupervisorOptions::default()).unwrap();
    let config = TaskConfig {
        program,
        sandbox: SandboxPolicy { mode: SandboxMode::Off, ..SandboxPolicy::default() },
        threads: None,
        quota: QuotaPolicy { quota: None, evict: false, min_free: 0 },
    };
    let kind = QuantizeKind::new(registry.clone(), supervisor, config);
    let shutdown = CancellationToken::new();
    let jobs = Jobs::builder(store, JobsConfig::default()).kind(kind).start(shutdown.clone()).await.unwrap();
    Daemon { jobs, shutdown, registry }
}

impl Daemon {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.jobs.wait()).await.expect("jobs stop");
    }

    async fn until(&self, id: &str, done: impl Fn(&JobSnapshot) -> bool) -> JobSnapshot {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let j = self.jobs.get(id).await.unwrap();
            if done(&j) {
                return j;
            }
            assert!(tokio::time::Instant::now() < deadline, "job never got there: {j:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn staging(home: &Path, id: &str) -> PathBuf {
    home.join("blobs").join(format!("{STAGING_PREFIX}{id}"))
}

/// Starts a job whose task waits (a stand-in still working), stops the daemon while it runs,
/// returns the job's id: the staging directory stays for the resume.
async fn stopped_job(home: &Path, source: &Path) -> String {
    stopped_job_with(home, source, "exec /bin/sleep 600", |_, _| true).await
}

/// As [`stopped_job`] with the task's script `body`, stopped once `ready(home, id)`.
async fn stopped_job_with(home: &Path, source: &Path, body: &str, ready: impl Fn(&Path, &str) -> bool) -> String {
    let waits = program(home, "waits.sh", body);
    let d = daemon(home, waits).await;
    let q = Quantizer::new(d.registry.clone(), d.jobs.clone());
    let params = QuantizeParams {
        source: source.display().to_string(),
        quant_type: "Q8_0".into(),
        name: Some("tiny-q8:latest".into()),
        ..QuantizeParams::default()
    };
    let job = q.quantize(params).await.unwrap();
    d.until(&job.id, |j| j.detail["reserved_bytes"].is_u64() && j.progress.message.as_deref() == Some("starting"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.until(&job.id, |_| ready(home, &job.id)).await;
    d.stop().await;
    let dir = staging(home, &job.id);
    assert!(dir.is_dir(), "a shutdown keeps the staging directory of a resumable job");
    job.id
}

/// Stores `checkpoint` as the job's, as the daemon would have.
fn set_checkpoint(home: &Path, id: &str, checkpoint: &JobCheckpoint) {
    let store = Store::open(&home.join("ondevice.db")).unwrap();
    let progress = JobProgressRow { done: 0, total: None, unit: "steps", message: Some("registering") };
    let detail = serde_json::json!({"model": "tiny-q8:latest"}).to_string();
    store.set_job_checkpoint(id, &serde_json::to_vec(checkpoint).unwrap(), progress, &detail, 0).unwrap();
}

fn finished(dir: &Path, seed: u8) -> FinishedOutput {
    let path = dir.join(OUTPUT_NAME);
    let bytes = small_gguf(&path, seed);
    let receipt = serde_json::json!({"output_sha256": sha(&bytes), "output_size": bytes.len(), "inputs": []});
    FinishedOutput { file: StagedFile { path, sha256: sha(&bytes), size: bytes.len() as u64 }, receipt }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_output_is_registered_at_the_next_start_without_running_the_task() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("tiny.gguf");
    small_gguf(&source, 1);
    let id = stopped_job(home.path(), &source).await;
    let dir = staging(home.path(), &id);
    let done = finished(&dir, 7);
    std::fs::write(dir.join(".output.gguf.4242.partial"), b"half written").unwrap();
    set_checkpoint(home.path(), &id, &JobCheckpoint { task: None, output: Some(done.clone()) });

    // The stand-in fails: had the resumed job run the task, it would fail.
    let fails = program(home.path(), "fails.sh", "echo 'error: the task ran again' >&2; exit 1");
    let d = daemon(home.path(), fails.clone()).await;
    let j = d.until(&id, |j| j.state.is_terminal()).await;
    assert_eq!(j.state.as_str(), "succeeded", "{j:?}");
    assert_eq!(j.detail["resumed_from"], "output", "{:?}", j.detail);
    let m = d.registry.show(&"tiny-q8:latest".parse::<ModelRef>().unwrap()).unwrap();
    assert_eq!(m.digest.hex(), done.file.sha256);
    assert!(!dir.exists(), "nothing staged is left");
    d.stop().await;

    // The daemon died after registering but before the job's end was recorded: the resume
    // finds the model and ends the job, again without the task.
    let id = stopped_job(home.path(), &source).await;
    let dir = staging(home.path(), &id);
    set_checkpoint(
        home.path(),
        &id,
        &JobCheckpoint {
            task: None,
            output: Some(FinishedOutput {
                file: StagedFile { path: dir.join(OUTPUT_NAME), ..done.file.clone() },
                ..done.clone()
            }),
        },
    );
    let d = daemon(home.path(), fails).await;
    let j = d.until(&id, |j| j.state.is_terminal()).await;
    assert_eq!(j.state.as_str(), "succeeded", "{j:?}");
    assert_eq!(j.detail["resumed_from"], "registered", "{:?}", j.detail);
    let models = d.registry.list().unwrap();
    assert_eq!(models.iter().filter(|m| m.reference() == "tiny-q8:latest").count(), 1, "registered once");
    assert!(!dir.exists());
    d.stop().await;
}

/// The task finished (its output in place, its receipt printed) and the daemon stopped before it
/// registered the output: the receipt was recorded as the checkpoint, and the next start
/// registers the output without running the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_printed_its_receipt_is_not_run_again() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("tiny.gguf");
    small_gguf(&source, 1);
    let made = home.path().join("made.gguf");
    let bytes = small_gguf(&made, 5);
    let receipt = serde_json::json!({"output_sha256": sha(&bytes), "output_size": bytes.len(), "inputs": []});
    // The stand-in writes the output, prints its receipt and is still running when the daemon stops.
    let body = format!("/bin/cp {} {OUTPUT_NAME}\necho 'receipt {receipt}'\nexec /bin/sleep 600", made.display());
    let recorded = |home: &Path, id: &str| {
        let store = Store::open(&home.join("ondevice.db")).unwrap();
        store.get_job(id).unwrap().is_some_and(|j| j.checkpoint.is_some())
    };
    let id = stopped_job_with(home.path(), &source, &body, recorded).await;
    let fails = program(home.path(), "fails.sh", "echo 'error: the task ran again' >&2; exit 1");
    let d = daemon(home.path(), fails).await;
    let j = d.until(&id, |j| j.state.is_terminal()).await;
    assert_eq!(j.state.as_str(), "succeeded", "{j:?}");
    assert_eq!(j.detail["resumed_from"], "output", "{:?}", j.detail);
    let m = d.registry.show(&"tiny-q8:latest".parse::<ModelRef>().unwrap()).unwrap();
    assert_eq!(m.digest.hex(), sha(&bytes));
    assert!(!staging(home.path(), &id).exists());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_output_that_changed_is_not_registered_and_the_task_runs_again() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("tiny.gguf");
    small_gguf(&source, 1);
    let id = stopped_job(home.path(), &source).await;
    let dir = staging(home.path(), &id);
    let done = finished(&dir, 7);
    // Another file of the same size where the checkpoint's was.
    small_gguf(&done.file.path, 9);
    set_checkpoint(home.path(), &id, &JobCheckpoint { task: None, output: Some(done) });

    let fails = program(home.path(), "fails.sh", "echo 'error: the task ran again' >&2; exit 1");
    let d = daemon(home.path(), fails).await;
    let j = d.until(&id, |j| j.state.is_terminal()).await;
    assert_eq!(j.state.as_str(), "failed", "{j:?}");
    assert!(j.error.as_deref().is_some_and(|e| e.contains("the task ran again")), "{j:?}");
    assert!(d.registry.show(&"tiny-q8:latest".parse::<ModelRef>().unwrap()).is_err(), "nothing registered");
    assert!(!dir.exists(), "a failed job leaves nothing staged");
    d.stop().await;
}

/// `make_imatrix` is checked up front: with an importance matrix file it is refused, it satisfies
/// the types that need a matrix (refused without one), and it is refused for the types that use
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_imatrix_requests_are_checked_before_a_job_exists() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("tiny.gguf");
    small_gguf(&source, 1);
    let matrix = home.path().join("m.dat");
    std::fs::write(&matrix, b"not read here").unwrap();
    let d = daemon(home.path(), program(home.path(), "never.sh", "exit 1")).await;
    let params = |quant_type: &str, make_imatrix: bool, imatrix: Option<&Path>| QuantizeParams {
        source: source.display().to_string(),
        quant_type: quant_type.into(),
        make_imatrix,
        imatrix: imatrix.map(Path::to_owned),
        ..QuantizeParams::default()
    };
    let refused = |p: QuantizeParams| match Quantizer::spec(&d.registry, &p) {
        Err(QuantizeJobError::Invalid(m)) => m,
        other => panic!("{p:?} was not refused as invalid: {other:?}"),
    };
    let both = refused(params("Q4_K_M", true, Some(&matrix)));
    assert!(both.contains("make_imatrix") && both.contains("choose one"), "{both}");
    let missing = refused(params("IQ2_XS", false, None));
    assert!(missing.contains("needs an importance matrix") && missing.contains("--make-imatrix"), "{missing}");
    let unused = refused(params("F16", true, None));
    assert!(unused.contains("does not use an importance matrix"), "{unused}");
    let spec = Quantizer::spec(&d.registry, &params("IQ2_XS", true, None)).expect("IQ2_XS with make_imatrix");
    assert!(spec.make_imatrix && spec.imatrix.is_none(), "{spec:?}");
    assert!(Quantizer::spec(&d.registry, &params("IQ2_XS", false, Some(&matrix))).is_ok());
    let jobs = d.jobs.list(&ondevice_jobs::JobFilter::default()).await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
    d.stop().await;
}

/// A `make_imatrix` job asks its task to compute the matrix (in the staging directory, the task's
/// scratch), shows the task's `computing importance matrix` stage as its step, counted in chunks,
/// and a cancel during it leaves nothing staged (the stand-in has half written a matrix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_imatrix_job_computes_the_matrix_in_its_task_as_a_step() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("tiny.gguf");
    small_gguf(&source, 1);
    let request = home.path().join("request.json");
    let body = format!(
        "printf '%s' \"$3\" > {}\nprintf 'half' > .ondevice-imatrix.dat\necho 'progress computing_importance_matrix 0 0'\n\
         echo 'progress computing_importance_matrix 1 2'\nexec /bin/sleep 600",
        request.display()
    );
    let d = daemon(home.path(), program(home.path(), "imatrix.sh", &body)).await;
    let q = Quantizer::new(d.registry.clone(), d.jobs.clone());
    let params = QuantizeParams {
        source: source.display().to_string(),
        quant_type: "IQ2_XS".into(),
        name: Some("tiny-iq2:latest".into()),
        make_imatrix: true,
        ..QuantizeParams::default()
    };
    let job = q.quantize(params).await.unwrap();
    let j = d.until(&job.id, |j| j.progress.done == 1 || j.state.is_terminal()).await;
    assert_eq!(j.progress.message.as_deref(), Some("computing importance matrix"), "{j:?}");
    assert_eq!((j.progress.unit.as_str(), j.progress.total), ("chunks", Some(2)), "{j:?}");
    assert_eq!(j.detail["stage"], "computing importance matrix", "{:?}", j.detail);
    let sent: serde_json::Value = serde_json::from_slice(&std::fs::read(&request).unwrap()).unwrap();
    assert_eq!(sent["make_imatrix"], true, "{sent}");
    assert!(sent["imatrix"].is_null(), "{sent}");
    let dir = staging(home.path(), &job.id);
    assert_eq!(sent["scratch"], dir.display().to_string(), "the matrix is made in the staging directory: {sent}");
    assert!(dir.join(".ondevice-imatrix.dat").is_file());

    d.jobs.cancel(&job.id).await.unwrap();
    let j = d.until(&job.id, |j| j.state.is_terminal()).await;
    assert_eq!(j.state.as_str(), "cancelled", "{j:?}");
    assert!(!dir.exists(), "a cancel leaves nothing staged");
    assert!(d.registry.show(&"tiny-iq2:latest".parse::<ModelRef>().unwrap()).is_err(), "nothing registered");
    d.stop().await;
}
