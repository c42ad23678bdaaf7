//! Per-worker rotating log files: `<dir>/<name>.log`, rotated to `<name>.log.1` … `.N` when it
//! passes a size limit. stdout and stderr lines go to the same file, stderr lines prefixed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate when the file passes this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`.1` … `.keep`).
    pub keep: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation { max_bytes: 10 << 20, keep: 3 }
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    rotation: LogRotation,
}

/// A rotating log file shared by a worker's stdout and stderr pumps.
#[derive(Debug, Clone)]
pub struct RotatingLog {
    inner: Arc<Mutex<Inner>>,
}

impl RotatingLog {
    /// Open (append) `<dir>/<name>.log`.
    pub fn open(dir: &Path, name: &str, rotation: LogRotation) -> std::io::Result<RotatingLog> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingLog { inner: Arc::new(Mutex::new(Inner { path, file: Some(file), size, rotation })) })
    }

    /// The current log file's path.
    pub fn path(&self) -> PathBuf {
        self.inner.lock().map(|i| i.path.clone()).unwrap_or_default()
    }

    /// Append one line (a newline is added if missing), rotating first if needed.
    pub fn write_line(&self, prefix: &[u8], line: &[u8]) {
        let Ok(mut g) = self.inner.lock() else { return };
        let len = (prefix.len() + line.len() + 1) as u64;
        if g.size > 0 && g.size + len > g.rotation.max_bytes {
            g.rotate();
        }
        if let Some(f) = g.file.as_mut() {
            let mut buf = Vec::with_capacity(len as usize);
            buf.extend_from_slice(prefix);
            buf.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                buf.push(b'\n');
            }
            if f.write_all(&buf).is_ok() {
                g.size += buf.len() as u64;
            }
        }
    }
}

impl Inner {
    fn rotate(&mut self) {
        self.file = None;
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.rotation.keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(name(self.rotation.keep));
            for i in (1..self.rotation.keep).rev() {
                let _ = fs::rename(name(i), name(i + 1));
            }
            let _ = fs::rename(&self.path, name(1));
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
        self.size = 0;
    }
}

/// Copy lines from `reader` to `log` until EOF. Lines longer than 64 KiB are split.
pub(crate) async fn pump(reader: impl AsyncRead + Unpin, log: RotatingLog, prefix: &'static [u8]) {
    const MAX: usize = 64 << 10;
    let mut r = BufReader::with_capacity(MAX, reader);
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let room = MAX - line.len();
        let (n, end) = match buf.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len().min(room), buf.len() >= room),
        };
        line.extend_from_slice(&buf[..n]);
        r.consume(n);
        if end {
            log.write_line(prefix, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        log.write_line(prefix, &line);
    }
}
