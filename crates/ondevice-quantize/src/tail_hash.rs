//! SHA-256 of a file while another writer is still writing it, for llama.cpp's output.
//!
//! llama.cpp writes a placeholder of the header's length, then the tensors in order, and the
//! header last. Given the header it will write (predicted before it starts: see
//! `crate::llama`), a [`Tail`] hashes that header and then every byte below the file's current
//! length as the file grows, on a thread of the lowest priority, so little is left to hash once
//! llama.cpp returns. [`finish`] compares the header the file really starts with against the
//! prediction: only when they are equal does it carry on from the tail's state; otherwise it
//! reports a miss and the caller hashes the whole file. A wrong prediction costs time, never a
//! wrong digest.
//!
//! A header may hold a string the caller fills in only after llama.cpp wrote the file (a
//! [`LateValue`]: the source's digest, while the source is still being hashed). The tail then
//! waits until the value is known, hashes the header with it in place of the placeholder, and
//! catches up with the writer from there.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::imatrix::hex;

/// Bytes read at a time: small enough to stay in the cache between the read and the hash.
const CHUNK: usize = 256 << 10;
/// How long the tail waits when it has caught up with the writer.
const WAIT: Duration = Duration::from_millis(4);

/// A string of the output's metadata that is not known when llama.cpp starts. llama.cpp writes
/// `placeholder` (as long as the value will be); the caller overwrites it with the value before
/// committing the file. The hash made while llama.cpp writes starts once `value` is set.
#[derive(Debug, Clone)]
pub struct LateValue {
    /// The metadata key.
    pub key: String,
    /// What llama.cpp writes as the key's value.
    pub placeholder: String,
    /// The value, once known (the same length as `placeholder`).
    pub value: Arc<OnceLock<String>>,
}

impl LateValue {
    /// `header` with the key's placeholder replaced by `value`, or `None` when the key is not
    /// there exactly once with the placeholder as its string value, or `value` has another length.
    fn fill_in(&self, header: &[u8], value: &str) -> Option<Vec<u8>> {
        if value.len() != self.placeholder.len() {
            return None;
        }
        let section = kv_section(header, Some(&self.key)).ok()??;
        let [at] = section.strings.as_slice() else { return None };
        if header.get(at.clone()) != Some(self.placeholder.as_bytes()) {
            return None;
        }
        let mut filled = header.to_vec();
        filled[at.clone()].copy_from_slice(value.as_bytes());
        Some(filled)
    }
}

/// A GGUF's key-value section, walked from the start of a file (see [`kv_section`]).
pub(crate) struct KvSection {
    /// Its length (magic, counts, every key and value).
    pub(crate) len: u64,
    /// Where the bytes of each string value of the key asked for are.
    pub(crate) strings: Vec<std::ops::Range<usize>>,
}

/// Walks the key-value section at the start of `bytes` (a GGUF file, or its first bytes) without
/// keeping or allocating anything but the positions of the string values of `key`. `None` when
/// `bytes` ends before the section does; an error when it is not a GGUF key-value section.
pub(crate) fn kv_section(bytes: &[u8], key: Option<&str>) -> Result<Option<KvSection>, String> {
    /// Why a walk stopped: more bytes are needed, or the data is wrong.
    enum Stop {
        Short,
        Bad(String),
    }
    struct Walk<'a> {
        bytes: &'a [u8],
        pos: usize,
    }
    impl Walk<'_> {
        fn skip(&mut self, n: u64) -> Result<(), Stop> {
            let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).ok_or(Stop::Short)?;
            if end > self.bytes.len() {
                return Err(Stop::Short);
            }
            self.pos = end;
            Ok(())
        }
        fn le<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
            let start = self.pos;
            self.skip(N as u64)?;
            let mut b = [0u8; N];
            b.copy_from_slice(&self.bytes[start..self.pos]);
            Ok(b)
        }
        fn u32(&mut self) -> Result<u32, Stop> {
            self.le::<4>().map(u32::from_le_bytes)
        }
        fn u64(&mut self) -> Result<u64, Stop> {
            self.le::<8>().map(u64::from_le_bytes)
        }
        fn value(&mut self, ty: u32, depth: u32) -> Result<(), Stop> {
            match ty {
                0 | 1 | 7 => self.skip(1),
                2 | 3 => self.skip(2),
                4..=6 => self.skip(4),
                10..=12 => self.skip(8),
                8 => {
                    let n = self.u64()?;
                    self.skip(n)
                }
                9 if depth < 4 => {
                    let inner = self.u32()?;
                    let n = self.u64()?;
                    let width = match inner {
                        0 | 1 | 7 => 1,
                        2 | 3 => 2,
                        4..=6 => 4,
                        10..=12 => 8,
                        _ => return (0..n).try_for_each(|_| self.value(inner, depth + 1)),
                    };
                    self.skip(n.checked_mul(width).ok_or(Stop::Short)?)
                }
                _ => Err(Stop::Bad(format!("unknown or too deeply nested value type {ty} at byte {}", self.pos))),
            }
        }
        fn section(&mut self, key: Option<&str>) -> Result<KvSection, Stop> {
            if self.le::<4>()? != *b"GGUF" {
                return Err(Stop::Bad("not a GGUF file".into()));
            }
            let _version = self.u32()?;
            let _tensors = self.u64()?;
            let kvs = self.u64()?;
            let mut strings = Vec::new();
            for _ in 0..kvs {
                let key_len = self.u64()?;
                let key_at = self.pos;
                self.skip(key_len)?;
                let this_key = &self.bytes[key_at..self.pos];
                let ty = self.u32()?;
                if ty == 8 && key.is_some_and(|k| k.as_bytes() == this_key) {
                    let n = self.u64()?;
                    let at = self.pos;
                    self.skip(n)?;
                    strings.push(at..self.pos);
                } else {
                    self.value(ty, 0)?;
                }
            }
            Ok(KvSection { len: self.pos as u64, strings })
        }
    }
    match (Walk { bytes, pos: 0 }).section(key) {
        Ok(s) => Ok(Some(s)),
        Err(Stop::Short) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

/// How far a [`Tail`] got: the predicted header and the bytes after it up to `offset`.
#[derive(Clone)]
pub(crate) struct TailState {
    header: Arc<Vec<u8>>,
    state: Sha256,
    offset: u64,
}

impl std::fmt::Debug for TailState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailState").field("header_len", &self.header.len()).field("offset", &self.offset).finish()
    }
}

/// A thread hashing a file as it is written (see the module documentation). It publishes its
/// state after every chunk; [`stop`](Self::stop) takes the last one without waiting for the
/// thread (which runs only when a CPU is idle, so it may not run again for a while on a busy
/// machine; it ends at its next turn).
pub(crate) struct Tail {
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
    /// `None` once what was published no longer holds (the file shrank).
    states: mpsc::Receiver<Option<TailState>>,
}

impl Tail {
    /// Starts hashing `path` once `header` says what its first bytes will be (`None`: no
    /// prediction, nothing is hashed) and, with a `late` value, once that value is known. The file
    /// need not exist yet; if it does, it must be the writer's (the caller removes any stale file
    /// of that name first).
    pub(crate) fn start(
        path: PathBuf,
        header: mpsc::Receiver<Option<Vec<u8>>>,
        late: Option<LateValue>,
    ) -> std::io::Result<Tail> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (tx, states) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("quantize-tail".into())
            .spawn(move || follow(&path, &header, late.as_ref(), &stopped, &tx))?
            .thread()
            .clone();
        Ok(Tail { stop, thread, states })
    }

    /// Stops the thread (the writer is done) and returns how far it got.
    pub(crate) fn stop(self) -> Option<TailState> {
        self.signal_stop();
        self.states.try_iter().last().flatten()
    }

    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Dropped without [`Tail::stop`] (a panic on the way), the thread still ends at its next turn.
impl Drop for Tail {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

fn follow(
    path: &Path,
    header: &mpsc::Receiver<Option<Vec<u8>>>,
    late: Option<&LateValue>,
    stop: &AtomicBool,
    publish: &mpsc::Sender<Option<TailState>>,
) {
    let stopped = || stop.load(Ordering::Acquire);
    let mut header = loop {
        match header.recv_timeout(WAIT) {
            Ok(Some(h)) => break h,
            Err(mpsc::RecvTimeoutError::Timeout) if !stopped() => {}
            _ => return,
        }
    };
    if let Some(late) = late {
        let value = loop {
            if let Some(v) = late.value.get() {
                break v;
            }
            if stopped() {
                return;
            }
            std::thread::park_timeout(WAIT);
        };
        match late.fill_in(&header, value) {
            Some(filled) => header = filled,
            None => return,
        }
    }
    let mut tail = TailState { state: Sha256::new(), offset: header.len() as u64, header: Arc::new(header) };
    tail.state.update(tail.header.as_slice());
    let _ = publish.send(Some(tail.clone()));
    crate::digest::lower_priority();
    let mut file = None;
    let mut buf = vec![0u8; CHUNK];
    while !stopped() {
        if file.is_none() {
            file = File::open(path).ok();
        }
        let len = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        if len < tail.offset && tail.offset > tail.header.len() as u64 {
            // Shorter than what was hashed past the header (llama.cpp's placeholder grows to the
            // header's length first): not the file being written. Nothing holds.
            let _ = publish.send(None);
            return;
        }
        if len <= tail.offset {
            std::thread::park_timeout(WAIT);
            continue;
        }
        let want = usize::try_from(len - tail.offset).unwrap_or(CHUNK).min(CHUNK);
        // Bytes below the length the kernel reports are written; llama.cpp rewrites only the
        // header, which the tail never reads.
        match file.as_ref().map(|f| read_at(f, &mut buf[..want], tail.offset)) {
            Some(Ok(n)) if n > 0 => {
                tail.state.update(&buf[..n]);
                tail.offset += n as u64;
                if publish.send(Some(tail.clone())).is_err() {
                    return;
                }
            }
            _ => std::thread::park_timeout(WAIT),
        }
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, offset)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, offset)
}

/// The SHA-256 (64 hex digits) of the finished file at `path` from a tail's state, or `None`
/// when the file does not start with the predicted header (the caller hashes the whole file).
pub(crate) fn finish(path: &Path, tail: TailState) -> std::io::Result<Option<String>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < tail.offset {
        return Ok(None);
    }
    let mut actual = vec![0u8; tail.header.len()];
    if read_exact_at(&file, &mut actual, 0)? < actual.len() || actual != *tail.header {
        return Ok(None);
    }
    let TailState { mut state, mut offset, .. } = tail;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_at(&file, &mut buf, offset)?;
        if n == 0 {
            break;
        }
        state.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(Some(hex(&state.finalize())))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_at(f, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    /// Writes as llama.cpp does: a placeholder, the body in pieces, the header last.
    fn write_like_llama(path: &Path, header: &[u8], body: &[u8], pause: Duration) {
        let mut f = File::create(path).unwrap();
        // The placeholder grows in pieces, as through llama.cpp's buffered stream.
        for piece in vec![0u8; header.len()].chunks(1024) {
            f.write_all(piece).unwrap();
            std::thread::sleep(pause);
        }
        for piece in body.chunks(100_000) {
            f.write_all(piece).unwrap();
            std::thread::sleep(pause);
        }
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(header).unwrap();
    }

    fn sha(parts: &[&[u8]]) -> String {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        hex(&h.finalize())
    }

    #[test]
    fn a_file_hashed_while_written_has_the_digest_of_its_final_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let header: Vec<u8> = (0..4099u32).map(|i| (i * 31 % 253) as u8).collect();
        let body: Vec<u8> = (0..1_234_567u32).map(|i| (i * 7 % 251) as u8).collect();
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(path.clone(), rx, None).unwrap();
        tx.send(Some(header.clone())).unwrap();
        // The tail takes the header at normal priority before it lowers its own.
        std::thread::sleep(Duration::from_millis(50));
        write_like_llama(&path, &header, &body, Duration::from_millis(2));
        // However far the tail got (a thread of the lowest priority may not have run at all on
        // a busy machine), the digest finished from its state is the file's.
        let state = tail.stop().expect("a state");
        assert_eq!(finish(&path, state).unwrap(), Some(sha(&[&header, &body])));
    }

    #[test]
    fn a_wrong_prediction_is_a_miss_not_a_wrong_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let header = vec![7u8; 512];
        let mut predicted = header.clone();
        predicted[100] = 8;
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(path.clone(), rx, None).unwrap();
        tx.send(Some(predicted)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        write_like_llama(&path, &header, &[1u8; 300_000], Duration::ZERO);
        let state = tail.stop().expect("a state");
        assert_eq!(finish(&path, state).unwrap(), None);
        // A shorter file than the tail saw is a miss too.
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(path.clone(), rx, None).unwrap();
        tx.send(Some(header.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let state = tail.stop().expect("a state");
        std::fs::write(&path, &header[..100]).unwrap();
        assert_eq!(finish(&path, state).unwrap(), None);
    }

    #[test]
    fn without_a_prediction_the_tail_gives_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(dir.path().join("never"), rx, None).unwrap();
        tx.send(None).unwrap();
        assert!(tail.stop().is_none());
        // Stopped before any prediction arrives.
        let (_tx, rx) = mpsc::channel();
        assert!(Tail::start(dir.path().join("never"), rx, None).unwrap().stop().is_none());
    }

    /// The start of a GGUF whose key-value section holds a u8 array, then `key` = each of
    /// `values` (strings), then a u32; tensor infos would follow.
    fn header_with_values(key: &str, values: &[&str]) -> Vec<u8> {
        let mut h = b"GGUF".to_vec();
        h.extend(3u32.to_le_bytes());
        h.extend(0u64.to_le_bytes());
        h.extend((values.len() as u64 + 2).to_le_bytes());
        let put_key = |h: &mut Vec<u8>, k: &str, ty: u32| {
            h.extend((k.len() as u64).to_le_bytes());
            h.extend(k.as_bytes());
            h.extend(ty.to_le_bytes());
        };
        put_key(&mut h, "filler", 9);
        h.extend(0u32.to_le_bytes());
        h.extend(300u64.to_le_bytes());
        h.extend(std::iter::repeat_n(9u8, 300));
        for v in values {
            put_key(&mut h, key, 8);
            h.extend((v.len() as u64).to_le_bytes());
            h.extend(v.as_bytes());
        }
        put_key(&mut h, "after", 4);
        h.extend(5u32.to_le_bytes());
        h
    }

    fn header_with(key: &str, value: &str) -> Vec<u8> {
        header_with_values(key, &[value])
    }

    #[test]
    fn a_value_filled_in_late_is_hashed_in_place_of_its_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let (key, placeholder, digest) = ("ondevice.quantize.source_sha256", "0".repeat(64), "ab".repeat(32));
        let written = header_with(key, &placeholder);
        let body: Vec<u8> = (0..777_777u32).map(|i| (i * 13 % 241) as u8).collect();
        let late = LateValue { key: key.into(), placeholder: placeholder.clone(), value: Arc::default() };
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(path.clone(), rx, Some(late.clone())).unwrap();
        tx.send(Some(written.clone())).unwrap();
        // The value becomes known after the prediction; the tail then takes it (at normal
        // priority, before it lowers its own) and follows the writer.
        std::thread::sleep(Duration::from_millis(20));
        late.value.set(digest.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        write_like_llama(&path, &written, &body, Duration::from_millis(1));
        // The caller fills the value in, as the pipeline does before the commit.
        let filled = header_with(key, &digest);
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&filled).unwrap();
        drop(f);
        let state = tail.stop().expect("a state: the value was known before the writer finished");
        assert_eq!(finish(&path, state).unwrap(), Some(sha(&[&filled, &body])));

        // Not filled in the file: the header differs from the one hashed, a miss.
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(path.clone(), rx, Some(late.clone())).unwrap();
        tx.send(Some(written.clone())).unwrap();
        std::fs::remove_file(&path).unwrap();
        write_like_llama(&path, &written, &body, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(50));
        let state = tail.stop().expect("a state");
        assert_eq!(finish(&path, state).unwrap(), None);
    }

    #[test]
    fn a_late_value_never_known_or_without_its_placeholder_gives_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = "k.digest";
        let late = LateValue { key: key.into(), placeholder: "0000".into(), value: Arc::default() };
        // Never known: the tail never starts.
        let (tx, rx) = mpsc::channel();
        let tail = Tail::start(dir.path().join("a"), rx, Some(late.clone())).unwrap();
        tx.send(Some(header_with(key, "0000"))).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(tail.stop().is_none());
        // Known, but the predicted header lacks the placeholder, or has it twice, or the value's
        // length differs.
        late.value.set("abcd".into()).unwrap();
        // The placeholder as another key's value, or inside an array, does not count.
        for header in
            [header_with(key, "1111"), header_with_values(key, &["0000", "0000"]), header_with("other", "0000")]
        {
            let (tx, rx) = mpsc::channel();
            let tail = Tail::start(dir.path().join("b"), rx, Some(late.clone())).unwrap();
            tx.send(Some(header)).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            assert!(tail.stop().is_none());
        }
        let long = LateValue {
            key: key.into(),
            placeholder: "0000".into(),
            value: Arc::new(OnceLock::from("abcde".to_owned())),
        };
        assert_eq!(long.fill_in(&header_with(key, "0000"), "abcde"), None);
        assert_eq!(late.fill_in(&header_with(key, "0000"), "abcd"), Some(header_with(key, "abcd")));
    }
}
