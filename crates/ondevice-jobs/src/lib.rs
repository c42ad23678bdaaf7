//! Durable background jobs of any kind: pulls, quantizations, indexing, diagnostics bundles.
//!
//! A kind ([`JobKind`]) declares a typed spec, a dedup key and a [`ResourceClass`]; the queue
//! ([`Jobs`]) persists every job through `ondevice-store`, runs at most the class's limit at once,
//! and hands each run a [`JobContext`]: progress (`done`/`total`/`unit` + a message) for watchers,
//! an opaque checkpoint persisted for resume, a kind-specific detail, and a cancel token that tells
//! a user's cancel ([`CancelReason::User`]) from a daemon shutdown ([`CancelReason::Shutdown`]).
//!
//! A job that stops for a shutdown (or whose daemon was killed) stays `queued`/`running` in the
//! table and starts again, from its last checkpoint, when the next daemon starts. Finished jobs
//! are pruned by age and count. The edge reads jobs through the object-safe [`JobService`].

#![warn(missing_docs)]

mod context;
mod kind;
mod queue;
mod types;

pub use context::{CancelReason, JobContext};
pub use kind::{JobFailure, JobKind, ResourceClass};
pub use queue::{JobService, Jobs, JobsBuilder, JobsConfig};
pub use types::{JobError, JobFilter, JobSnapshot, JobState, Progress};

/// A boxed future, for the object-safe async methods of [`JobService`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
