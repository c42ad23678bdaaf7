//! The content-addressed blob store: `<home>/blobs/sha256-<hex>`.
//!
//! Every blob is written to a temporary file inside `blobs/` while its SHA-256 is computed, then
//! fsynced and renamed into place, so a crash leaves either the whole blob or a stale temporary
//! file (removed by `gc`), never a blob whose name lies about its content. A blob already present
//! is not written twice.

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

/// How a file entered the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The content's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the blob is a hard link to the source (else a copy, or the existing blob).
    pub linked: bool,
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

    /// Stores `src` as a hard link when it is on the same filesystem as the store (no copy, no
    /// extra space), else as a copy. The linked content is hashed through the link, so the name
    /// always matches what the store holds at that moment. Note that a hard-linked blob changes if
    /// the original file is modified in place; `verify` detects that.
    pub fn import_file_link(&self, src: &Path) -> Result<Stored, BlobError> {
        // Link the file itself, never a symlink to it.
        let src = fs::canonicalize(src).map_err(io_err("resolve", src))?;
        let tmp = self.temp_path();
        if let Err(e) = fs::hard_link(&src, &tmp) {
            tracing::debug!(src = %src.display(), error = %e, "hard link not possible, copying");
            return self.copy_in(&src);
        }
        let result = (|| {
            let file = File::open(&tmp).map_err(io_err("open", &tmp))?;
            let (digest, size) = hash_reader(file, None, &tmp)?;
            let existed = self.commit(&tmp, &digest)?;
            Ok(Stored { digest, size, linked: !existed, existed })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Stores what `r` yields if it hashes to `expected` (else nothing is kept and the error is
    /// [`BlobError::Corrupt`]).
    pub fn put_reader(&self, r: &mut dyn Read, expected: &Digest) -> Result<Stored, BlobError> {
        let tmp = self.temp_path();
        let result = (|| {
            let mut out = File::options().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
            let (digest, size) = hash_reader(r, Some(&mut out), &tmp)?;
            if digest != *expected {
                return Err(BlobError::Corrupt { expected: *expected, actual: digest });
            }
            out.sync_all().map_err(io_err("sync", &tmp))?;
            drop(out);
            let existed = self.commit(&tmp, &digest)?;
            Ok(Stored { digest, size, linked: false, existed })
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
        Ok(Stored { digest: *digest, size, linked: false, existed })
    }

    fn copy_in(&self, src: &Path) -> Result<Stored, BlobError> {
        let input = File::open(src).map_err(io_err("open", src))?;
        let tmp = self.temp_path();
        let result = (|| {
            let mut out = File::options().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
            let (digest, size) = hash_reader(input, Some(&mut out), src)?;
            out.sync_all().map_err(io_err("sync", &tmp))?;
            drop(out);
            let existed = self.commit(&tmp, &digest)?;
            Ok(Stored { digest, size, linked: false, existed })
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

/// Hashes everything `r` yields, copying it to `out` if given. `path` is for errors.
fn hash_reader(mut r: impl Read, mut out: Option<&mut File>, path: &Path) -> Result<(Digest, u64), BlobError> {
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
        if let Some(out) = out.as_deref_mut() {
            out.write_all(&buf[..n]).map_err(io_err("write blob from", path))?;
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
    fn import_links_on_the_same_filesystem() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let src = home.path().join("m.bin");
        fs::write(&src, vec![7u8; 3 * BUF_LEN + 5]).unwrap();
        let stored = blobs.import_file_link(&src).unwrap();
        assert!(stored.linked && !stored.existed);
        assert_eq!(stored.size, 3 * BUF_LEN as u64 + 5);
        blobs.verify(&stored.digest).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(fs::metadata(&src).unwrap().ino(), fs::metadata(blobs.path(&stored.digest)).unwrap().ino());
        }
        let again = blobs.import_file_link(&src).unwrap();
        assert!(again.existed && !again.linked);
        assert!(blobs.scan().unwrap().partials.is_empty());
    }

    #[test]
    fn missing_source_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(home.path()).unwrap();
        let err = blobs.put_file(&home.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(blobs.import_file_link(&home.path().join("nope")).is_err());
        assert_eq!(fs::read_dir(blobs.dir()).unwrap().count(), 0);
    }
}
