//! The storage contract every backend implements (embedded SQLite + HNSW file, PostgreSQL +
//! pgvector). Backends never depend on each other; the collection service and the shared contract
//! tests (`testing`) talk to them only through this trait.

use std::collections::HashMap;

use crate::{
    BoxFuture, CollectionRecord, CollectionSpec, DocumentWrite, Hit, StoredDocument, VectorError, VectorQuery,
};

/// A place collections live.
pub trait VectorBackend: Send + Sync {
    /// `embedded` or `pgvector`.
    fn name(&self) -> &'static str;

    /// Creates an empty collection; [`VectorError::Exists`] when the name is taken.
    fn create_collection<'a>(
        &'a self,
        spec: &'a CollectionSpec,
    ) -> BoxFuture<'a, Result<CollectionRecord, VectorError>>;

    /// One collection, `None` when absent.
    fn collection<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<CollectionRecord>, VectorError>>;

    /// Every collection, by name.
    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionRecord>, VectorError>>;

    /// Removes a collection with its documents and index; `false` when it did not exist.
    fn delete_collection<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, VectorError>>;

    /// Makes `from` (a fully built collection) take the place of `to`: afterwards `to` has
    /// `from`'s settings and content and `from` no longer exists. Queries on `to` answer from the
    /// old content until the switch, which is atomic. Used by the re-embed job.
    fn replace_collection<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), VectorError>>;

    /// Stores documents; each replaces every chunk of the document with the same id. The write is
    /// durable when this returns (it survives `kill -9`).
    fn upsert<'a>(&'a self, collection: &'a str, docs: Vec<DocumentWrite>) -> BoxFuture<'a, Result<(), VectorError>>;

    /// Deletes documents by id; returns how many existed.
    fn delete_documents<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, VectorError>>;

    /// The stored content hash of each of `ids` that exists.
    fn content_hashes<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, VectorError>>;

    /// Up to `limit` documents with ids after `after`, in id order (for re-embedding).
    fn documents_page<'a>(
        &'a self,
        collection: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredDocument>, VectorError>>;

    /// The `k` nearest chunks passing the filter, closest first. When at least `k` chunks pass
    /// the filter, exactly `k` come back.
    fn query<'a>(&'a self, collection: &'a str, query: &'a VectorQuery)
    -> BoxFuture<'a, Result<Vec<Hit>, VectorError>>;

    /// Persists in-memory index state (the embedded backend saves its index files); called at
    /// shutdown and when an index job ends. Writes are durable without it.
    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>>;
}
