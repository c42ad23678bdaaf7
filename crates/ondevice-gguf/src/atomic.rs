//! Writing a file atomically: a temporary file in the destination's directory,
//! synced, then renamed over the destination, so a reader (or a crash) sees
//! the old file or the whole new one, never a part.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::GgufWriteError;
use crate::stream::{Finished, GgufHeader, GgufStreamWriter};

/// Buffer between the writer's many small writes and the file.
const FILE_BUFFER: usize = 1 << 20;

/// A file written under a temporary name beside its destination and moved
/// into place by [`AtomicFile::commit`]. Dropped without a commit, the
/// temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Creates `.NAME.PID.N.partial` in `path`'s directory.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = path.as_ref().to_owned();
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the destination has no file name"))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}.{n}.partial", std::process::id()));
            let temp = dir.join(temp_name);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => return Ok(AtomicFile { file, temp, path, committed: false }),
                // Left by an earlier process with the same id: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the data, renames the file over the destination and, on Unix,
    /// syncs the directory so the rename survives a crash.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_all()?;
        std::fs::rename(&self.temp, &self.path)?;
        self.committed = true;
        #[cfg(unix)]
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

impl GgufHeader {
    /// Writes the file to `path` atomically: `write` supplies every tensor's
    /// data to the writer; on success the file is synced and renamed into
    /// place, on any error (or a panic) no file appears and the temporary one
    /// is removed. `write`'s error type only needs `From<GgufWriteError>`, so
    /// a converter can return its own errors.
    pub fn write_atomic<E>(
        self,
        path: impl AsRef<Path>,
        write: impl FnOnce(&mut GgufStreamWriter<BufWriter<AtomicFile>>) -> Result<(), E>,
    ) -> Result<Finished<PathBuf>, E>
    where
        E: From<GgufWriteError>,
    {
        let path = path.as_ref();
        let file =
            AtomicFile::create(path).map_err(|source| GgufWriteError::CreateTemp { path: path.to_owned(), source })?;
        let mut writer = self.write_to(BufWriter::with_capacity(FILE_BUFFER, file))?;
        write(&mut writer)?;
        let (buffered, finished) = writer.finish()?.split();
        let commit = |source| GgufWriteError::Commit { path: path.to_owned(), source };
        // `finish` flushed the buffer: this only fails if that flush did.
        let file = buffered.into_inner().map_err(|e| commit(e.into_error()))?;
        file.commit().map_err(commit)?;
        Ok(finished.map_output(|()| path.to_owned()))
    }
}
