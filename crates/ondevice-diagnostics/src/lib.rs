//! Diagnostics for support without giving anything away: a redacted bundle (`.tar.gz` with a
//! `manifest.json` naming each file, its size, SHA-256 and what was redacted), doctor checks each
//! with its fix, and crash reports (panics of the daemon and its workers, native crashes of
//! workers seen by the supervisor).
//!
//! - [`redact`]: the [`Redactor`] every text goes through before it enters a bundle: planted
//!   secrets (literal values), API keys and tokens, URL credentials, `key = value` secrets, the
//!   user's home path, and prompt/output fields of log lines.
//! - [`bundle`]: [`BundleWriter`] assembles the archive under fixed caps ([`BundleCaps`]).
//! - [`system`]: OS, kernel, CPU, memory, disks and GPUs via `sysinfo` (and the DRM class on Linux).
//! - [`crash`]: [`CrashStore`] (size-capped, rotated reports under `$ONDEVICE_HOME/crashes`), the
//!   panic hook, and the marker a sandboxed worker prints so the daemon can file its report.
//! - [`doctor`]: the check result type and the checks that need no daemon internals.
//! - [`job`]: the `diagnostics` job kind whose result is a bundle.
//! - [`telemetry`]: opt-in, versioned consent, the anonymous report, its outbox and uploader.
//! - [`inspect`]: [`inspect::InspectService`], the read-only doctor and telemetry views the edge
//!   serves (`/api/v1/diagnostics/doctor`, `/api/v1/telemetry`), implemented by the binary.

#![warn(missing_docs)]

pub mod bundle;
pub mod crash;
pub mod doctor;
pub mod inspect;
pub mod job;
pub mod redact;
pub mod system;
pub mod telemetry;

pub use bundle::{BundleCaps, BundleSummary, BundleWriter};
pub use crash::{CrashReport, CrashStore};
pub use doctor::{Check, CheckStatus};
pub use redact::Redactor;

use std::path::PathBuf;

/// A diagnostics failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// A file or directory cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A report cannot be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// No bundle with this name exists (bundles are kept for a while, then removed).
    #[error("no diagnostics bundle {0}: create one with `ondevice diag bundle`")]
    NoBundle(String),
    /// The store (telemetry consent, outbox, registry) cannot be read.
    #[error(transparent)]
    Store(#[from] ondevice_store::StoreError),
    /// A check could not run to completion (its task failed).
    #[error("the doctor checks failed: {0}")]
    Checks(String),
}

impl DiagError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DiagError {
        let path = path.into();
        move |source| DiagError::Io { path, source }
    }
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
