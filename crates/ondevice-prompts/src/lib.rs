//! Prompt packs: versioned, signed, sandboxed prompt templates that fit a model's context.
//!
//! A pack is a directory with a `pack.toml` manifest ([`pack`]), templates per role and example
//! tests. Templates render in one hardened minijinja environment ([`sandbox`], shared with model
//! chat templates) and are checked by a static [`lint`] when published. Published versions are
//! immutable and content-addressed in the registry's blob store under a GC root ([`library`]);
//! labels such as `production` are movable pointers; requests name `name`, `name@1.2.0`,
//! `name@^1.2` or `name@label` ([`reference`]). Versions can be compared ([`diff`]), moved between
//! machines as archives with an optional ed25519 signature ([`archive`]) and rendered to fit a
//! token budget counted by the target model's tokenizer ([`compress`]). [`service`] is the contract
//! the daemon's edge holds.

#![warn(missing_docs)]

pub mod archive;
pub mod compress;
pub mod diff;
pub mod library;
pub mod lint;
pub mod pack;
pub mod reference;
pub mod render;
pub mod sandbox;
pub mod service;

pub use archive::{Archive, SigningKey, VerifyingKey};
pub use compress::{Budget, CompressReport, Embedder, TokenCounter};
pub use library::{Library, PackSummary, VersionInfo};
pub use lint::{Finding, Severity};
pub use pack::{Manifest, Pack};
pub use reference::{PackRef, Selector};
pub use render::{Message, Rendered};
pub use service::{PromptService, Prompts, RenderRequest, RenderResult};

use std::path::PathBuf;

/// A prompt pack failure. Messages are lowercase and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The pack (manifest, template file, test file or archive) is malformed.
    #[error("invalid prompt pack{}: {reason}", at(.path))]
    InvalidPack {
        /// The file concerned, when there is one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// A pack name or reference is malformed.
    #[error("invalid prompt reference {reference:?}: {reason}")]
    InvalidReference {
        /// What was given (at most 100 characters of it).
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A template failed to compile or render in the sandbox (syntax error, undefined variable,
    /// out of fuel, output too large, recursion too deep, a refused construct).
    #[error("template {template} failed: {reason}")]
    Template {
        /// Which template (`messages[0] (system)`, a test name, ...).
        template: String,
        /// What went wrong.
        reason: String,
    },
    /// A variable is missing, unknown or of the wrong type.
    #[error("variable {name:?}: {reason}")]
    Variable {
        /// The variable.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The lint refused the pack at publish time.
    #[error("the pack has {} lint error(s): {}; fix them and publish again", .findings.len(), summary(.findings))]
    Lint {
        /// The errors found.
        findings: Vec<Finding>,
    },
    /// No pack, version or label matches.
    #[error("prompt pack {reference} not found: see `ondevice prompts list`")]
    NotFound {
        /// What was asked for.
        reference: String,
    },
    /// The version is already published with other content (versions are immutable).
    #[error(
        "{name}@{version} is already published with different content: versions are immutable, bump the version in pack.toml"
    )]
    VersionExists {
        /// The pack.
        name: String,
        /// The version.
        version: String,
    },
    /// The archive's signature is missing, invalid or made by a key that is not trusted.
    #[error("signature check failed: {reason}")]
    Signature {
        /// What is wrong.
        reason: String,
    },
    /// The budget cannot be met even with every compressible section emptied.
    #[error(
        "the prompt needs at least {minimum} tokens but the budget is {budget}: raise the budget or mark more variables compressible"
    )]
    BudgetTooSmall {
        /// The budget asked for.
        budget: usize,
        /// Tokens left after compressing everything allowed.
        minimum: usize,
    },
    /// A pack test's render differs from its expectation.
    #[error("test {test} failed: {reason}")]
    TestFailed {
        /// The test.
        test: String,
        /// What differs.
        reason: String,
    },
    /// Counting tokens or embedding needs a model, and that failed.
    #[error("model {model}: {source}")]
    Runtime {
        /// The model.
        model: String,
        /// The runtime's error.
        source: ondevice_runtime::RuntimeError,
    },
    /// A render needs a model but none is available (no inference service).
    #[error("{0}")]
    Unavailable(String),
    /// The registry (blob store, GC roots) failed.
    #[error(transparent)]
    Registry(#[from] ondevice_registry::RegistryError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] ondevice_store::StoreError),
    /// A file cannot be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn at(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
}

fn summary(findings: &[Finding]) -> String {
    let mut parts: Vec<String> = findings.iter().take(3).map(|f| f.to_string()).collect();
    if findings.len() > 3 {
        parts.push(format!("and {} more", findings.len() - 3));
    }
    parts.join("; ")
}

impl PromptError {
    pub(crate) fn invalid(path: Option<&std::path::Path>, reason: impl Into<String>) -> Self {
        PromptError::InvalidPack { path: path.map(|p| p.to_path_buf()), reason: reason.into() }
    }
}
