//! Remembered SHA-256 digests of local source files, so quantizing the same file again (one F16
//! GGUF to several types, the usual way) does not read it once more to hash it.
//!
//! An entry holds what `stat` said of the file when it was hashed: device, inode, size,
//! modification and change times (nanoseconds). It is used only while all five are unchanged.
//! Writing a file changes its change time (`ctime`), and no unprivileged process can set that
//! time back, so an unchanged `stat` means unchanged bytes, with one exception git's index also
//! guards against: a write within the same clock tick as the `stat`. So an entry counts only if
//! its `stat` was taken at least [`RACY`] after the file's last change; a file changed just
//! before it was hashed is hashed again next time (and remembered then).
//!
//! The cache is one JSON file (under the daemon's home: `cache/source-digests.json`) written
//! atomically, at most [`MAX_ENTRIES`] entries, the oldest dropped first. A damaged or missing
//! file is an empty cache. Only Unix keeps one (elsewhere lookups always miss).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::pipeline::InputDigest;

/// How long after a file's last change its `stat` must be taken for the entry to count.
pub const RACY: Duration = Duration::from_millis(50);
/// Entries kept.
pub const MAX_ENTRIES: usize = 512;
/// Files of a source directory looked up at most (a model directory has a few dozen).
const MAX_FILES: usize = 4096;
/// The file format's version.
const VERSION: u32 = 1;
/// A cache file longer than this is ignored (512 entries take about 150 KB).
const MAX_FILE_LEN: u64 = 4 << 20;

/// Whether a `stat` taken at `checked_ns` is too close to the file's last change to be trusted
/// later (see the module documentation).
fn racy(stat: &Stat, checked_ns: i64) -> bool {
    checked_ns < stat.mtime_ns.max(stat.ctime_ns).saturating_add(RACY.as_nanos() as i64)
}

/// Whether `path`'s timestamps are fine enough for an unchanged `stat` to mean unchanged bytes:
/// sub-second parts present (file systems with whole-second times, such as ext4 with small inodes
/// or HFS+, have none), and on Linux a local file system that updates the change time on every
/// write (not FAT, whose "change time" is the creation time, nor network file systems, whose
/// clocks are the server's).
fn fine_grained(path: &Path, stat: &Stat) -> bool {
    let subsecond = stat.mtime_ns % 1_000_000_000 != 0 || stat.ctime_ns % 1_000_000_000 != 0;
    subsecond && local_file_system(path)
}

#[cfg(target_os = "linux")]
fn local_file_system(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // ext2/3/4, XFS, Btrfs, tmpfs, ZFS, F2FS, overlayfs, bcachefs (statfs(2) magic numbers).
    const LOCAL: [u64; 8] =
        [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x2FC1_2FC1, 0xF2F5_2010, 0x794C_7630, 0xCA45_1A4E];
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a NUL-terminated path and a zeroed buffer statfs fills in.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return false;
    }
    LOCAL.contains(&(buf.f_type as u64))
}

#[cfg(not(target_os = "linux"))]
fn local_file_system(_: &Path) -> bool {
    true
}

/// What `stat` says of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    path: PathBuf,
    stat: Stat,
    sha256: String,
    /// When the `stat` was taken (nanoseconds since the epoch), before the file was hashed.
    checked_ns: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    entries: Vec<Entry>,
}

/// The cache file.
#[derive(Debug, Clone)]
pub struct DigestCache {
    path: PathBuf,
}

/// The result of [`DigestCache::lookup`]: the digests it knew, and what it will remember of the
/// others once the run has hashed them ([`DigestCache::record`]).
#[derive(Debug, Default)]
pub struct Lookup {
    /// Known digests, named as receipts name inputs.
    pub known: Vec<InputDigest>,
    /// Files it did not know and may remember: (receipt name, path, stat before the run, when it
    /// was taken).
    missed: Vec<(String, PathBuf, Stat, i64)>,
    /// The known files with the `stat` that matched ([`Lookup::unchanged`]).
    hits: Vec<(PathBuf, Stat)>,
}

impl Lookup {
    /// Whether every file the cache knew still has the `stat` it had at the lookup: a run that
    /// used remembered digests checks this afterwards, since it did not read those files to
    /// hash them (a file rewritten meanwhile would leave its old digest in the receipt).
    pub fn unchanged(&self) -> bool {
        self.hits.iter().all(|(path, was)| stat(path).as_ref() == Some(was))
    }
}

impl DigestCache {
    /// The cache at `path` (created on the first record).
    pub fn new(path: impl Into<PathBuf>) -> DigestCache {
        DigestCache { path: path.into() }
    }

    /// The cache file under a home directory.
    pub fn under(home: &Path) -> DigestCache {
        DigestCache::new(home.join("cache").join("source-digests.json"))
    }

    /// Looks up the files of `source` (a file, or a directory's files two levels deep), before
    /// the run that reads them.
    pub fn lookup(&self, source: &Path) -> Lookup {
        let (base, files) = source_files(source);
        let entries = self.load().entries;
        let mut out = Lookup::default();
        for path in files {
            let checked_ns = now_ns();
            let Some(stat) = stat(&path) else { continue };
            // Named as the run names it (from the path it is given); kept by its real path.
            let Ok((name, _)) = crate::digest::input_name_and_size(&base, &path) else { continue };
            let key = std::fs::canonicalize(&path).unwrap_or(path);
            if !fine_grained(&key, &stat) {
                continue;
            }
            let hit = entries.iter().find(|e| e.path == key && e.stat == stat && !racy(&e.stat, e.checked_ns));
            match hit {
                Some(e) => {
                    out.known.push(InputDigest { name, sha256: e.sha256.clone(), size: stat.size });
                    out.hits.push((key, stat));
                }
                None if !racy(&stat, checked_ns) => out.missed.push((name, key, stat, checked_ns)),
                // Changed too recently to be trusted later: hashed, not remembered.
                None => {}
            }
        }
        out
    }

    /// Remembers the digests a run computed (`inputs`, from its receipt) for the files `lookup`
    /// missed, with the `stat` taken before the run. Errors are ignored: this is a cache.
    pub fn record(&self, lookup: &Lookup, inputs: &[InputDigest]) {
        let fresh: Vec<Entry> = lookup
            .missed
            .iter()
            .filter(|(_, path, _, _)| path.to_str().is_some())
            .filter_map(|(name, path, stat, checked_ns)| {
                let input = inputs.iter().find(|i| &i.name == name && i.size == stat.size)?;
                Some(Entry { path: path.clone(), stat: *stat, sha256: input.sha256.clone(), checked_ns: *checked_ns })
            })
            .collect();
        if fresh.is_empty() {
            return;
        }
        let mut file = self.load();
        // JSON holds UTF-8 paths only.
        file.entries.retain(|e| e.path.to_str().is_some() && !fresh.iter().any(|f| f.path == e.path));
        file.entries.extend(fresh);
        file.entries.sort_by_key(|e| std::cmp::Reverse(e.checked_ns));
        file.entries.truncate(MAX_ENTRIES);
        if let Err(e) = self.store(&file) {
            tracing::debug!(path = %self.path.display(), error = %e, "the source digest cache was not written");
        }
    }

    fn load(&self) -> File {
        use std::io::Read;
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&self.path).and_then(|f| f.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes));
        if read.is_err() || bytes.len() as u64 > MAX_FILE_LEN {
            return File::default();
        }
        match serde_json::from_slice::<File>(&bytes) {
            Ok(mut f) if f.version == VERSION => {
                f.entries.retain(|e| e.sha256.len() == 64 && e.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
                f.entries.truncate(MAX_ENTRIES);
                f
            }
            _ => File::default(),
        }
    }

    fn store(&self, file: &File) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec(&File { version: VERSION, entries: file.entries.clone() })?;
        let written = std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }
}

/// `source`'s base (what receipt names are relative to) and files.
fn source_files(source: &Path) -> (PathBuf, Vec<PathBuf>) {
    if !source.is_dir() {
        return (source.parent().unwrap_or(Path::new("")).to_owned(), vec![source.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![(source.to_owned(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if files.len() >= MAX_FILES {
                break;
            }
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => files.push(path),
                Ok(m) if m.is_dir() && depth < 1 => dirs.push((path, depth + 1)),
                _ => {}
            }
        }
    }
    (source.to_owned(), files)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(unix)]
fn stat(path: &Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Some(Stat {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

#[cfg(not(unix))]
fn stat(_: &Path) -> Option<Stat> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        use sha2::Digest;
        crate::imatrix::hex(&sha2::Sha256::digest(bytes))
    }

    /// Waits until `path`'s last change is older than [`RACY`].
    fn settle() {
        std::thread::sleep(RACY + Duration::from_millis(20));
    }

    #[test]
    fn a_digest_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.gguf");
        std::fs::write(&model, b"weights").unwrap();
        settle();
        let cache = DigestCache::under(&dir.path().join("home"));
        let first = cache.lookup(&model);
        assert!(first.known.is_empty());
        cache.record(&first, &[InputDigest { name: "model.gguf".into(), sha256: sha(b"weights"), size: 7 }]);
        let second = cache.lookup(&model);
        assert_eq!(second.known, vec![InputDigest { name: "model.gguf".into(), sha256: sha(b"weights"), size: 7 }]);

        // Same size, new bytes: the change time moved, so the entry no longer counts.
        settle();
        std::fs::write(&model, b"WEIGHTS").unwrap();
        assert!(cache.lookup(&model).known.is_empty());
        // Replaced by another file under the same name (another inode).
        let other = dir.path().join("other");
        std::fs::write(&other, b"weights").unwrap();
        std::fs::rename(&other, &model).unwrap();
        assert!(cache.lookup(&model).known.is_empty());
    }

    #[test]
    fn a_file_changed_just_before_its_stat_is_not_remembered_as_known() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.gguf");
        std::fs::write(&model, b"weights").unwrap();
        // Its last change is (as far as the stat can tell) after the lookup: a write in the same
        // clock tick could go unseen, so the digest is not remembered.
        let file = std::fs::File::options().write(true).open(&model).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(10)).unwrap();
        let cache = DigestCache::under(dir.path());
        let racy = cache.lookup(&model);
        cache.record(&racy, &[InputDigest { name: "model.gguf".into(), sha256: sha(b"weights"), size: 7 }]);
        assert!(cache.lookup(&model).known.is_empty());
        assert!(!cache.path.exists(), "nothing was written");
        // Settled and hashed again, it is.
        file.set_modified(SystemTime::now() - Duration::from_secs(10)).unwrap();
        settle();
        let later = cache.lookup(&model);
        cache.record(&later, &[InputDigest { name: "model.gguf".into(), sha256: sha(b"weights"), size: 7 }]);
        let hit = cache.lookup(&model);
        assert_eq!(hit.known.len(), 1);
        assert!(hit.unchanged());
        // Rewritten after that lookup (as if during the run): the run can tell.
        std::fs::write(&model, b"WEIGHTS").unwrap();
        assert!(!hit.unchanged());
    }

    #[test]
    fn directories_are_looked_up_file_by_file_under_receipt_names() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("MiniLM");
        std::fs::create_dir_all(model.join("1_Pooling")).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        std::fs::write(model.join("1_Pooling/config.json"), b"{\"mean\":true}").unwrap();
        settle();
        let cache = DigestCache::under(dir.path());
        let first = cache.lookup(&model);
        let inputs = vec![
            InputDigest { name: "1_Pooling/config.json".into(), sha256: sha(b"{\"mean\":true}"), size: 13 },
            InputDigest { name: "config.json".into(), sha256: sha(b"{}"), size: 2 },
        ];
        cache.record(&first, &inputs);
        let mut known = cache.lookup(&model).known;
        known.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(known, inputs);
    }

    #[test]
    fn a_damaged_cache_file_is_an_empty_cache_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.gguf");
        std::fs::write(&model, b"weights").unwrap();
        settle();
        let cache = DigestCache::new(dir.path().join("digests.json"));
        for damaged in [&b"{not json"[..], b"{\"version\":99,\"entries\":[]}", b"\xff\xfe", b""] {
            std::fs::write(dir.path().join("digests.json"), damaged).unwrap();
            let lookup = cache.lookup(&model);
            assert!(lookup.known.is_empty());
        }
        // An entry with a digest that is not 64 hex digits is dropped.
        let lookup = cache.lookup(&model);
        cache.record(&lookup, &[InputDigest { name: "model.gguf".into(), sha256: sha(b"weights"), size: 7 }]);
        assert_eq!(cache.lookup(&model).known.len(), 1, "the damaged file was replaced");
        let text = std::fs::read_to_string(dir.path().join("digests.json")).unwrap();
        std::fs::write(dir.path().join("digests.json"), text.replace(&sha(b"weights"), "zz")).unwrap();
        assert!(cache.lookup(&model).known.is_empty());
    }

    #[test]
    fn the_cache_keeps_the_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::new(dir.path().join("digests.json"));
        let files: Vec<PathBuf> = (0..MAX_ENTRIES + 3).map(|i| dir.path().join(format!("m{i}.gguf"))).collect();
        for f in &files {
            std::fs::write(f, b"x").unwrap();
        }
        settle();
        for f in &files {
            let lookup = cache.lookup(f);
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            cache.record(&lookup, &[InputDigest { name, sha256: sha(b"x"), size: 1 }]);
        }
        assert_eq!(cache.load().entries.len(), MAX_ENTRIES);
        assert!(cache.lookup(&files[0]).known.is_empty(), "the oldest entry was dropped");
        assert_eq!(cache.lookup(files.last().unwrap()).known.len(), 1);
    }
}
