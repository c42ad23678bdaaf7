//! The vector store's typed errors. The server maps each variant to an HTTP status and a gRPC code
//! in one exhaustive `match` (`ondevice-server/src/error.rs`).

use ondevice_runtime::RuntimeError;

/// What went wrong in a collection operation.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A collection name, document id or metadata key is not acceptable.
    #[error("invalid {what} {value:?}: {rule}")]
    InvalidName {
        /// `collection name`, `document id`, `metadata key`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        rule: &'static str,
    },
    /// A request field is out of range or inconsistent.
    #[error("{0}")]
    InvalidRequest(String),
    /// No collection has this name.
    #[error("collection {0:?} not found: list collections with `ondevice collections list`")]
    NotFound(String),
    /// A collection with this name exists already.
    #[error("collection {0:?} already exists: choose another name or remove it with `ondevice collections rm`")]
    Exists(String),
    /// A vector's length differs from the collection's dimension.
    #[error("collection {collection:?} holds {expected}-dimensional vectors, got {got}")]
    DimensionMismatch {
        /// The collection.
        collection: String,
        /// Its dimension.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A file's format cannot be indexed.
    #[error("{path}: {detail}")]
    UnsupportedFormat {
        /// The file (or document id).
        path: String,
        /// What is unsupported and what is.
        detail: String,
    },
    /// A text is longer than the collection's max input tokens and its policy is `error`.
    #[error(
        "input of {tokens} tokens exceeds the collection's max_input_tokens {max}: shorten it or create the collection with token_policy = \"truncate\""
    )]
    InputTooLong {
        /// Tokens in the input.
        tokens: usize,
        /// The collection's limit.
        max: usize,
    },
    /// The embedding model failed or is unknown.
    #[error("embedding model {model}: {source}")]
    Embedding {
        /// The model.
        model: String,
        /// What the runtime said.
        #[source]
        source: RuntimeError,
    },
    /// The model a collection was built with now names other weights.
    #[error(
        "collection {collection:?} was built with {model} at {pinned}, but {model} is now {current}: re-embed it with `ondevice collections set-model {collection} {model}` or name the pinned digest"
    )]
    ModelChanged {
        /// The collection.
        collection: String,
        /// The model name.
        model: String,
        /// The digest the collection pinned.
        pinned: String,
        /// The digest the name resolves to now.
        current: String,
    },
    /// The collection's backend is not configured in this daemon.
    #[error("vector backend {0:?} is not configured: set [vector] backend and url in the config")]
    BackendUnavailable(String),
    /// The backend's storage failed (SQLite, the index file, PostgreSQL).
    #[error("{backend} vector store: {source}")]
    Backend {
        /// `embedded` or `pgvector`.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading a file to index failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An index request names a path outside the directories the daemon may read.
    #[error(
        "{path} is outside the directories the daemon may index ([vector] index_roots{roots}): add its directory to index_roots, or run `ondevice index` on the machine holding the files, which sends their content"
    )]
    PathNotAllowed {
        /// The path as given.
        path: String,
        /// `" = [...]"` or `" is empty"`.
        roots: String,
    },
    /// The job queue refused or lost the job.
    #[error(transparent)]
    Jobs(#[from] ondevice_jobs::JobError),
}

impl VectorError {
    /// A backend failure.
    pub fn backend(backend: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        VectorError::Backend { backend, source: source.into() }
    }
}
