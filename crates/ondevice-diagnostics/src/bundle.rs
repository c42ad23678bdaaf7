//! The bundle: files added one by one (each redacted on the way in), written as a `.tar.gz` whose
//! first entry is `manifest.json` (each file's name, size, SHA-256 and redaction counts, plus what
//! was left out and why).
//!
//! Size is bounded by [`BundleCaps`]: each log contributes at most its tail, logs and crash
//! reports have a budget of their own, and the whole archive (before compression) has a cap; a
//! file that would pass it is cut or left out, and the manifest says so. Time is bounded too: the
//! writer only reads file tails, never whole logs.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::redact::{Redactions, Redactor};
use crate::{DiagError, now_unix};

/// Format version of `manifest.json`.
pub const MANIFEST_FORMAT: u32 = 1;

/// Size limits of one bundle (bytes, before compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BundleCaps {
    /// The tail kept of each log file.
    pub per_log_file: u64,
    /// All logs together (daemon and workers).
    pub logs_total: u64,
    /// All crash reports together.
    pub crashes_total: u64,
    /// The whole archive.
    pub total: u64,
}

impl Default for BundleCaps {
    fn default() -> Self {
        BundleCaps { per_log_file: 1 << 20, logs_total: 8 << 20, crashes_total: 2 << 20, total: 16 << 20 }
    }
}

/// One file of the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestFile {
    /// Path inside the archive.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// What was redacted from it, by kind, with counts.
    pub redacted: Redactions,
    /// Why it is partial, if it is (`"last 1048576 bytes of 5242880"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Something left out of the bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Omitted {
    /// What.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The manifest, the first entry of every bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// `ondevice <version>`.
    pub generator: String,
    /// The limits in force.
    pub caps: BundleCaps,
    /// Every file, in archive order.
    pub files: Vec<ManifestFile>,
    /// What was left out.
    pub omitted: Vec<Omitted>,
}

/// What [`BundleWriter::write`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleSummary {
    /// The archive.
    pub path: PathBuf,
    /// Its size, compressed.
    pub size: u64,
    /// Hex SHA-256 of the archive.
    pub sha256: String,
    /// Files inside (besides the manifest).
    pub files: usize,
    /// Redactions made, all files together.
    pub redactions: usize,
}

struct Entry {
    meta: ManifestFile,
    data: Vec<u8>,
}

/// Collects redacted files, then writes the archive.
pub struct BundleWriter {
    redactor: Redactor,
    caps: BundleCaps,
    generator: String,
    entries: Vec<Entry>,
    omitted: Vec<Omitted>,
    total: u64,
    logs: u64,
    crashes: u64,
}

/// Which budget a file counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Reports and snapshots.
    General,
    /// Log tails.
    Logs,
    /// Crash reports.
    Crashes,
}

impl BundleWriter {
    /// A bundle redacted by `redactor`, limited by `caps`; `generator` names the program.
    pub fn new(redactor: Redactor, caps: BundleCaps, generator: impl Into<String>) -> BundleWriter {
        BundleWriter {
            redactor,
            caps,
            generator: generator.into(),
            entries: Vec::new(),
            omitted: Vec::new(),
            total: 0,
            logs: 0,
            crashes: 0,
        }
    }

    /// The redactor (for callers that redact something before adding it).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Adds a JSON document (pretty-printed), redacted.
    pub fn json(&mut self, name: &str, value: &serde_json::Value) {
        let mut counts = Redactions::new();
        let v = self.redactor.json(value, &mut counts);
        let text = serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
        self.push(name, text.into_bytes(), counts, None, Budget::General);
    }

    /// Adds a text, redacted.
    pub fn text(&mut self, name: &str, text: &str) {
        let mut counts = Redactions::new();
        let out = self.redactor.text(text, &mut counts);
        self.push(name, out.into_bytes(), counts, None, Budget::General);
    }

    /// Records something left out and why.
    pub fn omit(&mut self, name: &str, reason: impl Into<String>) {
        let reason = self.redactor.text(&reason.into(), &mut Redactions::new());
        self.omitted.push(Omitted { name: self.redactor.text(name, &mut Redactions::new()), reason });
    }

    /// Adds the tail of a log file (whole lines, at most `caps.per_log_file` bytes), each line
    /// redacted as a log line.
    pub fn log_tail(&mut self, name: &str, path: &Path, budget: Budget) {
        let left = match budget {
            Budget::Logs => self.caps.logs_total.saturating_sub(self.logs),
            Budget::Crashes => self.caps.crashes_total.saturating_sub(self.crashes),
            Budget::General => u64::MAX,
        };
        let max = self.caps.per_log_file.min(left);
        if max < 1024 {
            self.omit(name, "log budget used up by newer files");
            return;
        }
        match read_tail(path, max) {
            Ok((text, len)) => {
                let mut counts = Redactions::new();
                let mut out = String::with_capacity(text.len());
                for line in text.lines() {
                    out.push_str(&self.redactor.log_line(line, &mut counts));
                    out.push('\n');
                }
                let note = (len > max).then(|| format!("last {max} bytes of {len}"));
                self.push(name, out.into_bytes(), counts, note, budget);
            }
            Err(e) => self.omit(name, format!("unreadable: {}", e.kind())),
        }
    }

    /// Adds the log files of `dir` whose names pass `keep`, newest first, under `prefix/`, until
    /// the log budget is spent.
    pub fn logs_from_dir(&mut self, prefix: &str, dir: &Path, keep: impl Fn(&str) -> bool) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                keep(&name).then(|| (modified, name, e.path()))
            })
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        for (_, name, path) in files {
            self.log_tail(&format!("{prefix}/{name}"), &path, Budget::Logs);
        }
    }

    /// Adds a JSON crash report redacted with [`Redactor::report`] (its captured stderr line by
    /// line as log lines), within the crash-report budget.
    pub fn crash_report(&mut self, name: &str, path: &Path) {
        let left = self.caps.crashes_total.saturating_sub(self.crashes);
        let parsed = std::fs::metadata(path)
            .ok()
            .filter(|m| m.len() <= left.min(self.caps.per_log_file))
            .and_then(|_| std::fs::read(path).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        match parsed {
            Some(v) => {
                let mut counts = Redactions::new();
                let v = self.redactor.report(&v, &mut counts);
                let data = serde_json::to_vec_pretty(&v).unwrap_or_default();
                self.push(name, data, counts, None, Budget::Crashes);
            }
            // Not a JSON report (or too large): its tail, line by line.
            None => self.log_tail(name, path, Budget::Crashes),
        }
    }

    /// Adds a text file's tail, redacted line by line as log lines.
    pub fn file_text(&mut self, name: &str, path: &Path, budget: Budget) {
        self.log_tail(name, path, budget);
    }

    fn push(&mut self, name: &str, mut data: Vec<u8>, redacted: Redactions, mut note: Option<String>, budget: Budget) {
        let room = self.caps.total.saturating_sub(self.total);
        if room < 256 {
            self.omit(name, format!("bundle size cap of {} bytes reached", self.caps.total));
            return;
        }
        if data.len() as u64 > room {
            let full = data.len();
            data.truncate(room as usize);
            note = Some(format!("cut to {room} of {full} bytes by the bundle size cap"));
        }
        let size = data.len() as u64;
        self.total += size;
        match budget {
            Budget::Logs => self.logs += size,
            Budget::Crashes => self.crashes += size,
            Budget::General => {}
        }
        let sha256 = hex(&Sha256::digest(&data));
        self.entries.push(Entry { meta: ManifestFile { name: name.to_owned(), size, sha256, redacted, note }, data });
    }

    /// The manifest as it would be written now.
    pub fn manifest(&self, created_at: i64) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            created_at,
            generator: self.generator.clone(),
            caps: self.caps,
            files: self.entries.iter().map(|e| e.meta.clone()).collect(),
            omitted: self.omitted.clone(),
        }
    }

    /// Writes the archive to `out` (through a temporary file renamed into place; mode 0600).
    pub fn write(self, out: &Path) -> Result<BundleSummary, DiagError> {
        let created_at = now_unix();
        let manifest = self.manifest(created_at);
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|source| DiagError::Encode { what: "manifest", source })?;
        let tmp = out.with_extension("partial");
        let file = create_private(&tmp).map_err(DiagError::io(&tmp))?;
        let gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let io = DiagError::io(&tmp);
        let written = (|| {
            append(&mut tar, "manifest.json", &manifest_bytes, created_at)?;
            for e in &self.entries {
                append(&mut tar, &e.meta.name, &e.data, created_at)?;
            }
            let gz = tar.into_inner()?;
            let mut w = gz.finish()?;
            w.flush()?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        std::fs::rename(&tmp, out).map_err(DiagError::io(out))?;
        let (size, sha256) = hash_file(out).map_err(DiagError::io(out))?;
        Ok(BundleSummary {
            path: out.to_path_buf(),
            size,
            sha256,
            files: self.entries.len(),
            redactions: self.entries.iter().flat_map(|e| e.meta.redacted.values()).sum(),
        })
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8], mtime: i64) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

/// The last `max` bytes of a file, starting at a line boundary, and the file's length.
fn read_tail(path: &Path, max: u64) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(max).read_to_end(&mut buf)?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        // Drop the partial first line.
        text = text.split_once('\n').map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    }
    Ok((text, len))
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Size and hex SHA-256 of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex(&h.finalize())))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(path: &Path) -> Vec<(String, Vec<u8>)> {
        let f = std::fs::File::open(path).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn manifest_lists_each_file_with_size_hash_and_redactions() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, "line one Bearer abcdefghijkl\n").unwrap();
        let mut w = BundleWriter::new(Redactor::new(), BundleCaps::default(), "ondevice test");
        w.json("status.json", &serde_json::json!({"ok": true, "token": "zzzzzzzzz"}));
        w.log_tail("logs/a.log", &log, Budget::Logs);
        w.log_tail("logs/missing.log", &dir.path().join("missing"), Budget::Logs);
        let out = dir.path().join("b.tar.gz");
        let summary = w.write(&out).unwrap();
        assert_eq!(summary.files, 2);
        assert_eq!(summary.redactions, 2);
        let files = unpack(&out);
        assert_eq!(files[0].0, "manifest.json");
        let manifest: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        for (i, (name, data)) in files.iter().enumerate().skip(1) {
            let m = &manifest["files"][i - 1];
            assert_eq!(m["name"], name.as_str());
            assert_eq!(m["size"], data.len());
            assert_eq!(m["sha256"], hex(&Sha256::digest(data)));
        }
        assert_eq!(manifest["files"][1]["redacted"]["token"], 1);
        assert_eq!(manifest["omitted"][0]["name"], "logs/missing.log");
    }

    #[test]
    fn logs_are_tails_within_budgets() {
        let dir = tempfile::tempdir().unwrap();
        let caps = BundleCaps { per_log_file: 4096, logs_total: 10_000, crashes_total: 4096, total: 1 << 20 };
        for i in 0..5 {
            let body: String = (0..1000).map(|n| format!("file {i} line {n}\n")).collect();
            std::fs::write(dir.path().join(format!("ondevice.{i}.log")), body).unwrap();
        }
        let mut w = BundleWriter::new(Redactor::new(), caps, "t");
        w.logs_from_dir("logs", dir.path(), |n| n.ends_with(".log"));
        let m = w.manifest(0);
        let total: u64 = m.files.iter().map(|f| f.size).sum();
        assert!(total <= caps.logs_total, "{total}");
        assert!(m.files.iter().all(|f| f.size <= caps.per_log_file));
        assert!(m.files[0].note.as_deref().unwrap().starts_with("last 4096 bytes"));
        assert!(!m.omitted.is_empty(), "older files beyond the budget are named as omitted");
    }
}
