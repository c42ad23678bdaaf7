//! The queue against a real SQLite store: resume after `kill -9` from the last checkpoint,
//! per-class concurrency, a user's cancel versus a shutdown, dedup, failures, pruning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ondevice_jobs::{
    CancelReason, JobContext, JobError, JobFailure, JobFilter, JobKind, JobSnapshot, JobState, Jobs, JobsConfig,
    ResourceClass,
};
use ondevice_store::Store;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Counts from its checkpoint to `to`, one step every `step_ms`, appending `pid step` to `log`
/// before saving the next step as its checkpoint.
struct Count;

#[derive(Serialize, Deserialize)]
struct CountSpec {
    to: u64,
    step_ms: u64,
    log: PathBuf,
}

impl JobKind for Count {
    const KIND: &'static str = "count";
    type Spec = CountSpec;

    fn dedup_key(&self, _spec: &CountSpec) -> Option<String> {
        None
    }

    fn class(&self, _spec: &CountSpec) -> ResourceClass {
        ResourceClass::CpuHeavy
    }

    fn initial_detail(&self, spec: &CountSpec) -> serde_json::Value {
        serde_json::json!({ "to": spec.to })
    }

    async fn run(self: Arc<Self>, spec: CountSpec, ctx: JobContext) -> Result<(), JobFailure> {
        use std::io::Write as _;
        let start = ctx.checkpoint().map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8-byte checkpoint")));
        for i in start..spec.to {
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&spec.log)?;
            writeln!(log, "{} {i}", std::process::id())?;
            ctx.progress(i + 1, Some(spec.to), "steps");
            ctx.save_checkpoint_async((i + 1).to_le_bytes().to_vec()).await?;
            tokio::select! {
                () = ctx.cancelled() => return Err(JobFailure::Cancelled),
                () = tokio::time::sleep(Duration::from_millis(spec.step_ms)) => {}
            }
        }
        ctx.update_detail(|d| d["finished_by"] = std::process::id().into());
        Ok(())
    }
}

/// Holds every job until the test opens its gate (or the job is cancelled); records what ran
/// at once per class and why a job was cancelled. Each opening lets exactly one job through,
/// whether or not a job is already waiting (openings are counted, never coalesced).
struct Gate {
    open: tokio::sync::Semaphore,
    running: Mutex<HashMap<&'static str, (usize, usize)>>,
    reasons: Mutex<Vec<(String, CancelReason)>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { open: tokio::sync::Semaphore::new(0), running: Mutex::default(), reasons: Mutex::default() }
    }
}

impl Gate {
    fn let_one_through(&self) {
        self.open.add_permits(1);
    }
}

#[derive(Serialize, Deserialize)]
struct GateSpec {
    class: String,
    key: Option<String>,
    fail: Option<String>,
    panic: bool,
}

fn gate_spec(class: ResourceClass) -> GateSpec {
    GateSpec { class: class.as_str().into(), key: None, fail: None, panic: false }
}

impl JobKind for Gate {
    const KIND: &'static str = "gate";
    type Spec = GateSpec;

    fn dedup_key(&self, spec: &GateSpec) -> Option<String> {
        spec.key.clone()
    }

    fn class(&self, spec: &GateSpec) -> ResourceClass {
        ResourceClass::ALL.into_iter().find(|c| c.as_str() == spec.class).expect("a class")
    }

    fn initial_detail(&self, _spec: &GateSpec) -> serde_json::Value {
        serde_json::json!({})
    }

    async fn run(self: Arc<Self>, spec: GateSpec, ctx: JobContext) -> Result<(), JobFailure> {
        let class = self.class(&spec).as_str();
        {
            let mut r = self.running.lock().unwrap();
            let e = r.entry(class).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        let outcome = tokio::select! {
            permit = self.open.acquire() => {
                permit.expect("the gate is never closed").forget();
                Ok(())
            }
            () = ctx.cancelled() => {
                self.reasons.lock().unwrap().push((ctx.id().to_owned(), ctx.cancel_reason().expect("cancelled")));
                Err(JobFailure::Cancelled)
            }
        };
        self.running.lock().unwrap().get_mut(class).expect("entry").0 -= 1;
        if spec.panic {
            panic!("a buggy job");
        }
        if let Some(msg) = spec.fail {
            return Err(JobFailure::Failed(msg));
        }
        outcome
    }
}

fn store(dir: &Path) -> Arc<Store> {
    Arc::new(Store::open(&dir.join("ondevice.db")).unwrap())
}

async fn wait_state(jobs: &Jobs, id: &str, want: JobState) -> JobSnapshot {
    for _ in 0..500 {
        let s = jobs.get(id).await.unwrap();
        if s.state == want {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never reached {want}: {:?}", jobs.get(id).await.unwrap());
}

async fn states(jobs: &Jobs, ids: &[String]) -> Vec<JobState> {
    let mut out = Vec::new();
    for id in ids {
        out.push(jobs.get(id).await.unwrap().state);
    }
    out
}

const CHILD_ENV: &str = "ONDEVICE_JOBS_TEST_CHILD_HOME";

#[tokio::test]
async fn a_job_killed_with_sigkill_resumes_from_its_last_checkpoint() {
    if let Some(home) = std::env::var_os(CHILD_ENV) {
        // The child: a "daemon" that runs the counting job until it is killed.
        let home = PathBuf::from(home);
        let jobs = Jobs::builder(store(&home), JobsConfig::default())
            .kind(Arc::new(Count))
            .start(CancellationToken::new())
            .await
            .unwrap();
        jobs.submit::<Count>(&CountSpec { to: 40, step_ms: 50, log: home.join("log") }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        panic!("the child was not killed");
    }
    let home = tempfile::tempdir().unwrap();
    let db = store(home.path()); // migrated before the child opens it
    #[allow(clippy::disallowed_methods)] // the test's own stand-in daemon, killed with SIGKILL
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_job_killed_with_sigkill_resumes_from_its_last_checkpoint", "--nocapture"])
        .env(CHILD_ENV, home.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let row = loop {
        let rows = db.list_jobs(Some("count"), None).unwrap();
        if let Some(r) = rows.into_iter().find(|r| r.done >= 10) {
            break r;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child exited early");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.wait().unwrap();
    let killed = db.get_job(&row.id).unwrap().unwrap();
    assert_eq!(killed.state, "running", "a killed daemon leaves its job running in the table");
    let checkpoint = u64::from_le_bytes(killed.checkpoint.clone().unwrap().try_into().unwrap());
    assert!((10..40).contains(&checkpoint), "{checkpoint}");

    let jobs = Jobs::builder(db.clone(), JobsConfig::default())
        .kind(Arc::new(Count))
        .start(CancellationToken::new())
        .await
        .unwrap();
    let done = wait_state(&jobs, &row.id, JobState::Succeeded).await;
    assert_eq!((done.progress.done, done.progress.total, done.progress.unit.as_str()), (40, Some(40), "steps"));
    assert_eq!(done.detail["finished_by"], std::process::id());
    assert_eq!(done.detail["to"], 40, "the detail kept what the job started with");

    let log = std::fs::read_to_string(home.path().join("log")).unwrap();
    let steps: Vec<(u32, u64)> = log
        .lines()
        .map(|l| {
            let (pid, step) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), step.parse().unwrap())
        })
        .collect();
    let mine: Vec<u64> = steps.iter().filter(|(p, _)| *p == std::process::id()).map(|(_, s)| *s).collect();
    assert_eq!(mine.first(), Some(&checkpoint), "the resumed run starts at the checkpoint: {log}");
    assert_eq!(mine, (checkpoint..40).collect::<Vec<_>>());
    let child_steps = steps.len() - mine.len();
    // At most the one step between its log line and its checkpoint ran twice.
    assert!(child_steps as u64 <= checkpoint + 1, "{log}");
}

#[tokio::test]
async fn each_class_runs_at_most_its_limit() {
    let home = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let config = JobsConfig { downloads: 1, cpu_heavy: 1, io: 2, ..JobsConfig::default() };
    let jobs =
        Jobs::builder(store(home.path()), config).kind(gate.clone()).start(CancellationToken::new()).await.unwrap();
    let mut cpu = Vec::new();
    for _ in 0..3 {
        cpu.push(jobs.submit::<Gate>(&gate_spec(ResourceClass::CpuHeavy)).await.unwrap().id);
    }
    let mut io = Vec::new();
    for _ in 0..3 {
        io.push(jobs.submit::<Gate>(&gate_spec(ResourceClass::Io)).await.unwrap().id);
    }
    let dl = jobs.submit::<Gate>(&gate_spec(ResourceClass::Downloads)).await.unwrap().id;
    wait_state(&jobs, &dl, JobState::Running).await;
    for _ in 0..200 {
        let r = gate.running.lock().unwrap().clone();
        if r.get("cpu-heavy").map(|e| e.0) == Some(1) && r.get("io").map(|e| e.0) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let count = |v: &[JobState], s: JobState| v.iter().filter(|x| **x == s).count();
    let cpu_states = states(&jobs, &cpu).await;
    let io_states = states(&jobs, &io).await;
    assert_eq!((count(&cpu_states, JobState::Running), count(&cpu_states, JobState::Queued)), (1, 2), "{cpu_states:?}");
    assert_eq!((count(&io_states, JobState::Running), count(&io_states, JobState::Queued)), (2, 1), "{io_states:?}");
    let queued = jobs.list(&JobFilter { kind: Some("gate".into()), state: Some(JobState::Queued) }).await.unwrap();
    assert_eq!(queued.len(), 3);
    // Let everything through, one gate opening at a time.
    for _ in 0..7 {
        gate.let_one_through();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in cpu.iter().chain(&io).chain([&dl]) {
        wait_state(&jobs, id, JobState::Succeeded).await;
    }
    let r = gate.running.lock().unwrap().clone();
    assert_eq!((r["cpu-heavy"].1, r["io"].1, r["downloads"].1), (1, 2, 1), "peak concurrency per class");
}

#[tokio::test]
async fn a_users_cancel_ends_a_job_but_a_shutdown_keeps_it_for_the_next_start() {
    let home = tempfile::tempdir().unwrap();
    let db = store(home.path());
    let gate = Arc::new(Gate::default());
    let shutdown = CancellationToken::new();
    let jobs =
        Jobs::builder(db.clone(), JobsConfig::default()).kind(gate.clone()).start(shutdown.clone()).await.unwrap();
    let a = jobs.submit::<Gate>(&gate_spec(ResourceClass::Io)).await.unwrap().id;
    let b = jobs.submit::<Gate>(&gate_spec(ResourceClass::Io)).await.unwrap().id;
    wait_state(&jobs, &a, JobState::Running).await;
    wait_state(&jobs, &b, JobState::Running).await;

    let cancelled = jobs.cancel(&a).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(db.get_job(&a).unwrap().unwrap().state, "cancelled");
    assert!(matches!(jobs.cancel(&a).await, Err(JobError::Finished { state: JobState::Cancelled, .. })));
    assert!(matches!(jobs.get("nope").await, Err(JobError::NotFound(_))));

    shutdown.cancel();
    jobs.wait().await;
    assert_eq!(db.get_job(&b).unwrap().unwrap().state, "running", "a shutdown leaves the job resumable");
    assert!(matches!(jobs.submit::<Gate>(&gate_spec(ResourceClass::Io)).await, Err(JobError::ShuttingDown)));
    let reasons = gate.reasons.lock().unwrap().clone();
    assert_eq!(reasons, vec![(a.clone(), CancelReason::User), (b.clone(), CancelReason::Shutdown)]);

    let jobs = Jobs::builder(db.clone(), JobsConfig::default())
        .kind(gate.clone())
        .start(CancellationToken::new())
        .await
        .unwrap();
    wait_state(&jobs, &b, JobState::Running).await;
    gate.let_one_through();
    wait_state(&jobs, &b, JobState::Succeeded).await;
    assert_eq!(jobs.get(&a).await.unwrap().state, JobState::Cancelled, "a cancelled job is not resumed");
}

#[tokio::test]
async fn dedup_failures_panics_unknown_kinds_and_pruning() {
    let home = tempfile::tempdir().unwrap();
    let db = store(home.path());
    let gate = Arc::new(Gate::default());
    let shutdown = CancellationToken::new();
    let jobs =
        Jobs::builder(db.clone(), JobsConfig::default()).kind(gate.clone()).start(shutdown.clone()).await.unwrap();

    let keyed = |k: &str| GateSpec { key: Some(k.into()), ..gate_spec(ResourceClass::Io) };
    let first = jobs.submit::<Gate>(&keyed("m")).await.unwrap();
    let again = jobs.submit::<Gate>(&keyed("m")).await.unwrap();
    let other = jobs.submit::<Gate>(&keyed("n")).await.unwrap();
    assert_eq!(first.id, again.id, "same key while in progress: the same job");
    assert_ne!(first.id, other.id);

    let failing_spec = GateSpec { fail: Some("disk on fire".into()), ..gate_spec(ResourceClass::Io) };
    let failing = jobs.submit::<Gate>(&failing_spec).await.unwrap().id;
    let panicking = jobs.submit::<Gate>(&GateSpec { panic: true, ..gate_spec(ResourceClass::Io) }).await.unwrap().id;
    for _ in 0..4 {
        gate.let_one_through();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_state(&jobs, &first.id, JobState::Succeeded).await;
    let f = wait_state(&jobs, &failing, JobState::Failed).await;
    assert_eq!(f.error.as_deref(), Some("disk on fire"));
    assert!(f.finished_at.is_some());
    let p = wait_state(&jobs, &panicking, JobState::Failed).await;
    assert!(p.error.unwrap().contains("panicked"));
    wait_state(&jobs, &other.id, JobState::Succeeded).await;
    let after = jobs.submit::<Gate>(&keyed("m")).await.unwrap();
    assert_ne!(after.id, first.id, "a finished job is not joined");

    gate.let_one_through();
    wait_state(&jobs, &after.id, JobState::Succeeded).await;
    assert_eq!(db.list_jobs(None, Some("succeeded")).unwrap().len(), 3);

    // A queue keeping two finished jobs prunes the older ones (at start and after each job); a
    // job of a kind that build does not know is failed at start, not dropped.
    // The daemon stops with a job left over; the next start is a build without that kind.
    let unknown = jobs.submit::<Gate>(&gate_spec(ResourceClass::Io)).await.unwrap().id;
    shutdown.cancel();
    jobs.wait().await;
    let config = JobsConfig { keep_finished: 2, ..JobsConfig::default() };
    let jobs2 = Jobs::builder(db.clone(), config).start(CancellationToken::new()).await.unwrap();
    let left: Vec<String> = db.list_jobs(None, None).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left.len(), 3, "the two newest finished jobs and the unknown one: {left:?}");
    assert!(left.contains(&after.id) && left.contains(&unknown), "{left:?}");
    let u = jobs2.get(&unknown).await.unwrap();
    assert_eq!((u.state, u.error.as_deref()), (JobState::Failed, Some("unknown job kind \"gate\"")));
    assert!(matches!(jobs2.submit::<Gate>(&gate_spec(ResourceClass::Io)).await, Err(JobError::UnknownKind(_))));
}
