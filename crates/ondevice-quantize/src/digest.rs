//! SHA-256 of a source's files beside llama.cpp, without taking its CPU, and of a finished output
//! without copying it.
//!
//! [`Background`] hashes the inputs on a thread of the lowest priority (Linux: `SCHED_IDLE`, so it
//! runs in the gaps llama.cpp's threads leave, between tensors and while it writes) and publishes its
//! state after every chunk. [`Background::finish`] stops it and carries on from the last state at
//! normal priority, so a busy machine delays the digest by the remaining part only, never by a
//! starved thread. Files whose digests the caller already verified (a registry blob) are not read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::error::QuantizeError;
use crate::imatrix::hex;
use crate::pipeline::InputDigest;

/// Bytes hashed between two published states.
const CHUNK: usize = 4 << 20;

/// One input file.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    name: String,
    size: u64,
    /// A digest the caller verified.
    known: Option<String>,
}

/// How far the hashing is: files `..file` are done (their digests in `done`), `file` is hashed up
/// to `offset` into `state`.
#[derive(Clone)]
struct Snapshot {
    file: usize,
    offset: u64,
    state: Sha256,
    done: Vec<String>,
}

impl Snapshot {
    fn start() -> Snapshot {
        Snapshot { file: 0, offset: 0, state: Sha256::new(), done: Vec::new() }
    }
}

/// Called with every input's digest when the background thread gets through them.
pub(crate) type OnDone = Box<dyn FnOnce(&[InputDigest]) + Send>;

/// Inputs being hashed in the background (see the module documentation).
pub(crate) struct Background {
    items: Arc<Vec<Item>>,
    stop: Arc<AtomicBool>,
    states: mpsc::Receiver<Snapshot>,
}

/// An input's name as receipts give it (relative to `base`, `/`-separated; the file name when
/// `f` is `base` itself or lies outside it) and its size.
pub(crate) fn input_name_and_size(base: &Path, f: &Path) -> Result<(String, u64), QuantizeError> {
    let name = f
        .strip_prefix(base)
        .ok()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| f.file_name().map(Path::new))
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_default();
    let size = std::fs::metadata(f).map_err(|source| QuantizeError::Read { path: f.to_path_buf(), source })?.len();
    Ok((name, size))
}

impl Background {
    /// Starts hashing `files` (named relative to `base`, as receipts name them); `known` digests
    /// are taken as they are for a file of the same name and size. `on_done` is called on the
    /// background thread with every digest (sorted by name) if it gets through all of them
    /// before [`finish`](Self::finish) stops it.
    pub(crate) fn start(
        base: &Path,
        files: &[PathBuf],
        known: &[InputDigest],
        on_done: Option<OnDone>,
    ) -> Result<Background, QuantizeError> {
        let mut items = Vec::with_capacity(files.len());
        for f in files {
            let (name, size) = crate::digest::input_name_and_size(base, f)?;
            let known = known.iter().find(|k| k.name == name && k.size == size).map(|k| k.sha256.clone());
            items.push(Item { path: f.clone(), name, size, known });
        }
        let items = Arc::new(items);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, states) = mpsc::channel();
        let all_known = items.iter().all(|i| i.known.is_some());
        if !all_known {
            let (items, stop) = (items.clone(), stop.clone());
            // Detached: once stopped it ends at its next chunk; nobody waits for it.
            let spawned = std::thread::Builder::new().name("quantize-hash".into()).spawn(move || {
                lower_priority();
                let mut snap = Snapshot::start();
                let done = advance(&items, &mut snap, &|| stop.load(Ordering::Relaxed), &|s| {
                    let _ = tx.send(s.clone());
                });
                if let (Ok(()), Some(on_done)) = (done, on_done) {
                    if snap.file == items.len() {
                        on_done(&digests(&items, snap.done));
                    }
                }
            });
            if spawned.is_err() {
                tracing::debug!("no thread to hash the inputs in the background: they are hashed at the end");
            }
        }
        Ok(Background { items, stop, states })
    }

    /// The digests, when the caller knew every one of them (nothing is being read).
    pub(crate) fn known(&self) -> Option<Vec<InputDigest>> {
        let mut out = self
            .items
            .iter()
            .map(|i| Some(InputDigest { name: i.name.clone(), sha256: i.known.clone()?, size: i.size }))
            .collect::<Option<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Some(out)
    }

    /// Stops the background thread and completes the digests from its last state, here.
    pub(crate) fn finish(self) -> Result<Vec<InputDigest>, QuantizeError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut snap = self.states.try_iter().last().unwrap_or_else(Snapshot::start);
        advance(&self.items, &mut snap, &|| false, &|_| {})?;
        Ok(digests(&self.items, snap.done))
    }
}

/// Each item's digest from `done` (in item order), sorted by name.
fn digests(items: &[Item], done: Vec<String>) -> Vec<InputDigest> {
    let mut out: Vec<InputDigest> =
        items.iter().zip(done).map(|(i, sha256)| InputDigest { name: i.name.clone(), sha256, size: i.size }).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Hashes from `snap` on, publishing the state after every chunk and finished file, until done
/// or `stopped`.
fn advance(
    items: &[Item],
    snap: &mut Snapshot,
    stopped: &dyn Fn() -> bool,
    publish: &dyn Fn(&Snapshot),
) -> Result<(), QuantizeError> {
    let mut buf = Vec::new();
    while let Some(item) = items.get(snap.file) {
        if let Some(k) = &item.known {
            snap.done.push(k.clone());
        } else {
            let err = |source| QuantizeError::Read { path: item.path.clone(), source };
            let mut f = File::open(&item.path).map_err(err)?;
            if snap.offset > 0 {
                f.seek(SeekFrom::Start(snap.offset)).map_err(err)?;
            }
            buf.resize(CHUNK, 0);
            loop {
                if stopped() {
                    return Ok(());
                }
                let n = read_full(&mut f, &mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                snap.state.update(&buf[..n]);
                snap.offset += n as u64;
                publish(snap);
            }
            let state = std::mem::replace(&mut snap.state, Sha256::new());
            snap.done.push(hex(&state.finalize()));
        }
        snap.file += 1;
        snap.offset = 0;
        publish(snap);
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The calling thread yields to every other: on Linux it runs only when a CPU would otherwise
/// be idle (`SCHED_IDLE`, for this thread only; nice 19 where that is refused). Its work is never
/// lost to starvation: the caller finishes it at normal priority.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread (pid 0 and its own thread id).
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    #[test]
    fn a_stopped_hash_is_completed_from_its_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..CHUNK * 2 + 123).map(|i| (i * 7 % 251) as u8).collect();
        let b = b"second file".to_vec();
        std::fs::write(dir.path().join("a.bin"), &a).unwrap();
        std::fs::write(dir.path().join("b.bin"), &b).unwrap();
        let files = [dir.path().join("b.bin"), dir.path().join("a.bin")];
        let items: Vec<Item> = files
            .iter()
            .map(|p| Item {
                path: p.clone(),
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                size: std::fs::metadata(p).unwrap().len(),
                known: None,
            })
            .collect();
        // Stop after the first chunk of the second file, as a starved thread would.
        let last = std::cell::RefCell::new(None);
        let count = std::cell::Cell::new(0);
        advance(&items, &mut Snapshot::start(), &|| count.get() >= 3, &|s| {
            count.set(count.get() + 1);
            *last.borrow_mut() = Some(s.clone());
        })
        .unwrap();
        let mut snap = last.into_inner().unwrap();
        assert_eq!((snap.file, snap.offset), (1, CHUNK as u64));
        advance(&items, &mut snap, &|| false, &|_| {}).unwrap();
        assert_eq!(snap.done, vec![sha(&b), sha(&a)]);
        assert_eq!(crate::sha256_file(&dir.path().join("a.bin")).unwrap(), sha(&a));
    }

    #[test]
    fn background_digests_match_and_known_ones_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.gguf"), b"model bytes").unwrap();
        std::fs::write(dir.path().join("y.json"), b"{}").unwrap();
        let files = vec![dir.path().join("y.json"), dir.path().join("x.gguf")];
        let known = vec![InputDigest { name: "y.json".into(), sha256: "f".repeat(64), size: 2 }];
        let digests = Background::start(dir.path(), &files, &known, None).unwrap().finish().unwrap();
        assert_eq!(digests[0], InputDigest { name: "x.gguf".into(), sha256: sha(b"model bytes"), size: 11 });
        assert_eq!(digests[1], InputDigest { name: "y.json".into(), sha256: "f".repeat(64), size: 2 });
        // A known digest of another size does not count: the file is hashed.
        let stale = vec![InputDigest { name: "y.json".into(), sha256: "f".repeat(64), size: 3 }];
        let digests = Background::start(dir.path(), &files, &stale, None).unwrap().finish().unwrap();
        assert_eq!(digests[1].sha256, sha(b"{}"));
        assert_eq!(crate::sha256_file(&dir.path().join("y.json")).unwrap(), sha(b"{}"));
    }

    #[test]
    fn a_background_hash_that_gets_through_reports_every_digest() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..CHUNK + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("b.bin"), &big).unwrap();
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        let files = [dir.path().join("b.bin"), dir.path().join("a.json")];
        let (tx, rx) = mpsc::channel();
        let background = Background::start(
            dir.path(),
            &files,
            &[],
            Some(Box::new(move |d: &[InputDigest]| {
                let _ = tx.send(d.to_vec());
            })),
        )
        .unwrap();
        let reported = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the thread got through");
        assert_eq!(reported, background.finish().unwrap());
        assert_eq!(reported[0], InputDigest { name: "a.json".into(), sha256: sha(b"{}"), size: 2 });
        assert_eq!(reported[1].sha256, sha(&big));
    }
}
