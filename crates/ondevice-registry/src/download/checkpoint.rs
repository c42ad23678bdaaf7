//! Resume bookkeeping of a ranged download: which chunks are finished and how far each
//! unfinished one is on disk ([`ChunkState`], persisted by the owner as an opaque checkpoint),
//! and the [`Ledger`] the connections of one attempt share. Connections take chunks from it, their
//! writers advance a [`Mark`] per chunk, and the ledger records checkpoints: at once when a chunk
//! finishes, and while chunks progress at most every [`CHECKPOINT_INTERVAL`], after making the
//! newly written ranges durable. A recorded offset is never ahead of what reached the disk.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pipeline::{HashFeed, wait_written};
use super::{Hooks, blocking, lock};

/// Shortest time between two checkpoints recorded for progress inside chunks (a finished chunk
/// is recorded at once). With writes of [`super::pipeline::WRITE_BATCH`], an interrupted
/// connection fetches again what it received since its last write plus what it wrote in this
/// interval: about 2 MiB while a connection receives under 4 MiB/s, more on faster links.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// The resume bookkeeping of one download, persisted by the owner (JSON) and handed back to
/// [`super::Download::run`] to resume.
///
/// Everything it records is on disk: finished chunks and, for unfinished ones, the bytes from the
/// chunk's start in [`ChunkState::partial`] (see the durability notes in `download.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState {
    /// File size, once known.
    pub total: Option<u64>,
    /// Chunk size of `done`; 0 when the server does not answer ranges (no resume).
    #[serde(default)]
    pub chunk_size: u64,
    /// Bitmap of finished chunks (stored as lowercase hex, the form schema 5 migrated old rows to).
    #[serde(rename = "done_hex", with = "hex_bitmap", default)]
    pub done: Vec<u8>,
    /// Unfinished chunks with progress: chunk index → bytes from the chunk's start that are
    /// written and durable. A resumed download fetches such a chunk from there on. Absent in
    /// records written before it existed.
    #[serde(default)]
    pub partial: BTreeMap<u32, u64>,
}

impl ChunkState {
    pub(super) fn is_done(&self, i: usize) -> bool {
        self.done.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    pub(super) fn set_done(&mut self, i: usize) {
        if self.done.len() <= i / 8 {
            self.done.resize(i / 8 + 1, 0);
        }
        self.done[i / 8] |= 1 << (i % 8);
        if let Ok(k) = u32::try_from(i) {
            self.partial.remove(&k);
        }
    }

    pub(super) fn chunks(&self) -> usize {
        match (self.total, self.chunk_size) {
            (Some(t), c) if c > 0 => t.div_ceil(c) as usize,
            _ => 0,
        }
    }

    pub(super) fn range(&self, i: usize) -> (u64, u64) {
        let total = self.total.unwrap_or(0);
        let start = i as u64 * self.chunk_size;
        (start, (start + self.chunk_size).min(total))
    }

    /// Bytes of chunk `i` on disk from its start (all of it once finished).
    fn progress(&self, i: usize) -> u64 {
        let (start, end) = self.range(i);
        if self.is_done(i) {
            return end - start;
        }
        let recorded = u32::try_from(i).ok().and_then(|k| self.partial.get(&k)).copied().unwrap_or(0);
        recorded.min(end - start)
    }

    /// Bytes on disk: finished chunks and the recorded progress inside unfinished ones.
    pub fn done_bytes(&self) -> u64 {
        (0..self.chunks()).map(|i| self.progress(i)).sum()
    }

    /// End of the contiguous finished prefix.
    pub(super) fn prefix(&self) -> u64 {
        let n = self.chunks();
        let first_missing = (0..n).find(|&i| !self.is_done(i)).unwrap_or(n);
        if first_missing == n { self.total.unwrap_or(0) } else { first_missing as u64 * self.chunk_size }
    }

    /// The regions of unfinished chunks already on disk, in file order.
    pub(super) fn partial_regions(&self) -> Vec<(u64, u64)> {
        (0..self.chunks())
            .filter(|&i| !self.is_done(i))
            .map(|i| (self.range(i).0, self.range(i).0 + self.progress(i)))
            .filter(|(s, e)| e > s)
            .collect()
    }

    /// Drops progress records that do not fit the chunks (another size, a finished chunk) and
    /// marks chunks recorded as entirely written finished.
    pub(super) fn tidy(&mut self) {
        let n = self.chunks();
        let full: Vec<usize> = self
            .partial
            .iter()
            .map(|(&k, &v)| (k as usize, v))
            .filter(|&(i, v)| i < n && !self.is_done(i) && v >= self.range(i).1 - self.range(i).0)
            .map(|(i, _)| i)
            .collect();
        for i in full {
            self.set_done(i);
        }
        let done: Vec<bool> = (0..n).map(|i| self.is_done(i)).collect();
        self.partial.retain(|&k, v| (k as usize) < n && !done[k as usize] && *v > 0);
    }
}

/// How far one chunk's writes have reached: advanced by its writer after each completed write,
/// read by the ledger at a checkpoint.
pub(super) struct Mark {
    written: AtomicU64,
    wake: Arc<Notify>,
}

impl Mark {
    /// `at..end` of this chunk is written to the file. The mark moves only over contiguous
    /// writes: after a write that failed, or one still running because its writer was stopped,
    /// later writes do not count.
    pub(super) fn advance(&self, at: u64, end: u64) {
        let moved =
            self.written.fetch_update(Ordering::Release, Ordering::Acquire, |w| (at <= w && end > w).then_some(end));
        if moved.is_ok() {
            self.wake.notify_one();
        }
    }
}

/// A chunk handed to a connection.
pub(super) struct Claim {
    /// Its index.
    pub index: usize,
    /// Its first byte.
    pub start: u64,
    /// Where to fetch from (after what a previous attempt left on disk).
    pub from: u64,
    /// Its end (exclusive).
    pub end: u64,
    /// Its writer's mark.
    pub mark: Arc<Mark>,
}

struct Shared {
    chunks: ChunkState,
    pending: VecDeque<usize>,
    /// Chunks being fetched, with their marks.
    active: BTreeMap<usize, Arc<Mark>>,
    /// Bumped on every change of `chunks`.
    version: u64,
}

/// The bookkeeping shared by the connections of one ranged attempt.
pub(super) struct Ledger {
    shared: Mutex<Shared>,
    /// Version last handed to the hooks; held while handing over, so the owner never gets an
    /// older state after a newer one.
    recorded: Mutex<u64>,
    hooks: Arc<dyn Hooks>,
    file: Arc<File>,
    /// No digest is known: data is `fdatasync`ed before it is recorded (nothing else would catch
    /// a recorded range a power loss undid).
    sync_data: bool,
    wake: Arc<Notify>,
}

impl Ledger {
    /// A ledger over `state` (tidied); the unfinished chunks are pending, in file order.
    pub(super) fn new(mut state: ChunkState, hooks: Arc<dyn Hooks>, file: Arc<File>, sync_data: bool) -> Ledger {
        state.tidy();
        let pending = (0..state.chunks()).filter(|&i| !state.is_done(i)).collect();
        Ledger {
            shared: Mutex::new(Shared { chunks: state, pending, active: BTreeMap::new(), version: 0 }),
            recorded: Mutex::new(0),
            hooks,
            file,
            sync_data,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Chunks still to fetch.
    pub(super) fn pending(&self) -> usize {
        lock(&self.shared).pending.len()
    }

    /// The current bookkeeping.
    pub(super) fn state(&self) -> ChunkState {
        lock(&self.shared).chunks.clone()
    }

    /// The next chunk to fetch, if any.
    pub(super) fn claim(&self) -> Option<Claim> {
        let mut s = lock(&self.shared);
        let index = s.pending.pop_front()?;
        let (start, end) = s.chunks.range(index);
        let from = start + s.chunks.progress(index);
        let mark = Arc::new(Mark { written: AtomicU64::new(from), wake: self.wake.clone() });
        s.active.insert(index, mark.clone());
        Some(Claim { index, start, from, end, mark })
    }

    /// Chunk `index` is entirely written: records it (after syncing it when no digest is known)
    /// and tells the hasher how far the file is final. Blocking.
    pub(super) fn finish(&self, index: usize, feed: &HashFeed) -> std::io::Result<()> {
        if self.sync_data {
            self.file.sync_data()?;
        }
        {
            let mut s = lock(&self.shared);
            s.chunks.set_done(index);
            s.active.remove(&index);
            s.version += 1;
            feed.finished(s.chunks.prefix());
        }
        self.record();
        Ok(())
    }

    /// Makes what the active chunks' writers wrote since the last checkpoint durable, then
    /// records it. Blocking.
    pub(super) fn checkpoint(&self) -> std::io::Result<()> {
        // (index, recorded end, written end): the writes are read before the sync.
        let advanced: Vec<(usize, u64, u64)> = {
            let s = lock(&self.shared);
            s.active
                .iter()
                .map(|(&i, m)| (i, s.chunks.range(i).0 + s.chunks.progress(i), m.written.load(Ordering::Acquire)))
                .filter(|&(_, recorded, written)| written > recorded)
                .collect()
        };
        if advanced.is_empty() {
            return Ok(());
        }
        if self.sync_data {
            self.file.sync_data()?;
        } else {
            for &(_, from, to) in &advanced {
                wait_written(&self.file, from, to)?;
            }
        }
        {
            let mut s = lock(&self.shared);
            for &(i, _, written) in &advanced {
                let (start, end) = s.chunks.range(i);
                let (Ok(k), false) = (u32::try_from(i), s.chunks.is_done(i)) else { continue };
                let entry = s.chunks.partial.entry(k).or_insert(0);
                *entry = (*entry).max(written.min(end) - start);
            }
            s.version += 1;
        }
        self.record();
        Ok(())
    }

    /// Hands the current state to the hooks unless they have it already.
    fn record(&self) {
        let mut recorded = lock(&self.recorded);
        let (state, version) = {
            let s = lock(&self.shared);
            (s.chunks.clone(), s.version)
        };
        if version > *recorded {
            self.hooks.checkpoint(&state);
            *recorded = version;
        }
    }

    /// Records checkpoints as writers advance, at most every [`CHECKPOINT_INTERVAL`], until
    /// `stop` is cancelled.
    pub(super) async fn record_progress(self: Arc<Self>, stop: CancellationToken) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
            }
            if let Some(at) = last {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(at + CHECKPOINT_INTERVAL) => {}
                }
            }
            last = Some(tokio::time::Instant::now());
            let ledger = self.clone();
            if let Err(e) = blocking(move || ledger.checkpoint()).await {
                tracing::warn!(error = %e, "cannot make download progress durable; it is recorded at the next chunk");
            }
        }
    }
}

/// `ChunkState::done` as a lowercase hex string.
mod hex_bitmap {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex bitmap"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_bookkeeping() {
        let mut s = ChunkState { total: Some(25), chunk_size: 10, ..ChunkState::default() };
        assert_eq!(s.chunks(), 3);
        assert_eq!((s.prefix(), s.done_bytes()), (0, 0));
        s.set_done(1);
        assert_eq!((s.prefix(), s.done_bytes()), (0, 10));
        s.set_done(0);
        assert_eq!(s.prefix(), 20);
        s.set_done(2);
        assert_eq!((s.prefix(), s.done_bytes()), (25, 25));
        assert_eq!(s.range(2), (20, 25));
        let empty = ChunkState { total: Some(0), chunk_size: 10, ..ChunkState::default() };
        assert_eq!((empty.chunks(), empty.prefix()), (0, 0));
    }

    #[test]
    fn partial_progress_counts_and_tidies() {
        let mut s = ChunkState { total: Some(25), chunk_size: 10, ..ChunkState::default() };
        s.set_done(0);
        // Chunk 1 is 4 bytes in, chunk 2 (5 bytes long) recorded whole, plus records that do
        // not fit: a finished chunk, a chunk past the end, no progress.
        s.partial = BTreeMap::from([(0, 3), (1, 4), (2, 5), (7, 1)]);
        assert_eq!(s.done_bytes(), 10 + 4 + 5);
        s.tidy();
        assert_eq!(s.partial, BTreeMap::from([(1, 4)]));
        assert!(s.is_done(2));
        assert_eq!((s.done_bytes(), s.prefix()), (19, 10));
        assert_eq!(s.partial_regions(), [(10, 14)]);
        s.set_done(1);
        assert!(s.partial.is_empty());
        assert_eq!(s.done_bytes(), 25);
    }

    #[test]
    fn chunk_state_round_trips_through_json_and_reads_old_records() {
        let mut s = ChunkState { total: Some(100 << 20), chunk_size: 16 << 20, ..ChunkState::default() };
        s.set_done(0);
        s.set_done(3);
        s.partial = BTreeMap::from([(1, 2 << 20), (2, 6 << 20)]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ChunkState>(&json).unwrap(), s, "{json}");
        assert_eq!(s.done_bytes(), (16 << 20) * 2 + (8 << 20));

        // A record from before `partial` existed.
        let old: ChunkState = serde_json::from_str(r#"{"total":1000,"chunk_size":100,"done_hex":"05"}"#).unwrap();
        assert_eq!(old, ChunkState { total: Some(1000), chunk_size: 100, done: vec![5], partial: BTreeMap::new() });
        assert_eq!(old.done_bytes(), 200);
    }
}
