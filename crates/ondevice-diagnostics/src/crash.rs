//! Crash reports: one JSON file each under `$ONDEVICE_HOME/crashes`, at most
//! [`CrashStore::MAX_REPORTS`] kept (oldest removed first), each at most
//! [`CrashStore::MAX_REPORT_BYTES`] (backtrace and stderr tail cut to fit).
//!
//! Three sources:
//! - a panic in the daemon: [`install_panic_hook`] with a [`CrashStore`] writes the report;
//! - a panic in a worker: the worker is sandboxed (it cannot write to the home), so its hook
//!   prints the report on stderr as one line starting with [`MARKER`]; the supervisor captures
//!   stderr into the worker's log, and the daemon files the report when the worker exits;
//! - a native crash of a worker (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE inside llama.cpp): the
//!   daemon builds the report from the supervisor's exit information (the signal) and the tail of
//!   the worker's stderr, tagged with the build and the model digest ([`from_worker_exit`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};

use crate::{DiagError, now_unix};

/// The prefix of the line a worker prints on stderr when it panics.
pub const MARKER: &str = "ONDEVICE-CRASH-REPORT ";

/// The build a report was made by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTag {
    /// `ondevice` version.
    pub version: String,
    /// Source commit, when known.
    pub commit: Option<String>,
    /// The x86-64 level of the engine kernels (`x86-64-v3`, `native`, ...).
    pub engine_cpu: Option<String>,
}

/// One crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashReport {
    /// Random id (also the file name).
    pub id: String,
    /// Unix seconds.
    pub at: i64,
    /// `daemon` or `worker`.
    pub process: String,
    /// The worker's name, for worker crashes.
    pub worker: Option<String>,
    /// `panic`, `signal` or `exit`.
    pub kind: String,
    /// Signal number, for `signal`.
    pub signal: Option<i32>,
    /// Signal name (`SIGSEGV`).
    pub signal_name: Option<String>,
    /// Exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// The panic message, or what the signal means.
    pub message: String,
    /// `file:line:column` of a panic.
    pub location: Option<String>,
    /// The thread that panicked.
    pub thread: Option<String>,
    /// The backtrace, when one was captured.
    pub backtrace: Option<String>,
    /// The last lines the worker wrote on stderr.
    pub stderr_tail: Option<String>,
    /// The build.
    pub build: BuildTag,
    /// The digest of the model the worker served.
    pub model_digest: Option<String>,
    /// Whether the report was cut to fit the size cap.
    #[serde(default)]
    pub truncated: bool,
}

impl CrashReport {
    /// A one-line summary for lists.
    pub fn summary(&self) -> String {
        let who = self.worker.as_deref().map_or_else(|| self.process.clone(), |w| format!("worker {w}"));
        let what = match (&self.signal_name, self.exit_code) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => format!("exit {c}"),
            (None, None) => self.kind.clone(),
        };
        format!("{who}: {what}: {}", self.message.lines().next().unwrap_or(""))
    }
}

/// The crash report directory.
#[derive(Debug, Clone)]
pub struct CrashStore {
    dir: PathBuf,
}

impl CrashStore {
    /// Reports kept; older ones are removed when a new one is written.
    pub const MAX_REPORTS: usize = 20;
    /// Largest report file.
    pub const MAX_REPORT_BYTES: usize = 64 * 1024;

    /// The store under `home` (`home/crashes`).
    pub fn new(home: &Path) -> CrashStore {
        CrashStore { dir: home.join("crashes") }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a report with this id exists.
    pub fn contains(&self, id: &str) -> bool {
        valid_id(id) && self.path_of(id).is_file()
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("crash-{id}.json"))
    }

    /// Writes a report (cut to the size cap), then removes the oldest beyond the count cap.
    pub fn write(&self, report: &CrashReport) -> Result<PathBuf, DiagError> {
        if !valid_id(&report.id) {
            return Err(DiagError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad crash report id"),
            });
        }
        create_private_dir(&self.dir).map_err(DiagError::io(&self.dir))?;
        let bytes = encode_capped(report)?;
        let path = self.path_of(&report.id);
        let tmp = path.with_extension("partial");
        write_private(&tmp, &bytes).map_err(DiagError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(DiagError::io(&path))?;
        self.rotate();
        Ok(path)
    }

    /// Every report, newest first; unreadable files are skipped.
    pub fn list(&self) -> Vec<CrashReport> {
        let mut out: Vec<CrashReport> = self
            .files()
            .into_iter()
            .filter_map(|p| std::fs::read(&p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.id.cmp(&a.id)));
        out
    }

    /// Report files, newest first (by modification time).
    pub fn files(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("crash-") && n.ends_with(".json")
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        files.into_iter().map(|(_, p)| p).collect()
    }

    fn rotate(&self) {
        for old in self.files().into_iter().skip(Self::MAX_REPORTS) {
            let _ = std::fs::remove_file(old);
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Encodes the report, cutting backtrace and stderr tail (keeping their ends) until it fits.
fn encode_capped(report: &CrashReport) -> Result<Vec<u8>, DiagError> {
    let enc = |r: &CrashReport| {
        serde_json::to_vec_pretty(r).map_err(|source| DiagError::Encode { what: "crash report", source })
    };
    let mut r = report.clone();
    let mut bytes = enc(&r)?;
    let mut keep = CrashStore::MAX_REPORT_BYTES / 2;
    while bytes.len() > CrashStore::MAX_REPORT_BYTES && keep > 64 {
        r.truncated = true;
        r.backtrace = r.backtrace.map(|b| head(&b, keep));
        r.stderr_tail = r.stderr_tail.map(|s| tail(&s, keep / 2));
        r.message = head(&r.message, keep / 4);
        bytes = enc(&r)?;
        keep /= 2;
    }
    Ok(bytes)
}

fn head(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... cut]", &s[..end])
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[cut ...]\n{}", &s[start..])
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A random id for a report.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // No OS randomness needed: time plus the process id and a counter are unique enough for file names.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mix = n ^ (u64::from(std::process::id()) << 40) ^ c.rotate_left(20);
    b.copy_from_slice(&mix.to_be_bytes());
    crate::bundle::hex(&b)
}

/// Where the panic hook sends its report.
#[derive(Debug, Clone)]
pub enum HookTarget {
    /// Write a file (the daemon).
    Store(CrashStore),
    /// Print one [`MARKER`] line on stderr (a sandboxed worker).
    Stderr,
}

/// Installs a panic hook that records every panic (then runs the previous hook, which prints the
/// usual message). `process` is `daemon` or `worker`.
pub fn install_panic_hook(target: HookTarget, process: &'static str, build: BuildTag) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-text payload".to_owned());
        let report = CrashReport {
            id: new_id(),
            at: now_unix(),
            process: process.to_owned(),
            worker: None,
            kind: "panic".into(),
            signal: None,
            signal_name: None,
            exit_code: None,
            message,
            location: info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
            thread: Some(std::thread::current().name().unwrap_or("unnamed").to_owned()),
            backtrace: Some(std::backtrace::Backtrace::force_capture().to_string()),
            stderr_tail: None,
            build: build.clone(),
            model_digest: None,
            truncated: false,
        };
        match &target {
            HookTarget::Store(store) => {
                if let Err(e) = store.write(&report) {
                    eprintln!("cannot write the crash report: {e}");
                }
            }
            HookTarget::Stderr => {
                let mut r = report;
                // One line, bounded: the daemon reads it from the log tail.
                r.backtrace = r.backtrace.map(|b| head(&b, 16 * 1024));
                if let Ok(line) = serde_json::to_string(&r) {
                    eprintln!("{MARKER}{line}");
                }
            }
        }
        previous(info);
    }));
}

static WORKER_MODELS: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Remembers which model digest a worker serves, to tag its crash reports.
pub fn tag_worker_model(worker: &str, digest: &str) {
    WORKER_MODELS.lock().unwrap_or_else(|e| e.into_inner()).insert(worker.to_owned(), digest.to_owned());
}

/// The model digest recorded for a worker.
pub fn worker_model(worker: &str) -> Option<String> {
    WORKER_MODELS.lock().unwrap_or_else(|e| e.into_inner()).get(worker).cloned()
}

/// The digest in a blob path (`…/blobs/sha256-<hex>` → `sha256:<hex>`).
pub fn digest_of_blob_path(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_prefix("sha256-")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// Signals that mean the process crashed (as opposed to being stopped).
pub fn crash_signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        11 => "SIGSEGV",
        31 => "SIGSYS",
        _ => return None,
    })
}

/// How a worker ended, as the supervisor saw it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerExit {
    /// Exit code.
    pub code: Option<i32>,
    /// Signal.
    pub signal: Option<i32>,
    /// Whether the supervisor itself ended it (stop, restart, failed probe).
    pub killed_by_supervisor: bool,
}

/// The report for a worker that ended, or `None` when the end was not a crash. `log_tail` is the
/// end of the worker's log: a panic marker in it (not yet filed, see `filed`) becomes the report;
/// otherwise a crash signal, or exit code 101 (a Rust panic), gives a report with the stderr tail.
pub fn from_worker_exit(
    worker: &str,
    exit: WorkerExit,
    log_tail: &str,
    build: &BuildTag,
    filed: impl Fn(&str) -> bool,
) -> Option<CrashReport> {
    let marker = log_tail
        .lines()
        .rev()
        .filter_map(|l| l.find(MARKER).map(|i| &l[i + MARKER.len()..]))
        .find_map(|json| serde_json::from_str::<CrashReport>(json).ok())
        .filter(|r| valid_id(&r.id) && !filed(&r.id));
    let signal_name = exit.signal.and_then(crash_signal_name);
    if marker.is_none() && (exit.killed_by_supervisor || (signal_name.is_none() && exit.code != Some(101))) {
        return None;
    }
    let stderr_tail: String = {
        let lines: Vec<&str> = log_tail.lines().filter(|l| !l.contains(MARKER)).collect();
        let start = lines.len().saturating_sub(60);
        lines[start..].join("\n")
    };
    let mut r = marker.unwrap_or_else(|| CrashReport {
        id: new_id(),
        at: now_unix(),
        process: "worker".into(),
        worker: None,
        kind: if signal_name.is_some() { "signal".into() } else { "exit".into() },
        signal: None,
        signal_name: None,
        exit_code: None,
        message: match signal_name {
            Some(s) => format!("the worker was killed by {s} (a crash in native code, such as llama.cpp)"),
            None => "the worker exited with code 101 (a Rust panic) without a report".to_owned(),
        },
        location: None,
        thread: None,
        backtrace: None,
        stderr_tail: None,
        build: build.clone(),
        model_digest: None,
        truncated: false,
    });
    r.worker = Some(worker.to_owned());
    r.signal = exit.signal;
    r.signal_name = signal_name.map(str::to_owned);
    r.exit_code = exit.code;
    r.stderr_tail = Some(tail(&stderr_tail, 8 * 1024));
    r.model_digest = worker_model(worker);
    Some(r)
}

/// The last `max` bytes of a file (lossy UTF-8), for reading a worker's log tail.
pub fn read_log_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> BuildTag {
        BuildTag { version: "0.1.0".into(), commit: Some("abc".into()), engine_cpu: Some("x86-64-v3".into()) }
    }

    #[test]
    fn reports_are_capped_and_rotated() {
        let home = tempfile::tempdir().unwrap();
        let store = CrashStore::new(home.path());
        for i in 0..(CrashStore::MAX_REPORTS + 5) {
            let r = from_worker_exit(
                "w",
                WorkerExit { code: None, signal: Some(11), killed_by_supervisor: false },
                &"x".repeat(200_000),
                &build(),
                |_| false,
            )
            .unwrap();
            let r = CrashReport { backtrace: Some("b".repeat(500_000)), at: i as i64, ..r };
            let p = store.write(&r).unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() <= CrashStore::MAX_REPORT_BYTES as u64);
        }
        let list = store.list();
        assert_eq!(list.len(), CrashStore::MAX_REPORTS);
        assert!(list.iter().all(|r| r.truncated && r.signal_name.as_deref() == Some("SIGSEGV")));
    }

    #[test]
    fn worker_exits_become_reports_only_for_crashes() {
        let b = build();
        let exit = |code, signal, by| WorkerExit { code, signal, killed_by_supervisor: by };
        tag_worker_model("engine-x", "sha256:00");
        let r =
            from_worker_exit("engine-x", exit(None, Some(6), false), "[stderr] GGML_ASSERT failed\n", &b, |_| false)
                .unwrap();
        assert_eq!(r.signal_name.as_deref(), Some("SIGABRT"));
        assert_eq!(r.model_digest.as_deref(), Some("sha256:00"));
        assert!(r.stderr_tail.unwrap().contains("GGML_ASSERT"));
        assert!(from_worker_exit("w", exit(Some(0), None, false), "", &b, |_| false).is_none());
        assert!(from_worker_exit("w", exit(None, Some(15), false), "", &b, |_| false).is_none());
        assert!(from_worker_exit("w", exit(None, Some(9), true), "", &b, |_| false).is_none());
        // A panic marker becomes the report, once.
        let panic = CrashReport {
            message: "boom".into(),
            ..from_worker_exit("w", exit(Some(101), None, false), "", &b, |_| false).unwrap()
        };
        let log = format!("[stderr] {MARKER}{}\n[stderr] thread panicked\n", serde_json::to_string(&panic).unwrap());
        let r = from_worker_exit("w", exit(Some(101), None, false), &log, &b, |_| false).unwrap();
        assert_eq!((r.id.as_str(), r.message.as_str()), (panic.id.as_str(), "boom"));
        assert!(!r.stderr_tail.unwrap().contains(MARKER));
        let again = from_worker_exit("w", exit(Some(0), None, false), &log, &b, |id| id == panic.id);
        assert!(again.is_none());
    }

    #[test]
    fn blob_paths_name_their_digest() {
        let hex = "a".repeat(64);
        assert_eq!(digest_of_blob_path(Path::new(&format!("/h/blobs/sha256-{hex}"))), Some(format!("sha256:{hex}")));
        assert_eq!(digest_of_blob_path(Path::new("/tmp/model.gguf")), None);
    }
}
