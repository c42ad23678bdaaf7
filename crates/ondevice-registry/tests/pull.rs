//! Pulls against a real HTTP server with Range support bound to 127.0.0.1:0 (tests/support),
//! with a real store and blob directory in a temp home: URL and catalog pulls, mirror fallback on
//! corruption, the SSRF guard on first hop and on redirects, quota refusal writing nothing, shared
//! concurrent pulls, cancel, servers without ranges, and resume after a stop re-fetching at most
//! one chunk per connection. The download engine alone: an interrupted download (dropped as a
//! killed daemon would, or stopped by its cancel token) resumes inside its chunks.

#[path = "support/range_server.rs"]
mod range_server;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{GgmlType, Value};
use ondevice_jobs::{JobError, JobSnapshot as JobInfo, JobState, JobsConfig};
use ondevice_registry::catalog::CatalogSource;
use ondevice_registry::download::{ChunkState, Download, Hooks, Progress, Source, Tuning, hash_file};
use ondevice_registry::fetch::Fetcher;
use ondevice_registry::jobs::{PullConfig, PullDetail, PullError, Pulls};
use ondevice_registry::quota::QuotaPolicy;
use ondevice_registry::safety::HostPolicy;
use ondevice_registry::{ModelRef, Registry};
use ondevice_store::Store;
use range_server::{RangeServer, Served};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

/// A valid GGUF of roughly `tensor_bytes` bytes.
fn gguf(seed: u8, tensor_bytes: usize) -> Vec<u8> {
    let n = (tensor_bytes / 4).max(1);
    let data: Vec<u8> = (0..n * 4).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.name", Value::String(format!("gen{seed}")))
        .metadata("general.file_type", Value::U32(0))
        .tensor("w", &[n as u64], GgmlType::F32, data)
        .to_bytes()
}

fn sha(data: &[u8]) -> String {
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

struct Env {
    home: tempfile::TempDir,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    jobs: Pulls,
}

fn config(catalog: Option<&Path>, quota: Option<u64>) -> PullConfig {
    PullConfig {
        tuning: Tuning {
            connections: 2,
            chunk_size: 64 << 10,
            retries: 1,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            max_size: 1 << 30,
        },
        quota: QuotaPolicy { quota, evict: false, min_free: 0 },
        catalogs: catalog.map(|p| vec![CatalogSource::File(p.to_path_buf())]).unwrap_or_default(),
    }
}

async fn env_in(home: tempfile::TempDir, allow: &[&str], config: PullConfig) -> Env {
    let store = Arc::new(Store::open(&home.path().join("ondevice.db")).unwrap());
    let registry = Arc::new(Registry::new(store, home.path()).unwrap());
    let fetcher = Fetcher::new(HostPolicy::new(allow), Vec::new()).unwrap();
    let shutdown = CancellationToken::new();
    let jobs = Pulls::start(registry.clone(), fetcher, config, JobsConfig::default(), shutdown.clone()).await.unwrap();
    Env { home, registry, shutdown, jobs }
}

async fn env(allow: &[&str], config: PullConfig) -> Env {
    env_in(tempfile::tempdir().unwrap(), allow, config).await
}

/// The job's end. A job that already ended (a quota refusal can end it before the caller gets
/// here) is no longer live, so `watch` has nothing for it: its stored record is the end.
async fn finish(jobs: &Pulls, job: &JobInfo) -> JobInfo {
    let Some(mut rx) = jobs.jobs().watch(&job.id) else {
        let done = jobs.jobs().get(&job.id).await.unwrap();
        assert!(done.state.is_terminal(), "neither live nor finished: {done:?}");
        return done;
    };
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|i| i.state.is_terminal()))
        .await
        .unwrap()
        .unwrap()
        .clone()
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn catalog_file(dir: &Path, name: &str, data: &[u8], urls: &[String]) -> std::path::PathBuf {
    let path = dir.join("catalog.toml");
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "[[model]]\nname = {name:?}\nlicense = \"mit\"\n[[model.files]]\nname = \"m.gguf\"\nsize = {}\nsha256 = {:?}\nurls = [{}]\n",
            data.len(),
            sha(data),
            urls.join(", ")
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_pull_registers_the_verified_file_and_two_pulls_share_one_download() {
    let server = RangeServer::start().await;
    let data = gguf(1, 300 << 10);
    server.put("/Tiny-Model.gguf", Served { throttle: 2 << 20, ..Served::bytes(data.clone()) });
    let e = env(&["127.0.0.1"], config(None, None)).await;

    let url = server.url("/Tiny-Model.gguf");
    let (a, b) = tokio::join!(e.jobs.pull(&url, None), e.jobs.pull(&url, None));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, b.id, "a second pull of the same model joins the first");
    assert_eq!(PullDetail::of(&a).model, "tiny-model:latest");
    let done = finish(&e.jobs, &a).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(PullDetail::of(&done).digest.as_deref(), Some(format!("sha256:{}", sha(&data)).as_str()));
    assert!(server.bytes_sent() <= data.len() as u64 + 2, "one download: {} bytes sent", server.bytes_sent());
    let m = e.registry.show(&"tiny-model".parse().unwrap()).unwrap();
    assert_eq!((m.size, m.architecture.as_deref()), (data.len() as u64, Some("llama")));
    assert!(m.source.starts_with("http://127.0.0.1:"), "{}", m.source);
    assert_eq!(std::fs::read(e.registry.blobs().path(&m.digest)).unwrap(), data);
    assert!(files_in(e.registry.partials_dir()).is_empty());
    assert_eq!(e.jobs.jobs().get(&a.id).await.unwrap().state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_without_ranges_and_redirects_work() {
    let server = RangeServer::start().await;
    let data = gguf(2, 200 << 10);
    server.put("/plain.gguf", Served { ignore_ranges: true, ..Served::bytes(data.clone()) });
    server.put("/moved", Served { redirect_to: Some("/plain.gguf".into()), ..Served::bytes(Vec::new()) });
    let e = env(&["127.0.0.1"], config(None, None)).await;
    let job = e.jobs.pull(&server.url("/moved"), Some("plain:v1".parse().unwrap())).await.unwrap();
    let done = finish(&e.jobs, &job).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(e.registry.show(&"plain:v1".parse().unwrap()).unwrap().size, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_first_hop_and_on_redirect() {
    let server = RangeServer::start().await;
    server.put("/m.gguf", Served::bytes(gguf(3, 1024)));
    let port = server.addr.port();
    server.put(
        "/to-localhost",
        Served { redirect_to: Some(format!("http://localhost:{port}/m.gguf")), ..Served::bytes(Vec::new()) },
    );

    let closed = env(&[], config(None, None)).await;
    let err = closed.jobs.pull(&server.url("/m.gguf"), None).await.unwrap_err();
    assert!(matches!(err, PullError::Url(_)), "{err}");
    assert!(err.to_string().contains("allow_hosts"), "{err}");
    for bad in
        ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "http://[::1]:1/x", "http://u:p@127.0.0.1/"]
    {
        assert!(closed.jobs.pull(bad, None).await.is_err(), "{bad}");
    }

    // 127.0.0.1 is allowed, the redirect to `localhost` is not: refused on that hop.
    let open = env(&["127.0.0.1"], config(None, None)).await;
    let job = open.jobs.pull(&server.url("/to-localhost"), Some("m:x".parse().unwrap())).await.unwrap();
    let done = finish(&open.jobs, &job).await;
    assert_eq!(done.state, JobState::Failed);
    let msg = done.error.unwrap();
    assert!(msg.contains("localhost") && msg.contains("allow_hosts"), "{msg}");
    assert!(open.registry.list().unwrap().is_empty());
    assert!(files_in(open.registry.partials_dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_mirror_falls_back_to_a_good_one_or_fails_with_nothing_registered() {
    let server = RangeServer::start().await;
    let data = gguf(4, 256 << 10);
    server.put("/bad.gguf", Served { corrupt: true, ..Served::bytes(data.clone()) });
    server.put("/good.gguf", Served::bytes(data.clone()));
    server.put("/down.gguf", Served { fail_with: Some(503), ..Served::bytes(Vec::new()) });
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog_file(
        dir.path(),
        "demo:1",
        &data,
        &[server.url("/down.gguf"), server.url("/bad.gguf"), server.url("/good.gguf")],
    );
    let e = env(&["127.0.0.1"], config(Some(&cat), None)).await;
    let done = finish(&e.jobs, &e.jobs.pull("demo:1", None).await.unwrap()).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let m = e.registry.show(&"demo:1".parse().unwrap()).unwrap();
    assert_eq!((m.digest.hex(), m.license.as_deref()), (sha(&data), Some("mit")));
    e.registry.verify(None).unwrap().iter().for_each(|r| assert_eq!(r.status, ondevice_registry::VerifyStatus::Ok));

    let dir2 = tempfile::tempdir().unwrap();
    let cat = catalog_file(dir2.path(), "demo:1", &data, &[server.url("/bad.gguf")]);
    let e = env(&["127.0.0.1"], config(Some(&cat), None)).await;
    let done = finish(&e.jobs, &e.jobs.pull("demo:1", None).await.unwrap()).await;
    assert_eq!(done.state, JobState::Failed);
    assert!(done.error.as_deref().unwrap().contains("hashes to"), "{done:?}");
    assert!(e.registry.list().unwrap().is_empty());
    assert!(files_in(e.registry.partials_dir()).is_empty());
    assert!(files_in(e.registry.blobs().dir()).is_empty(), "{:?}", files_in(e.registry.blobs().dir()));

    let err = e.jobs.pull("absent:1", None).await.unwrap_err();
    assert!(err.to_string().contains("not in the catalog"), "{err}");
    for bad in ["../../etc/passwd", "a//b", "sha256:../../x"] {
        assert!(matches!(e.jobs.pull(bad, None).await, Err(PullError::Ref(_))), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_too_small_refuses_before_writing_anything() {
    let server = RangeServer::start().await;
    let data = gguf(5, 128 << 10);
    server.put("/m.gguf", Served::bytes(data.clone()));
    let e = env(&["127.0.0.1"], config(None, Some(64 << 10))).await;
    let done = finish(&e.jobs, &e.jobs.pull(&server.url("/m.gguf"), None).await.unwrap()).await;
    assert_eq!(done.state, JobState::Failed);
    let msg = done.error.unwrap();
    assert!(msg.contains("quota") && msg.contains("ondevice models rm"), "{msg}");
    assert!(files_in(e.registry.partials_dir()).is_empty());
    assert!(files_in(e.registry.blobs().dir()).is_empty());
    assert!(server.bytes_sent() <= 1, "only the probe byte: {}", server.bytes_sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_evict_a_pull_removes_the_least_recently_used_unpinned_model_only() {
    let server = RangeServer::start().await;
    let (new, newer) = (gguf(20, 128 << 10), gguf(21, 128 << 10));
    server.put("/new.gguf", Served::bytes(new.clone()));
    server.put("/newer.gguf", Served::bytes(newer.clone()));
    // Room for two models of this size, not three.
    let mut cfg = config(None, Some(300 << 10));
    cfg.quota.evict = true;
    let e = env(&["127.0.0.1"], cfg).await;
    for (name, seed) in [("keep", 10u8), ("spare", 11)] {
        let f = e.home.path().join(format!("{name}.gguf"));
        std::fs::write(&f, gguf(seed, 128 << 10)).unwrap();
        e.registry.import_gguf(&f, Some(name.parse().unwrap())).unwrap();
    }
    e.registry.set_pinned(&"keep".parse().unwrap(), true).unwrap();

    let done = finish(&e.jobs, &e.jobs.pull(&server.url("/new.gguf"), None).await.unwrap()).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let names: Vec<String> = e.registry.list().unwrap().iter().map(|m| m.reference()).collect();
    assert_eq!(names, ["keep:latest", "new:latest"], "the unpinned model made room");
    assert!(e.registry.blob_bytes().unwrap() <= 300 << 10);

    // Everything left is pinned: the next pull is refused and writes nothing.
    e.registry.set_pinned(&"new".parse().unwrap(), true).unwrap();
    let blobs_before = files_in(e.registry.blobs().dir()).len();
    let done = finish(&e.jobs, &e.jobs.pull(&server.url("/newer.gguf"), None).await.unwrap()).await;
    assert_eq!(done.state, JobState::Failed);
    assert!(done.error.as_deref().unwrap_or_default().contains("quota"), "{done:?}");
    assert_eq!(files_in(e.registry.blobs().dir()).len(), blobs_before);
    assert!(files_in(e.registry.partials_dir()).is_empty());
    assert_eq!(e.registry.list().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pull_resumes_refetching_at_most_one_chunk_per_connection() {
    let server = RangeServer::start().await;
    let data = gguf(6, 2 << 20);
    server.put("/big.gguf", Served { throttle: 1 << 20, ..Served::bytes(data.clone()) });
    let cfg = config(None, None);
    let (chunk, conns) = (cfg.tuning.chunk_size, cfg.tuning.connections as u64);
    let e = env(&["127.0.0.1"], cfg.clone()).await;
    let job = e.jobs.pull(&server.url("/big.gguf"), Some("big:1".parse().unwrap())).await.unwrap();
    let mut rx = e.jobs.jobs().watch(&job.id).unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|i| i.progress.done > data.len() as u64 / 3))
        .await
        .unwrap()
        .unwrap();
    e.shutdown.cancel();
    e.jobs.jobs().wait().await;
    assert!(e.registry.list().unwrap().is_empty());
    let home = e.home;
    drop((e.jobs, e.registry));
    let before = server.bytes_sent();
    assert!(before < data.len() as u64, "stopped midway");

    let e = env_in(home, &["127.0.0.1"], cfg).await;
    let live = e.jobs.jobs().watch(&job.id).expect("the job resumed on start");
    let mut rx = live;
    let done = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|i| i.state.is_terminal()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(PullDetail::of(&done).digest.unwrap(), format!("sha256:{}", sha(&data)));
    let total = server.bytes_sent();
    assert!(
        total <= data.len() as u64 + conns * chunk + 2,
        "sent {total} for {} bytes: more than one chunk per connection fetched again",
        data.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_removes_the_partial() {
    let server = RangeServer::start().await;
    let data = gguf(7, 1 << 20);
    server.put("/slow.gguf", Served { throttle: 256 << 10, ..Served::bytes(data) });
    let e = env(&["127.0.0.1"], config(None, None)).await;
    let job = e.jobs.pull(&server.url("/slow.gguf"), None).await.unwrap();
    let mut rx = e.jobs.jobs().watch(&job.id).unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|i| i.progress.done > 0)).await.unwrap().unwrap();
    let info = e.jobs.jobs().cancel(&job.id).await.unwrap();
    assert_eq!(info.state, JobState::Cancelled);
    assert!(files_in(e.registry.partials_dir()).is_empty());
    assert!(matches!(e.jobs.jobs().cancel(&job.id).await, Err(JobError::Finished { .. })));
    assert!(matches!(e.jobs.jobs().get("nope").await, Err(JobError::NotFound(_))));
    let _: ModelRef = "x".parse().unwrap();
}

/// A server whose connections drop every 20 KiB: each retry continues its chunk where the last
/// attempt stopped, so the pull succeeds with every byte fetched once (plus the probe's), and the
/// digest (hashed from the received frames) matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropping_connection_continues_its_chunk_and_fetches_each_byte_once() {
    let server = RangeServer::start().await;
    let data = gguf(8, 300 << 10);
    server.put("/flaky.gguf", Served { cut_after: Some(20 << 10), ..Served::bytes(data.clone()) });
    // One retry allowed, four attempts per 64 KiB chunk needed: an attempt that made progress
    // does not count against the retries.
    let e = env(&["127.0.0.1"], config(None, None)).await;
    let job = e.jobs.pull(&server.url("/flaky.gguf"), Some("flaky:1".parse().unwrap())).await.unwrap();
    let done = finish(&e.jobs, &job).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(PullDetail::of(&done).digest.unwrap(), format!("sha256:{}", sha(&data)));
    assert_eq!(server.bytes_sent(), data.len() as u64 + 1, "each byte once, plus the probe byte");
    let chunk = 64 << 10;
    assert!(server.requests() > data.len() as u64 / chunk + 1, "the connections did drop: {}", server.requests());
    e.registry.verify(None).unwrap().iter().for_each(|r| assert_eq!(r.status, ondevice_registry::VerifyStatus::Ok));
}

/// The checkpoints a download hands to its owner, kept as the owner persists them (JSON).
#[derive(Default)]
struct Checkpoints {
    last: Mutex<Option<String>>,
    count: Mutex<u64>,
}

impl Hooks for Checkpoints {
    fn reserve(&self, _bytes: u64) -> Result<(), String> {
        Ok(())
    }

    fn chunk_done(&self, _state: &ChunkState) {
        panic!("only `checkpoint` is called when it is implemented");
    }

    fn checkpoint(&self, state: &ChunkState) {
        *self.last.lock().unwrap() = Some(serde_json::to_string(state).unwrap());
        *self.count.lock().unwrap() += 1;
    }
}

impl Checkpoints {
    fn state(&self) -> ChunkState {
        serde_json::from_str(self.last.lock().unwrap().as_deref().expect("a checkpoint was recorded")).unwrap()
    }
}

/// Pseudo-random bytes (xorshift), so a misplaced range cannot hash right by chance.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn engine_tuning() -> Tuning {
    Tuning {
        connections: 4,
        chunk_size: 16 << 20,
        retries: 2,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_size: 1 << 30,
    }
}

/// Bytes the server sent in `second` that it had already sent in `first` (ranges it served
/// twice), from the server's per-request records.
fn sent_twice(first: &[range_server::Transfer], second: &[range_server::Transfer]) -> u64 {
    let covered: Vec<(u64, u64)> = first.iter().map(|t| (t.start, t.start + t.sent)).collect();
    second
        .iter()
        .map(|t| {
            let (s, e) = (t.start, t.start + t.sent);
            covered.iter().map(|&(a, b)| e.min(b).saturating_sub(s.max(a))).sum::<u64>()
        })
        .sum()
}

/// Runs `dl` from `state` until `progress` passes `at` bytes, then drops it mid-transfer.
async fn interrupt_at(dl: &Download<'_>, state: ChunkState, progress: &Progress, at: u64) {
    let passed = async {
        while progress.done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        r = dl.run(state) => panic!("the download ended before the interruption: {r:?}"),
        () = passed => {}
    }
}

/// A 96 MiB download over 4 connections of 16 MiB chunks, dropped at a third as a killed daemon
/// would be (no chunk finished, no last checkpoint): the resume continues each chunk from its
/// last checkpoint, so each connection fetches again at most about 2 MiB (its 1 MiB write batch
/// being filled, and what it wrote in the 250 ms since the last checkpoint at 3 MiB/s), and the
/// digest, hashed partly from what the first run left on disk, is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_download_resumes_inside_its_chunks() {
    let server = RangeServer::start().await;
    let data = noise(96 << 20, 0x9e37_79b9_7f4a_7c15);
    let digest = format!("sha256:{}", sha(&data));
    let throttled = Served { throttle: 3 << 20, ..Served::bytes(data.clone()) };
    server.put("/big.bin", throttled.clone());
    let fetcher = Fetcher::new(HostPolicy::new(["127.0.0.1"]), Vec::new()).unwrap();
    let source = Source {
        mirrors: vec![server.url("/big.bin").parse().unwrap()],
        size: Some(data.len() as u64),
        digest: Some(digest.parse().unwrap()),
    };
    let tuning = engine_tuning();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.partial");
    let hooks = Arc::new(Checkpoints::default());
    let progress = Arc::new(Progress::default());
    let dl = Download {
        fetcher: &fetcher,
        source: &source,
        tuning: &tuning,
        path: &path,
        hooks: hooks.clone(),
        progress: progress.clone(),
        cancel: CancellationToken::new(),
    };
    interrupt_at(&dl, ChunkState::default(), &progress, data.len() as u64 / 3).await;
    // The dropped connections close; writes already handed to the kernel land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = server.transfers();
    let state = hooks.state();
    assert!(state.done.iter().all(|&b| b == 0), "no chunk finished: {state:?}");
    assert_eq!(state.partial.len(), 4, "each connection recorded progress in its chunk: {state:?}");
    println!(
        "interrupted after {} bytes received, {} recorded in {} checkpoints: {:?}",
        progress.done.load(Ordering::Relaxed),
        state.done_bytes(),
        hooks.count.lock().unwrap(),
        state.partial
    );

    // Resumed unthrottled, from the last checkpoint.
    server.put("/big.bin", Served { throttle: 0, ..throttled });
    let progress = Arc::new(Progress::default());
    let dl = Download { progress: progress.clone(), ..dl };
    let done = tokio::time::timeout(Duration::from_secs(120), dl.run(state)).await.unwrap().unwrap();
    assert_eq!((done.digest.to_string(), done.size), (digest.clone(), data.len() as u64));
    assert_eq!(hash_file(&path).unwrap().0.to_string(), digest, "the file on disk is the content");

    let all = server.transfers();
    let twice = sent_twice(&first, &all[first.len()..]);
    let total = server.bytes_sent();
    println!(
        "sent {total} bytes for {} ({} more); fetched twice: {twice} bytes ({:.2} MiB per connection)",
        data.len(),
        total - data.len() as u64,
        twice as f64 / 4.0 / f64::from(1 << 20)
    );
    let bound = 4 * ((2 << 20) + (256 << 10));
    assert!(twice <= bound, "fetched {twice} bytes twice, over {bound} (about 2 MiB per connection)");
    assert!(total <= data.len() as u64 + bound + 2, "sent {total} for {} bytes", data.len());
}

/// A download without a known digest (each checkpoint `fdatasync`ed) stopped by its cancel token,
/// as a daemon shutting down stops it: it writes and records what it received before it returns,
/// so the resume fetches again little more than what was on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_download_records_what_it_received() {
    let server = RangeServer::start().await;
    let data = noise(64 << 20, 0x2545_f491_4f6c_dd1d);
    let throttled = Served { throttle: 4 << 20, ..Served::bytes(data.clone()) };
    server.put("/plain.bin", throttled.clone());
    let fetcher = Fetcher::new(HostPolicy::new(["127.0.0.1"]), Vec::new()).unwrap();
    let source = Source { mirrors: vec![server.url("/plain.bin").parse().unwrap()], size: None, digest: None };
    let tuning = engine_tuning();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.partial");
    let hooks = Arc::new(Checkpoints::default());
    let progress = Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    let dl = Download {
        fetcher: &fetcher,
        source: &source,
        tuning: &tuning,
        path: &path,
        hooks: hooks.clone(),
        progress: progress.clone(),
        cancel: cancel.clone(),
    };
    let stop = async {
        while progress.done.load(Ordering::Relaxed) < data.len() as u64 / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(dl.run(ChunkState::default()), stop);
    assert!(matches!(result, Err(ondevice_registry::download::DownloadError::Cancelled)), "{result:?}");
    let first = server.transfers();
    let state = hooks.state();
    let received = progress.done.load(Ordering::Relaxed);
    assert_eq!(state.done_bytes(), received, "everything received is recorded: {state:?}");

    server.put("/plain.bin", Served { throttle: 0, ..throttled });
    let dl = Download { progress: Arc::new(Progress::default()), cancel: CancellationToken::new(), ..dl };
    let done = tokio::time::timeout(Duration::from_secs(120), dl.run(state)).await.unwrap().unwrap();
    assert_eq!(done.digest.to_string(), format!("sha256:{}", sha(&data)));
    let all = server.transfers();
    let twice = sent_twice(&first, &all[first.len()..]);
    println!("cancelled after {received} bytes; fetched twice: {twice} bytes");
    let bound = 4 * (512 << 10);
    assert!(twice <= bound, "fetched {twice} bytes twice, over {bound}");
}
