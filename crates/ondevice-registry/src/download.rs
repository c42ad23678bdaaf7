//! The download engine: one file from a list of mirrors into a partial file, verified by SHA-256
//! while it downloads.
//!
//! Servers that answer ranges get several connections, each fetching fixed-size chunks at their
//! offsets. The resume bookkeeping ([`ChunkState`]: finished chunks, and how far each unfinished
//! one is written) is handed to the caller to persist ([`Hooks::checkpoint`]) when a chunk
//! finishes and, at most every 250 ms, as connections write inside their chunks
//! (`download/checkpoint.rs`). A restarted download skips finished chunks and continues the others
//! from their recorded offset (`Range: bytes=offset-end`): a connection fetches again about what it
//! received since its last checkpoint, about 2 MiB (more on links faster than 4 MiB/s per
//! connection); a download stopped by its cancel token (daemon shutdown) first writes and records
//! what it received, and loses almost nothing. A failed attempt at a chunk is retried from where it
//! stopped. Received frames are written without copying and hashed from memory in file order by a
//! hashing thread (`download/pipeline.rs`), which reads back from the file what an earlier attempt
//! wrote, so the digest is known as soon as the last chunk lands. Transient failures are retried
//! with exponential backoff and jitter; a mirror that keeps failing, serves another size, or whose
//! bytes hash to the wrong digest is dropped for the next one.
//!
//! A server that does not answer ranges (or does not say the size in `Content-Range`) is read in
//! one stream with no resume: an interrupted download of it starts over.
//!
//! Durability: a recorded offset is never ahead of what was written, so the bookkeeping survives
//! the daemon being killed (the page cache keeps the written data). A finished chunk's pages are
//! handed to the kernel for writeback at once (`sync_file_range` on Linux), which only moves disk
//! writes earlier; the guarantee is the fsync in [`crate::blobs::BlobStore::adopt`] before the blob
//! is renamed into place. Across a power loss: with a known digest, progress inside a chunk is
//! written to the disk before it is recorded (`sync_file_range` with waits on Linux; data, not the
//! metadata mapping it), and data the loss undid anyway makes the final hash fail (the mirror is
//! then dropped and the file fetched again from the next); without a digest nothing would catch
//! that, so data is `fdatasync`ed before any record (a finished chunk or a checkpoint).

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::CONTENT_RANGE;
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::checkpoint::ChunkState;
use self::checkpoint::Ledger;
use self::pipeline::{Hasher, Sink, start_writeback};
use crate::fetch::{FetchError, Fetcher, describe};
use crate::reference::Digest;
use crate::safety::redact_url;

mod checkpoint;
mod pipeline;

/// Bytes [`hash_file`] reads at a time.
const HASH_BUF: usize = 4 << 20;

/// A download failure.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Every mirror failed; each one's last error is listed.
    #[error("every source failed: {}", errors.join("; "))]
    AllMirrorsFailed {
        /// One message per failure, naming the mirror.
        errors: Vec<String>,
    },
    /// The file is larger than allowed.
    #[error("{url} is {size} bytes, over the limit of {limit} bytes ([registry] max_download_size)")]
    TooLarge {
        /// The source (redacted).
        url: String,
        /// Its size, or the bytes received so far.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Space could not be reserved (quota or disk); nothing was written.
    #[error("{0}")]
    Reserve(String),
    /// The partial file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The partial file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Cancelled (by the user or because the daemon is stopping).
    #[error("cancelled")]
    Cancelled,
}

/// What to download.
#[derive(Debug, Clone)]
pub struct Source {
    /// Mirrors, tried in order.
    pub mirrors: Vec<Url>,
    /// Expected size, when known (catalog).
    pub size: Option<u64>,
    /// Expected digest, when known (catalog).
    pub digest: Option<Digest>,
}

/// Download tuning (from `[registry]`).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Connections per file when the server answers ranges.
    pub connections: usize,
    /// Chunk size of ranged downloads (and of the resume bookkeeping).
    pub chunk_size: u64,
    /// Attempts per chunk on one mirror before it is dropped.
    pub retries: u32,
    /// First retry delay; doubles each time, with jitter.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Largest file accepted.
    pub max_size: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            connections: 4,
            chunk_size: 16 << 20,
            retries: 4,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            max_size: 256 << 30,
        }
    }
}

/// What the download reports to its owner (the job): blocking calls, run off the async runtime.
pub trait Hooks: Send + Sync {
    /// The size is known (or grew, for servers that do not say); reserve space or refuse.
    /// Called before the partial file is created or grown.
    fn reserve(&self, bytes: u64) -> Result<(), String>;
    /// The bookkeeping changed: persist it. Only called through the default
    /// [`Hooks::checkpoint`], for owners written before it; an owner that implements
    /// `checkpoint` may leave this empty.
    fn chunk_done(&self, state: &ChunkState);
    /// Persist `state` (the whole of it, to hand back to [`Download::run`]): called when a chunk
    /// finishes, and at most every 250 ms while unfinished chunks progress. What it records is on
    /// disk (see the durability notes of this module), never ahead. Calls are serialised and never
    /// go back to an older state. By default, [`Hooks::chunk_done`].
    fn checkpoint(&self, state: &ChunkState) {
        self.chunk_done(state);
    }
}

/// Live counters for progress reporting.
#[derive(Debug, Default)]
pub struct Progress {
    /// Size, 0 until known.
    pub total: AtomicU64,
    /// Bytes written so far (including unfinished chunks).
    pub done: AtomicU64,
}

/// The result of a finished download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// The content's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

enum RunError {
    /// The mirror failed; another may succeed.
    Mirror(String),
    /// Stop.
    Fatal(DownloadError),
}

/// Why one attempt of a transfer stopped.
enum Failure {
    /// The network or the server, and whether trying again may help.
    Fetch(FetchError, bool),
    /// Here: the partial file cannot be written, or the download was cancelled.
    Local(DownloadError),
}

impl Failure {
    fn fetch(e: FetchError) -> Failure {
        let t = e.is_transient();
        Failure::Fetch(e, t)
    }
}

/// A fetch error with whether it is worth retrying.
fn transient(e: FetchError) -> (FetchError, bool) {
    let t = e.is_transient();
    (e, t)
}

/// Retry delays of one operation on one mirror: exponential, with jitter.
struct Backoff {
    delay: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(tuning: &Tuning) -> Backoff {
        Backoff { delay: tuning.backoff_initial, attempt: 0 }
    }

    /// After a failed attempt: waits before the next one, or gives the mirror up.
    async fn wait(&mut self, dl: &Download<'_>, e: FetchError, transient: bool) -> Result<(), RunError> {
        self.attempt += 1;
        if !transient || self.attempt > dl.tuning.retries {
            return Err(RunError::Mirror(e.to_string()));
        }
        let pause = self.delay + self.delay.mul_f64(0.5 * jitter_fraction());
        tracing::debug!(error = %e, attempt = self.attempt, "retrying after {pause:?}");
        tokio::select! {
            () = dl.cancel.cancelled() => return Err(RunError::Fatal(DownloadError::Cancelled)),
            () = tokio::time::sleep(pause) => {}
        }
        self.delay = (self.delay * 2).min(dl.tuning.backoff_max);
        Ok(())
    }
}

struct Probe {
    total: Option<u64>,
    ranged: bool,
    /// The whole body, when the server ignored the range.
    body: Option<reqwest::Response>,
}

/// One download into `path`. `state` is the persisted bookkeeping (empty for a new download); it
/// is kept when the source's size matches and reset otherwise.
pub struct Download<'a> {
    /// The client.
    pub fetcher: &'a Fetcher,
    /// What to fetch.
    pub source: &'a Source,
    /// How.
    pub tuning: &'a Tuning,
    /// The partial file.
    pub path: &'a Path,
    /// Owner callbacks.
    pub hooks: Arc<dyn Hooks>,
    /// Counters.
    pub progress: Arc<Progress>,
    /// Stops the download.
    pub cancel: CancellationToken,
}

impl Download<'_> {
    /// Runs to completion: the verified digest and size, or an error. On a digest mismatch with
    /// no mirror left, the partial file is truncated.
    pub async fn run(&self, mut state: ChunkState) -> Result<Downloaded, DownloadError> {
        let mirrors = &self.source.mirrors;
        let mut bad = vec![false; mirrors.len()];
        let mut errors = Vec::new();
        let mut resumed = state.done_bytes() > 0;
        while let Some(m) = bad.iter().position(|b| !b) {
            let url = &mirrors[m];
            let shown = redact_url(url);
            let probe = match self.retrying(|| self.probe(url)).await {
                Ok(p) => p,
                Err(RunError::Mirror(e)) => {
                    tracing::warn!(mirror = %shown, error = %e, "source failed, trying the next");
                    errors.push(e);
                    bad[m] = true;
                    continue;
                }
                Err(RunError::Fatal(e)) => return Err(e),
            };
            if let (Some(want), got) = (self.source.size, probe.total) {
                if got.is_some_and(|g| g != want) {
                    errors.push(format!("{shown}: serves {} bytes, expected {want}", got.unwrap_or(0)));
                    bad[m] = true;
                    continue;
                }
            }
            if let Some(t) = probe.total.or(self.source.size) {
                if t > self.tuning.max_size {
                    return Err(DownloadError::TooLarge { url: shown, size: t, limit: self.tuning.max_size });
                }
            }
            let chunk_size = if probe.ranged { self.tuning.chunk_size.max(1) } else { 0 };
            let compatible = probe.ranged && state.total == probe.total && state.chunk_size > 0;
            if !compatible {
                if resumed {
                    tracing::info!(mirror = %shown, "cannot resume from the recorded chunks; starting over");
                }
                state = ChunkState { total: probe.total, chunk_size, ..ChunkState::default() };
                resumed = false;
            }
            let reserve = probe.total.unwrap_or(0);
            let hooks = self.hooks.clone();
            blocking(move || hooks.reserve(reserve)).await.map_err(DownloadError::Reserve)?;
            let file = self.open(&state, !compatible).await?;
            self.progress.total.store(probe.total.unwrap_or(0), Ordering::Relaxed);
            self.progress.done.store(state.done_bytes(), Ordering::Relaxed);
            let result = if probe.ranged {
                self.ranged(url, file, &mut state).await
            } else {
                self.streamed(url, file, probe.body).await.map(|(d, size)| {
                    state.total = Some(size);
                    d
                })
            };
            match result {
                Ok(digest) => {
                    let size = state.total.unwrap_or(0);
                    match self.source.digest {
                        Some(want) if want != digest => {
                            // Data of a resumed download may have come from an earlier mirror;
                            // either way this attempt's source is not trusted again.
                            errors.push(format!("{shown}: content hashes to {digest}, expected {want}"));
                            tracing::warn!(mirror = %shown, %digest, expected = %want, "digest mismatch");
                            bad[m] = true;
                            state = ChunkState::default();
                            resumed = false;
                            let path = self.path.to_path_buf();
                            blocking(move || File::options().write(true).open(&path).and_then(|f| f.set_len(0)))
                                .await
                                .map_err(|source| DownloadError::Io { path: self.path.to_path_buf(), source })?;
                        }
                        _ => return Ok(Downloaded { digest, size }),
                    }
                }
                Err(RunError::Mirror(e)) => {
                    tracing::warn!(mirror = %shown, error = %e, "source failed, trying the next");
                    errors.push(e);
                    bad[m] = true;
                }
                Err(RunError::Fatal(e)) => return Err(e),
            }
        }
        Err(DownloadError::AllMirrorsFailed { errors })
    }

    async fn open(&self, state: &ChunkState, reset: bool) -> Result<Arc<File>, DownloadError> {
        let path = self.path.to_path_buf();
        let total = state.total;
        let ranged = state.chunk_size > 0;
        let file = blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = File::options().read(true).write(true).create(true).truncate(false).open(&path)?;
            if reset {
                f.set_len(0)?;
            }
            if let (true, Some(t)) = (ranged, total) {
                f.set_len(t)?;
            }
            Ok::<_, std::io::Error>(f)
        })
        .await
        .map_err(|source| DownloadError::Io { path: self.path.to_path_buf(), source })?;
        Ok(Arc::new(file))
    }

    /// Runs `f` until it succeeds, fails for good, or the retries are spent (then the mirror is
    /// given up).
    async fn retrying<T, F, Fut>(&self, mut f: F) -> Result<T, RunError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, (FetchError, bool)>>,
    {
        let mut backoff = Backoff::new(self.tuning);
        loop {
            if self.cancel.is_cancelled() {
                return Err(RunError::Fatal(DownloadError::Cancelled));
            }
            let attempt = tokio::select! {
                () = self.cancel.cancelled() => return Err(RunError::Fatal(DownloadError::Cancelled)),
                r = f() => r,
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err((e, transient)) => backoff.wait(self, e, transient).await?,
            }
        }
    }

    async fn probe(&self, url: &Url) -> Result<Probe, (FetchError, bool)> {
        let resp = self.fetcher.get(url, Some((0, 0))).await.map_err(transient)?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let total = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.trim().parse::<u64>().ok());
            if total.is_some() {
                return Ok(Probe { total, ranged: true, body: None });
            }
        }
        let total = resp.content_length();
        Ok(Probe { total, ranged: false, body: Some(resp) })
    }

    /// Several connections over the missing chunks, each continuing a chunk from what an earlier
    /// attempt left on disk. Progress is recorded when a chunk finishes and, in between, by
    /// checkpoints of what the connections wrote (`download/checkpoint.rs`), so an interruption
    /// loses about what each connection received since the last checkpoint. A connection that
    /// fails stops the others; a stopped or failed attempt first writes what it received and
    /// records it, for the next mirror or a resume.
    async fn ranged(&self, url: &Url, file: Arc<File>, state: &mut ChunkState) -> Result<Digest, RunError> {
        let total = state.total.unwrap_or(0);
        let verified = self.source.digest.is_some();
        state.tidy();
        let hasher = Hasher::start(file.clone(), self.path.to_path_buf(), state.prefix(), state.partial_regions());
        let ledger = Arc::new(Ledger::new(state.clone(), self.hooks.clone(), file.clone(), !verified));
        let conns = self.tuning.connections.clamp(1, ledger.pending().max(1));
        let writes = TaskTracker::new();
        let stop = CancellationToken::new();
        let recording = CancellationToken::new();
        let io = |source| RunError::Fatal(DownloadError::Io { path: self.path.to_path_buf(), source });
        let connection = || async {
            let feed = hasher.feed();
            while let Some(chunk) = ledger.claim() {
                let path = self.path.to_path_buf();
                let mut sink =
                    Sink::new(writes.clone(), file.clone(), path, feed.clone(), chunk.from).with_mark(chunk.mark);
                let fetched = tokio::select! {
                    r = self.fetch_chunk(url, &mut sink, chunk.end) => Some(r),
                    () = stop.cancelled() => None,
                };
                // Stopped or not, what was received is written (and recorded by the checkpoint
                // after a failure).
                let flushed = sink.flush().await;
                match fetched {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(())) => flushed.map_err(RunError::Fatal)?,
                }
                let (l, f, i) = (ledger.clone(), feed.clone(), chunk.index);
                blocking(move || l.finish(i, &f)).await.map_err(io)?;
                start_writeback(file.clone(), chunk.start, chunk.end).await;
            }
            Ok(())
        };
        let connections = async {
            let results = futures_util::future::join_all((0..conns).map(|_| async {
                let r = connection().await;
                if r.is_err() {
                    stop.cancel();
                }
                r
            }))
            .await;
            recording.cancel();
            results
        };
        let (results, ()) = tokio::join!(connections, ledger.clone().record_progress(recording.clone()));
        // A stopped connection may leave a write running: let the last writes land before the
        // file is recorded, truncated or written by the next mirror.
        writes.close();
        writes.wait().await;
        let failed = results.into_iter().find_map(Result::err);
        if failed.is_some() {
            let l = ledger.clone();
            if let Err(e) = blocking(move || l.checkpoint()).await {
                tracing::warn!(error = %e, "cannot make download progress durable; resuming from the last checkpoint");
            }
        }
        *state = ledger.state();
        if let Some(e) = failed {
            return Err(e);
        }
        let (digest, hashed) = hasher.finish().await.map_err(RunError::Fatal)?;
        if hashed != total {
            return Err(RunError::Mirror(format!("{}: hashed {hashed} of {total} bytes", redact_url(url))));
        }
        Ok(digest)
    }

    /// Fetches the chunk `sink.pos()..end` into the file. A failed attempt is retried from where
    /// it stopped (the bytes received are kept), so no byte is fetched or written twice.
    async fn fetch_chunk(&self, url: &Url, sink: &mut Sink, end: u64) -> Result<(), RunError> {
        let mut backoff = Backoff::new(self.tuning);
        loop {
            if self.cancel.is_cancelled() {
                return Err(RunError::Fatal(DownloadError::Cancelled));
            }
            let start = sink.pos();
            let attempt = async {
                let resp = self.fetcher.get(url, Some((start, end - 1))).await.map_err(Failure::fetch)?;
                if resp.status() != StatusCode::PARTIAL_CONTENT {
                    let reason = format!("server answered {} to a range request", resp.status());
                    return Err(Failure::Fetch(FetchError::Network { url: redact_url(url), reason }, false));
                }
                // The bytes go to the offset asked for: a server answering another range would
                // corrupt the file.
                let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                if range.and_then(parse_content_range) != Some((start, end - 1)) {
                    let reason = format!("asked for bytes {start}-{}, server answered range {range:?}", end - 1);
                    return Err(Failure::Fetch(FetchError::Network { url: redact_url(url), reason }, false));
                }
                self.copy_body(resp, sink, Some(end - start)).await.map(drop)
            };
            let result = tokio::select! {
                () = self.cancel.cancelled() => return Err(RunError::Fatal(DownloadError::Cancelled)),
                r = attempt => r,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(_) if self.cancel.is_cancelled() => return Err(RunError::Fatal(DownloadError::Cancelled)),
                Err(Failure::Local(e)) => return Err(RunError::Fatal(e)),
                Err(Failure::Fetch(e, transient)) => {
                    if sink.pos() > start {
                        // That attempt made progress: a flaky connection, not a dead mirror.
                        backoff = Backoff::new(self.tuning);
                    }
                    backoff.wait(self, e, transient).await?;
                }
            }
        }
    }

    /// Copies a body into `sink`, returning the bytes copied; `expect` bounds it.
    async fn copy_body(
        &self,
        mut resp: reqwest::Response,
        sink: &mut Sink,
        expect: Option<u64>,
    ) -> Result<u64, Failure> {
        let url = redact_url(resp.url());
        let net = |reason: String, transient: bool| {
            Failure::Fetch(FetchError::Network { url: url.clone(), reason }, transient)
        };
        let mut copied = 0u64;
        loop {
            let next = tokio::select! {
                () = self.cancel.cancelled() => return Err(Failure::Local(DownloadError::Cancelled)),
                next = resp.chunk() => next.map_err(|e| net(describe(e), true))?,
            };
            let Some(frame) = next else { break };
            let len = frame.len() as u64;
            if expect.is_some_and(|e| copied + len > e) {
                return Err(net("server sent too many bytes".into(), false));
            }
            if sink.pos() + len > self.tuning.max_size {
                return Err(net("over the size limit".into(), false));
            }
            sink.push(frame).await.map_err(Failure::Local)?;
            copied += len;
            self.progress.done.fetch_add(len, Ordering::Relaxed);
        }
        if let Some(e) = expect {
            if copied != e {
                return Err(net(format!("connection closed after {copied} of {e} bytes"), true));
            }
        }
        Ok(copied)
    }

    /// One connection for a server that ignores ranges: no resume, hashed as it streams.
    async fn streamed(
        &self,
        url: &Url,
        file: Arc<File>,
        body: Option<reqwest::Response>,
    ) -> Result<(Digest, u64), RunError> {
        let hasher = Hasher::start(file.clone(), self.path.to_path_buf(), 0, Vec::new());
        let resp = match body {
            Some(r) => r,
            None => self.retrying(|| async { self.fetcher.get(url, None).await.map_err(transient) }).await?,
        };
        let expect = resp.content_length();
        let writes = TaskTracker::new();
        let mut sink = Sink::new(writes.clone(), file, self.path.to_path_buf(), hasher.feed(), 0);
        let copied = self.copy_body(resp, &mut sink, expect).await;
        let flushed = if copied.is_ok() { sink.flush().await } else { Ok(()) };
        drop(sink);
        writes.close();
        writes.wait().await;
        let n = match copied {
            Ok(n) => n,
            Err(_) if self.cancel.is_cancelled() => return Err(RunError::Fatal(DownloadError::Cancelled)),
            Err(Failure::Local(e)) => return Err(RunError::Fatal(e)),
            Err(Failure::Fetch(e, _)) => return Err(RunError::Mirror(e.to_string())),
        };
        flushed.map_err(RunError::Fatal)?;
        let (digest, hashed) = hasher.finish().await.map_err(RunError::Fatal)?;
        if hashed != n {
            return Err(RunError::Mirror(format!("{}: hashed {hashed} of {n} bytes", redact_url(url))));
        }
        Ok((digest, n))
    }
}

/// `bytes A-B/TOTAL` (or `/*`) → `(A, B)`.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let rest = v.get(..5).filter(|unit| unit.eq_ignore_ascii_case("bytes")).and(v.get(5..))?;
    let (range, _total) = rest.trim().split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn jitter_fraction() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// Runs blocking work (file and database calls) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task did not finish: {e}"),
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_read(file, buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// SHA-256 of a whole file (used to check a partial file when nothing else is known).
pub fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        n += k as u64;
    }
    Ok((Digest::from_bytes(hasher.finalize().into()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99)));
        assert_eq!(parse_content_range(" Bytes 5-9/*"), Some((5, 9)));
        for bad in ["bytes */1000", "items 0-9/10", "bytes 0-/10", "bytes=0-9", ""] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
