//! The content-addressed blob store: `<home>/blobs/sha256-<hex>`.
//!
//! Every blob is written to a temporary file inside `blobs/` while its SHA-256 is computed, then
//! fsynced and renamed into place, so a crash leaves either the whole blob or a stale temporary
//! file (removed by `gc`), never a blob whose name lies about its content. A blob already present
//! is not written twice.
//!
//! Imported files enter the store as a copy-on-write clone (reflink) where the filesystem offers
//! one (Btrfs, XFS, APFS, ReFS...), else as a copy, so the store never shares data the user can
//! still change; a hard link only when asked ([`ImportMode::Link`]). When the disk has no room for
//! a copy, the file is hashed first, and content the store already holds needs no space at all.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

/// Prefix of the temporary files the store writes in `blobs/`.
pub const TEMP_PREFIX: &str = ".tmp-";
/// Suffix of partial files (temporary files and, later, interrupted downloads).
pub const PARTIAL_SUFFIX: &str = ".partial";

const BUF_LEN: usize = 1 << 20;

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file operation failed.
    #[error("blob store: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The blob's content no longer hashes to its name.
    #[error("blob {expected} is corrupt: its content hashes to {actual}; remove the model and import or pull it again")]
    Corrupt {
        /// The digest the blob is named by.
        expected: Digest,
        /// The digest of its content now.
        actual: Digest,
    },
    /// The disk holding the store is full (or the user's disk quota is reached).
    #[error(
        "no space left to store {what} in {}{}: free some space (`ondevice models rm NAME`, then `ondevice models gc`) and try again",
        dir.display(), needs(*needed, *free)
    )]
    NoSpace {
        /// What was being stored (a file name).
        what: String,
        /// The blob directory.
        dir: PathBuf,
        /// Bytes needed, when known.
        needed: Option<u64>,
        /// Bytes free, when known.
        free: Option<u64>,
    },
    /// The blob file is not there.
    #[error("blob {digest} is missing ({}): remove the model and import or pull it again", path.display())]
    Missing {
        /// The blob.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobError + 'a {
    move |source| BlobError::Io { op, path: path.to_path_buf(), source }
}

/// `: it needs 1.0 GiB, 12 MiB free`, as far as known.
fn needs(needed: Option<u64>, free: Option<u64>) -> String {
    match (needed, free) {
        (Some(n), Some(f)) => format!(" (it needs {}, {} is free)", crate::quota::human(n), crate::quota::human(f)),
        (Some(n), None) => format!(" (it needs {})", crate::quota::human(n)),
        _ => String::new(),
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// How an imported file enters the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportMode {
    /// A copy-on-write clone where the filesystem offers one (no extra space, no shared data),
    /// else a streamed copy: changing the original afterwards never changes the stored model.
    #[default]
    Copy,
    /// A hard link when the file is on the store's filesystem (no copy, no extra space), else a
    /// copy. The store then shares the file with its owner: writing to the original in place
    /// changes the stored model too (`models verify` reports it corrupt).
    Link,
}

/// How a file entered the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The content's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the blob is a hard link to the source (else a copy, or the existing blob).
    pub linked: bool,
    /// Whether the blob is a copy-on-write clone of the source.
    pub cloned: bool,
    /// Whether the blob was already in the store (nothing new written).
    pub existed: bool,
}

/// The directory of content-addressed blobs.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens `<home>/blobs`, creating it if needed.
    pub fn open(home: &Path) -> Result<Self, BlobError> {
        let dir = home.join("blobs");
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        Ok(BlobStore { dir })
    }

    /// The `blobs/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob lives (whether or not it exists). A [`Digest`] is always 64 hex digits, so
    /// this path is always directly inside `blobs/`.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.file_name())
    }

    /// Whether the blob file exists.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Copies `src` into the store, hashing while copying; returns its digest and size.
    pub fn put_file(&self, src: &Path) -> Result<(Digest, u64), BlobError> {
        self.copy_in(src).map(|s| (s.digest, s.size))
    }

    /// Imports the file `src` as [`ImportMode`] says. The stored content is hashed as stored
    /// (through the clone or link, or while copying), so a blob's name always matches what the
    /// store holds.
    pub fn import_file(&self, src: &Path, mode: ImportMode) -> Result<Stored, BlobError> {
        // Store the file itself, never a symlink to it.
        let src = fs::canonicalize(src).map_err(io_err("resolve", src))?;
        match mode {
            ImportMode::Link => self.link_in(&src),
            ImportMode::Copy => self.clone_in(&src),
        }
    }

    /// A hard link when possible, else a copy.
    fn link_in(&self, src: &Path) -> Result<Stored, BlobError> {
        let tmp = self.temp_path();
        if let Err(e) = fs::hard_link(src, &tmp) {
            tracing::debug!(src = %src.display(), error = %e, "hard link not possible, copying");
            let input = File::open(src).map_err(io_err("open", src))?;
            return self.copy_or_existing(src, &input);
        }
        self.commit_hashed(&tmp).map(|(digest, size, existed)| Stored {
            digest,
            size,
            linked: !existed,
            cloned: false,
            existed,
        })
    }

    /// A copy-on-write clone when the filesystem offers one, else a copy.
    fn clone_in(&self, src: &Path) -> Result<Stored, BlobError> {
        let input = File::open(src).map_err(io_err("open", src))?;
        let tmp = self.temp_path();
        let out = File::options().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
        match reflink_copy::reflink_file(&input, &out) {
            Ok(()) => {
                drop(out);
                return self.commit_hashed(&tmp).map(|(digest, size, existed)| Stored {
                    digest,
                    size,
                    linked: false,
                    cloned: !existed,
                    existed,
                });
            }
            Err(e) => {
                tracing::debug!(src = %src.display(), error = %e, "copy-on-write clone not possible, copying");
                drop(out);
                let _ = fs::remove_file(&tmp);
            }
        }
        self.copy_or_existing(src, &input)
    }

    /// A streamed copy of `src` (open as `input`) when the disk has room for it; when it has not,
    /// the existing blob if the store already holds this content, else [`BlobError::NoSpace`].
    fn copy_or_existing(&self, src: &Path, input: &File) -> Result<Stored, BlobError> {
        let size = input.metadata().map_err(io_err("stat", src))?.len();
        let free = crate::quota::free_space(&self.dir);
        if free.is_some_and(|f| f < size) {
            // No room for a copy: the store may already hold this content.
            return self.existing_or_full(src, Some(size), free);
        }
        match self.copy_in(src) {
            Err(BlobError::NoSpace { .. }) => {
                self.existing_or_full(src, Some(size), crate::quota::free_space(&self.dir))
            }
            other => other,
        }
    }

    /// Hashes `src` without writing: the existing blob when the store holds its content, else
    /// [`BlobError::NoSpace`].
    fn existing_or_full(&self, src: &Path, needed: Option<u64>, free: Option<u64>) -> Result<Stored, BlobError> {
        let file = File::open(src).map_err(io_err("open", src))?;
        let (digest, size) = hash_reader(file, None, src)?;
        if self.contains(&digest) {
            return Ok(Stored { digest, size, linked: false, cloned: false, existed: true });
        }
        let what = src.file_name().map_or_else(|| src.display().to_string(), |n| n.to_string_lossy().into_owned());
        Err(BlobError::NoSpace { what, dir: self.dir.clone(), needed, free })
    }

    /// Hashes the temporary file `tmp` (a link or clone) and commits it; removes it on failure.
    fn commit_hashed(&self, tmp: &Path) -> Result<(Digest, u64, bool), BlobError> {
        let result = (|| {
            let file = File::open(tmp).map_err(io_err("open", tmp))?;
            let (digest, size) = hash_reader(file, None, tmp)?;
            let existed = self.commit(tmp, &digest)?;
            Ok((digest, size, existed))
        })();
        if result.is_err() {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    /// Stores what `r` yields if it hashes to `expected` (else nothing is kept and the error is
    /// [`BlobError::Corrupt`]).
    /// Content the store already holds is only hashed, not written, so it needs no space.
    pub fn put_reader(&self, r: &mut dyn Read, expected: &Digest) -> Result<Stored, BlobError> {
        if self.contains(expected) {
            let (digest, size) = hash_reader(r, None, &self.path(expected))?;
            if digest != *expected {
                return Err(BlobError::Corrupt { expected: *expected, actual: digest });
            }
            return Ok(Stored { digest, size, linked: false, cloned: false, existed: true });
        }
        let tmp = self.temp_path();
        let result = (|| {
            let mut out = File::options().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
            let (digest, size) = hash_reader(r, Some((&mut out, &tmp)), &tmp)?;
            if digest != *expected {
                return Err(BlobError::Corrupt { expected: *expected, actual: digest });
            }
            out.sync_all().map_err(self.full_or(&tmp, "sync"))?;
            drop(out);
            let existed = self.commit(&tmp, &digest)?;
            Ok(Stored { digest, size, linked: false, cloned: false, existed })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Moves a file whose digest the caller computed (a verified download) into the store:
    /// fsynced, then renamed (same filesystem: `partials/` is beside `blobs/`).
    pub fn adopt(&self, src: &Path, digest: &Digest) -> Result<Stored, BlobError> {
        let file = File::open(src).map_err(io_err("open", src))?;
        file.sync_all().map_err(io_err("sync", src))?;
        let size = file.metadata().map_err(io_err("stat", src))?.len();
        drop(file);
        let existed = self.commit(src, digest)?;
        Ok(Stored { digest: *digest, size, linked: false, cloned: false, existed })
    }

    fn copy_in(&self, src: &Path) -> Result<Stored, BlobError> {
        let input = File::open(src).map_err(io_err("open", src))?;
        let tmp = self.temp_path();
        let result = (|| {
            let mut out = File::options().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
            let (digest, size) = hash_reader(input, Some((&mut out, &tmp)), src)?;
            out.sync_all().map_err(self.full_or(&tmp, "sync"))?;
            drop(out);
            let existed = self.commit(&tmp, &digest)?;
            Ok(Stored { digest, size, linked: false, cloned: false, existed })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Renames `tmp` to the blob's name, or drops it if the blob is already there; returns
    /// whether it was.
    fn commit(&self, tmp: &Path, digest: &Digest) -> Result<bool, BlobError> {
        let dest = self.path(digest);
        if dest.is_file() {
            fs::remove_file(tmp).map_err(io_err("remove", tmp))?;
            return Ok(true);
        }
        fs::rename(tmp, &dest).map_err(io_err("rename into", &dest))?;
        sync_dir(&self.dir);
        Ok(false)
    }

    /// An I/O error writing `tmp` (in `blobs/`): [`BlobError::NoSpace`] when the disk is full.
    fn full_or<'a>(&'a self, tmp: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> BlobError + 'a {
        move |e| full_or(tmp, op, e)
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        self.dir.join(format!("{TEMP_PREFIX}{}-{n}-{nanos}{PARTIAL_SUFFIX}", std::process::id()))
    }

    /// Re-hashes the blob and checks it against its name.
    pub fn verify(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { digest: *digest, path });
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let (actual, _) = hash_reader(file, None, &path)?;
        if actual != *digest {
            return Err(BlobError::Corrupt { expected: *digest, actual });
        }
        Ok(())
    }

    /// Deletes the blob file; returns whether it existed.
    pub fn remove(&self, digest: &Digest) -> Result<bool, BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// What is in `blobs/`: well-named blobs with their sizes, and temporary/partial files.
    /// Anything else is left alone and not reported.
    pub fn scan(&self) -> Result<Scan, BlobError> {
        let mut scan = Scan::default();
        for entry in fs::read_dir(&self.dir).map_err(io_err("read directory", &self.dir))? {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            if !meta.is_file() {
                continue;
            }
            if let Some(d) = Digest::from_file_name(&name) {
                scan.blobs.push((d, meta.len()));
            } else if name.starts_with(TEMP_PREFIX) || name.ends_with(PARTIAL_SUFFIX) {
                let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
                scan.partials.push(Partial { path: entry.path(), size: meta.len(), age });
            }
        }
        scan.blobs.sort();
        Ok(scan)
    }
}

/// The result of [`BlobStore::scan`].
#[derive(Debug, Default)]
pub struct Scan {
    /// Blob files and their sizes, by digest.
    pub blobs: Vec<(Digest, u64)>,
    /// Temporary and partial files.
    pub partials: Vec<Partial>,
}

/// A temporary or partial file in `blobs/`.
#[derive(Debug)]
pub struct Partial {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Time since it was last modified.
    pub age: std::time::Duration,
}

/// An I/O error writing `file` in `blobs/`: [`BlobError::NoSpace`] when the disk is full.
fn full_or(file: &Path, op: &'static str, e: io::Error) -> BlobError {
    if is_disk_full(&e) {
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let free = crate::quota::free_space(&dir);
        return BlobError::NoSpace { what: "the model".to_owned(), dir, needed: None, free };
    }
    io_err(op, file)(e)
}

/// Hashes everything `r` yields, copying it to `out` (the file and its path) if given. `path`
/// names the source for read errors.
fn hash_reader(mut r: impl Read, mut out: Option<(&mut File, &Path)>, path: &Path) -> Result<(Digest, u64), BlobError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_LEN];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        hasher.update(&buf[..n]);
        if let Some((out, out_path)) = out.as_mut() {
            out.write_all(&buf[..n]).map_err(|e| full_or(out_path, "write", e))?;
        }
        size += n as u64;
    }
    Ok((Digest::from_bytes(hasher.finalize().into()), size))
}

/// Makes a rename durable (best effort; not possible on every platform).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot fsync directory");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_hashes_dedups_and_verifies() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let src = home.path().join("src.bin");
        fs::write(&src, b"hello").unwrap();
        let (d, size) = blobs.put_file(&src).unwrap();
        // sha256("hello")
        assert_eq!(d.hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(size, 5);
        assert_eq!(fs::read(blobs.path(&d)).unwrap(), b"hello");
        assert_eq!(blobs.put_file(&src).unwrap(), (d, 5));
        blobs.verify(&d).unwrap();
        let scan = blobs.scan().unwrap();
        assert_eq!(scan.blobs, vec![(d, 5)]);
        assert!(scan.partials.is_empty(), "{:?}", scan.partials);

        fs::write(blobs.path(&d), b"hellO").unwrap();
        match blobs.verify(&d) {
            Err(BlobError::Corrupt { expected, actual }) => {
                assert_eq!(expected, d);
                assert_ne!(actual, d);
            }
            other => panic!("{other:?}"),
        }
        assert!(blobs.remove(&d).unwrap());
        assert!(!blobs.remove(&d).unwrap());
        assert!(matches!(blobs.verify(&d), Err(BlobError::Missing { .. })));
    }

    #[test]
    fn import_links_on_the_same_filesystem_when_asked() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let src = home.path().join("m.bin");
        fs::write(&src, vec![7u8; 3 * BUF_LEN + 5]).unwrap();
        let stored = blobs.import_file(&src, ImportMode::Link).unwrap();
        assert!(stored.linked && !stored.existed);
        assert_eq!(stored.size, 3 * BUF_LEN as u64 + 5);
        blobs.verify(&stored.digest).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(fs::metadata(&src).unwrap().ino(), fs::metadata(blobs.path(&stored.digest)).unwrap().ino());
        }
        let again = blobs.import_file(&src, ImportMode::Link).unwrap();
        assert!(again.existed && !again.linked);
        assert!(blobs.scan().unwrap().partials.is_empty());
    }

    #[test]
    fn import_copies_by_default_so_the_original_can_change() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let src = home.path().join("m.bin");
        fs::write(&src, vec![9u8; 2 * BUF_LEN + 3]).unwrap();
        let stored = blobs.import_file(&src, ImportMode::Copy).unwrap();
        assert!(!stored.linked && !stored.existed);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_ne!(fs::metadata(&src).unwrap().ino(), fs::metadata(blobs.path(&stored.digest)).unwrap().ino());
        }
        // Overwritten in place (same inode): the stored blob keeps its content.
        let mut f = File::options().write(true).open(&src).unwrap();
        f.write_all(b"changed").unwrap();
        drop(f);
        blobs.verify(&stored.digest).unwrap();
        let again = blobs.import_file(&home.path().join("m.bin"), ImportMode::Copy).unwrap();
        assert_ne!(again.digest, stored.digest);
        assert!(blobs.scan().unwrap().partials.is_empty());
    }

    #[test]
    fn stored_content_needs_no_space_and_full_disks_say_so() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let src = home.path().join("m.bin");
        fs::write(&src, b"content").unwrap();
        let first = blobs.import_file(&src, ImportMode::Copy).unwrap();
        // The no-room path: hashed without writing, the existing blob is answered.
        let again = blobs.existing_or_full(&src, Some(7), Some(0)).unwrap();
        assert!(again.existed && again.digest == first.digest);
        let d = first.digest;
        assert!(blobs.put_reader(&mut &b"content"[..], &d).unwrap().existed);
        assert!(matches!(blobs.put_reader(&mut &b"tampered"[..], &d), Err(BlobError::Corrupt { .. })));
        // New content without room: a clear error, nothing written.
        let other = home.path().join("other.bin");
        fs::write(&other, b"other content").unwrap();
        let err = blobs.existing_or_full(&other, Some(13), Some(2)).unwrap_err();
        assert!(matches!(err, BlobError::NoSpace { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("no space left to store other.bin") && msg.contains("13 B"), "{msg}");
        let full = full_or(&blobs.dir().join("x"), "write", io::Error::from_raw_os_error(28));
        assert!(matches!(full, BlobError::NoSpace { .. }), "ENOSPC: {full}");
        assert!(blobs.scan().unwrap().partials.is_empty());
    }

    #[test]
    fn missing_source_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let err = blobs.put_file(&home.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(blobs.import_file(&home.path().join("nope"), ImportMode::Copy).is_err());
        assert!(blobs.import_file(&home.path().join("nope"), ImportMode::Link).is_err());
        assert_eq!(fs::read_dir(blobs.dir()).unwrap().count(), 0);
    }
}
