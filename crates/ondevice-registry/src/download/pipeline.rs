//! The write side of a download: received frames go to the partial file without being copied
//! (positioned writes, one batch in flight per connection while the next is received), and then to
//! the hashing thread, which hashes the file in order from those same frames. Frames that arrive
//! ahead of the hashed position (other connections' chunks) wait in memory up to [`HASH_AHEAD`];
//! past that they are dropped and read back from the file once their chunk is finished. What an
//! earlier attempt left on disk (finished chunks, the written start of unfinished ones) is read
//! back as well.
//!
//! Invariant the hasher relies on: while one [`Hasher`] lives, every byte of the file is written
//! at most once (a retried chunk continues where the failed attempt stopped, a resumed one where
//! its recorded progress ends), and a region is reported as finished ([`HashFeed::finished`]) only
//! after all its frames were handed over. So the frames it hashes are exactly what the file holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio_util::task::TaskTracker;

use super::DownloadError;
use super::checkpoint::Mark;
use crate::reference::Digest;

/// Bytes of received frames handed to one positioned write. It also bounds what an interrupted
/// connection received but had not written (what a resume fetches again beyond the last
/// checkpoint): one batch being filled, one being written.
pub(super) const WRITE_BATCH: usize = 1 << 20;
/// Bytes the hasher keeps in memory ahead of its position.
pub(super) const HASH_AHEAD: usize = 64 << 20;
/// Bytes the hasher reads back from the file at a time.
const READ_BACK: usize = 4 << 20;

enum HashMsg {
    /// Frames now in the file at this offset.
    Frames(u64, Vec<Bytes>),
    /// Everything below this offset is in the file for good (finished chunks).
    Finished(u64),
}

/// A handle to feed the hasher; cheap to clone (one per connection).
#[derive(Clone)]
pub(super) struct HashFeed {
    tx: mpsc::Sender<HashMsg>,
}

impl HashFeed {
    /// Everything below `prefix` is written and final.
    pub(super) fn finished(&self, prefix: u64) {
        let _ = self.tx.send(HashMsg::Finished(prefix));
    }
}

/// The hashing thread of one download attempt.
pub(super) struct Hasher {
    feed: HashFeed,
    stop: Arc<AtomicBool>,
    handle: Option<tokio::task::JoinHandle<Result<(Digest, u64), DownloadError>>>,
}

impl Hasher {
    /// Starts hashing `file` from offset 0; bytes below `finished` are already in the file, and
    /// so are the `on_disk` regions (sorted; the written start of unfinished chunks): no frames
    /// will come for them.
    pub(super) fn start(file: Arc<File>, path: PathBuf, finished: u64, on_disk: Vec<(u64, u64)>) -> Hasher {
        Hasher::with_ahead(file, path, finished, on_disk, HASH_AHEAD)
    }

    /// [`Hasher::start`] keeping at most `ahead` bytes of frames in memory.
    fn with_ahead(file: Arc<File>, path: PathBuf, finished: u64, on_disk: Vec<(u64, u64)>, ahead: usize) -> Hasher {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::task::spawn_blocking(move || {
            hash_in_order(&file, &rx, finished, &on_disk, ahead, &flag)
                .map_err(|source| DownloadError::Io { path, source })
        });
        Hasher { feed: HashFeed { tx }, stop, handle: Some(handle) }
    }

    /// A feed for a connection.
    pub(super) fn feed(&self) -> HashFeed {
        self.feed.clone()
    }

    /// Waits for the digest once every feed is dropped; returns it with the bytes hashed.
    pub(super) async fn finish(mut self) -> Result<(Digest, u64), DownloadError> {
        let handle = self.handle.take().expect("finish is called once");
        drop(self);
        handle
            .await
            .map_err(|e| DownloadError::Io { path: PathBuf::new(), source: std::io::Error::other(e.to_string()) })?
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        // An abandoned attempt (failed mirror, cancel): stop reading the file back.
        if self.handle.is_some() {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The hashing loop: frames at the hashed position are hashed from memory; finished regions with
/// no frame in memory, and regions an earlier attempt wrote, are read back from the file.
fn hash_in_order(
    file: &File,
    rx: &mpsc::Receiver<HashMsg>,
    mut finished: u64,
    on_disk: &[(u64, u64)],
    ahead_max: usize,
    stop: &AtomicBool,
) -> std::io::Result<(Digest, u64)> {
    let mut sha = Sha256::new();
    let mut hashed = 0u64;
    let mut ahead: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
    let mut ahead_bytes = 0usize;
    let mut buf = Vec::new();
    let mut open = true;
    loop {
        // Hash everything possible now.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("download abandoned"));
            }
            if let Some(entry) = ahead.first_entry().filter(|e| *e.key() <= hashed) {
                let (at, frames) = entry.remove_entry();
                ahead_bytes -= frames_len(&frames);
                hashed += hash_frames(&mut sha, &frames, hashed - at);
                continue;
            }
            let on_file = if hashed < finished {
                Some(finished)
            } else {
                on_disk.iter().find(|&&(s, e)| s <= hashed && hashed < e).map(|&(_, e)| e)
            };
            if let Some(limit) = on_file {
                let next_in_memory = ahead.keys().next().copied().unwrap_or(u64::MAX);
                let end = limit.min(next_in_memory).min(hashed + READ_BACK as u64);
                let n = (end - hashed) as usize;
                buf.resize(n, 0);
                super::read_exact_at(file, &mut buf, hashed)?;
                sha.update(&buf);
                hashed = end;
                continue;
            }
            break;
        }
        if !open {
            return Ok((Digest::from_bytes(sha.finalize().into()), hashed));
        }
        match rx.recv() {
            Ok(HashMsg::Frames(at, frames)) => {
                let len = frames_len(&frames);
                if at <= hashed {
                    hashed += hash_frames(&mut sha, &frames, hashed - at);
                } else if ahead_bytes + len <= ahead_max {
                    ahead_bytes += len;
                    ahead.insert(at, frames);
                }
                // Else dropped: read back from the file once its chunk is finished.
            }
            Ok(HashMsg::Finished(prefix)) => finished = finished.max(prefix),
            Err(mpsc::RecvError) => open = false,
        }
    }
}

fn frames_len(frames: &[Bytes]) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// Hashes `frames` except their first `skip` bytes (already hashed); returns the bytes hashed.
fn hash_frames(sha: &mut Sha256, frames: &[Bytes], mut skip: u64) -> u64 {
    let mut n = 0;
    for f in frames {
        let k = (skip as usize).min(f.len());
        skip -= k as u64;
        sha.update(&f[k..]);
        n += (f.len() - k) as u64;
    }
    n
}

/// One connection's writer: frames are batched (not copied) and written at their offsets by a
/// blocking task while the next batch is received; each written batch is handed to the hasher.
/// The writes are tracked by `writes`: a dropped `Sink` (a failed or cancelled attempt) may leave
/// one running, and the caller waits for them all before the file is used again. With a [`Mark`],
/// each completed write advances it (the resume checkpoints).
pub(super) struct Sink {
    writes: TaskTracker,
    file: Arc<File>,
    path: PathBuf,
    feed: HashFeed,
    batch: Vec<Bytes>,
    batch_len: usize,
    batch_at: u64,
    /// Offset after the last byte received.
    pos: u64,
    in_flight: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    mark: Option<Arc<Mark>>,
}

impl Sink {
    /// A writer starting at `offset`; its writes are tracked by `writes`.
    pub(super) fn new(writes: TaskTracker, file: Arc<File>, path: PathBuf, feed: HashFeed, offset: u64) -> Sink {
        Sink {
            writes,
            file,
            path,
            feed,
            batch: Vec::new(),
            batch_len: 0,
            batch_at: offset,
            pos: offset,
            in_flight: None,
            mark: None,
        }
    }

    /// Advances `mark` after each completed write.
    pub(super) fn with_mark(mut self, mark: Arc<Mark>) -> Sink {
        self.mark = Some(mark);
        self
    }

    /// Offset after the last byte received (written or about to be).
    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    /// Takes a received frame.
    pub(super) async fn push(&mut self, frame: Bytes) -> Result<(), DownloadError> {
        let len = frame.len();
        if len == 0 {
            return Ok(());
        }
        self.batch.push(frame);
        self.batch_len += len;
        self.pos += len as u64;
        if self.batch_len >= WRITE_BATCH {
            self.submit().await?;
        }
        Ok(())
    }

    /// Writes everything received and waits for it.
    pub(super) async fn flush(&mut self) -> Result<(), DownloadError> {
        self.submit().await?;
        self.wait().await
    }

    async fn wait(&mut self) -> Result<(), DownloadError> {
        let Some(h) = self.in_flight.take() else { return Ok(()) };
        let result = h.await.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        result.map_err(|source| DownloadError::Io { path: self.path.clone(), source })
    }

    /// Starts writing the current batch once the previous write is done.
    async fn submit(&mut self) -> Result<(), DownloadError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.wait().await?;
        let frames = std::mem::take(&mut self.batch);
        let at = self.batch_at;
        self.batch_at = self.pos;
        self.batch_len = 0;
        let (file, feed, mark) = (self.file.clone(), self.feed.clone(), self.mark.clone());
        self.in_flight = Some(self.writes.spawn_blocking(move || {
            let mut offset = at;
            for f in &frames {
                super::write_all_at(&file, f, offset)?;
                offset += f.len() as u64;
            }
            if let Some(m) = mark {
                m.advance(at, offset);
            }
            let _ = feed.tx.send(HashMsg::Frames(at, frames));
            Ok(())
        }));
        Ok(())
    }
}

/// Asks the kernel to start writing `start..end` of `file` to disk now (Linux), so the fsync
/// before the blob is adopted has little left to do. Best effort: durability still comes from
/// that fsync.
pub(super) async fn start_writeback(file: Arc<File>, start: u64, end: u64) {
    #[cfg(target_os = "linux")]
    super::blocking(move || {
        use std::os::fd::AsRawFd as _;
        let (Ok(off), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else { return };
        // SAFETY: the descriptor is owned by `file`, alive for the call; the call only reads
        // its arguments.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed");
        }
    })
    .await;
    #[cfg(not(target_os = "linux"))]
    let _ = (file, start, end);
}

/// Waits until `start..end` of `file`, written by this process, is on the disk, before it is
/// recorded as progress (a download with a known digest; Linux: `sync_file_range` with waits,
/// elsewhere nothing). This writes the data, not the metadata that maps it: a power loss may
/// still undo it, and the final hash then fails. Blocking.
pub(super) fn wait_written(file: &File, start: u64, end: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let (Ok(off), Ok(len)) = (i64::try_from(start), i64::try_from(end.saturating_sub(start))) else {
            return Ok(());
        };
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: the descriptor is owned by `file`, alive for the call; the call only reads its
        // arguments.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, flags) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, start, end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `data` handed over in a scrambled order (as several connections would), with
    /// finished prefixes announced as chunks complete: the digest is the file's, whether the
    /// frames are kept in memory or dropped and read back, and whether a resumed chunk's start
    /// is already on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_frames_hash_to_the_file_digest() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let want = Digest::from_bytes(Sha256::digest(&data).into());
        let chunk = 64 << 10;
        for (ahead, written) in [(usize::MAX, 0), (50_000, 0), (0, 0), (usize::MAX, 10_000), (0, 10_000)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, &data).unwrap();
            let file = Arc::new(File::open(&path).unwrap());
            let chunks: Vec<(usize, usize)> =
                (chunk..data.len()).step_by(chunk).map(|s| (s, (s + chunk).min(data.len()))).collect();
            // Chunk 0 is already in the file (a resumed download), and so are the first
            // `written` bytes of `chunks[1]`; the rest arrives in frames.
            let on_disk = if written > 0 { vec![(chunks[1].0 as u64, (chunks[1].0 + written) as u64)] } else { vec![] };
            let hasher = Hasher::with_ahead(file, path, chunk as u64, on_disk, ahead);
            let feed = hasher.feed();
            let mut done = vec![false; chunks.len()];
            for &i in &[2usize, 0, 3, 1] {
                let (s, e) = chunks[i];
                let s = if i == 1 { s + written } else { s };
                // Uneven frames, two batches per chunk.
                let mid = s + (e - s) / 3;
                for (a, b) in [(s, mid), (mid, e)] {
                    let frames = vec![Bytes::copy_from_slice(&data[a..a + 7]), Bytes::copy_from_slice(&data[a + 7..b])];
                    feed.tx.send(HashMsg::Frames(a as u64, frames)).unwrap();
                }
                done[i] = true;
                let prefix = done.iter().position(|d| !d).map_or(data.len(), |k| chunks[k].0);
                feed.finished(prefix as u64);
            }
            drop(feed);
            let (digest, hashed) = hasher.finish().await.unwrap();
            assert_eq!((digest, hashed), (want, data.len() as u64), "ahead {ahead}, written {written}");
        }
    }
}
