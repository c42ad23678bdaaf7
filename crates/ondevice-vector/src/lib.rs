//! The vector store contract of ondevice.
//!
//! - [`VectorBackend`]: where collections live. Two implementations, siblings that never depend on
//!   each other: `ondevice-vector-embedded` (SQLite through `ondevice-store` as the source of
//!   truth + an HNSW graph file per collection) and `ondevice-vector-pgvector` (PostgreSQL).
//! - Domain types ([`CollectionSpec`], [`DocumentWrite`], [`Filter`], [`Hit`]) and the typed
//!   [`VectorError`] the server maps to statuses.
//! - [`Collections`] ([`VectorService`]): the service the daemon's surfaces call: chunking
//!   (`chunk`), embeddings through the daemon's `Inference` (`embed`), and the `index` and
//!   `reembed` job kinds (`job`).
//! - `testing` (feature `testing`): the contract test suite both backends run.

#![warn(missing_docs)]

mod backend;
pub mod chunk;
pub mod embed;
mod error;
pub mod job;
pub mod metrics;
mod service;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use backend::VectorBackend;
pub use error::VectorError;
pub use service::{
    Collections, CreateCollection, DocumentInput, QueryInput, QueryRequest, UpsertOutcome, VectorService, VectorStats,
    content_hash,
};
pub use types::*;

/// A boxed future, for the object-safe async methods of the contracts.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Checks a collection name: 1-64 characters of `A-Z a-z 0-9 _ . -`, starting with a letter or digit.
pub fn validate_collection_name(name: &str) -> Result<(), VectorError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VectorError::InvalidName {
            what: "collection name",
            value: name.chars().take(80).collect(),
            rule: "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        })
    }
}

/// Checks a name a backend stores: a collection name, or an internal one starting with `_` (the
/// re-embed job's shadow collections, which no user name can collide with).
pub fn validate_stored_name(name: &str) -> Result<(), VectorError> {
    match name.strip_prefix('_') {
        Some(rest) if !rest.is_empty() && rest.len() < 64 => validate_collection_name(rest),
        _ => validate_collection_name(name),
    }
}

/// Checks a document id: 1-1024 bytes, no control characters.
pub fn validate_document_id(id: &str) -> Result<(), VectorError> {
    if !id.is_empty() && id.len() <= 1024 && !id.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(VectorError::InvalidName {
            what: "document id",
            value: id.chars().take(80).collect(),
            rule: "use 1-1024 bytes without control characters",
        })
    }
}

/// Checks a metadata key used in a filter: 1-64 characters of `A-Z a-z 0-9 _ -`.
pub fn validate_metadata_key(key: &str) -> Result<(), VectorError> {
    if !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(VectorError::InvalidName {
            what: "metadata key",
            value: key.chars().take(80).collect(),
            rule: "filter keys are 1-64 letters, digits, '_' or '-'",
        })
    }
}

/// Checks a query against a collection: `k` in 1..=1000 and the vector's length.
pub fn validate_query(spec: &CollectionSpec, query: &VectorQuery) -> Result<(), VectorError> {
    if query.k == 0 || query.k > 1000 {
        return Err(VectorError::InvalidRequest(format!("top_k {} is out of range: use 1 to 1000", query.k)));
    }
    check_vector(spec, &query.vector)
}

/// Checks a vector's length and that every element is finite.
pub fn check_vector(spec: &CollectionSpec, v: &[f32]) -> Result<(), VectorError> {
    if v.len() != spec.dimension as usize {
        return Err(VectorError::DimensionMismatch {
            collection: spec.name.clone(),
            expected: spec.dimension as usize,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(VectorError::InvalidRequest("vectors must hold finite numbers".into()));
    }
    Ok(())
}
