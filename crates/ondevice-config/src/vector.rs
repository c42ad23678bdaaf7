//! `[vector]`: where vector collections live by default. `embedded` (the default) keeps them in
//! `$ONDEVICE_HOME` (SQLite + HNSW index files, no setup); `pgvector` keeps them in PostgreSQL with
//! the pgvector extension, reached through a connection string given as a secret reference.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// Which backend new collections use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VectorBackendKind {
    /// In `$ONDEVICE_HOME`: SQLite as the source of truth and an HNSW index file per collection.
    #[default]
    Embedded,
    /// PostgreSQL with the pgvector extension (`url` required).
    Pgvector,
}

impl VectorBackendKind {
    /// `embedded` or `pgvector`.
    pub fn as_str(self) -> &'static str {
        match self {
            VectorBackendKind::Embedded => "embedded",
            VectorBackendKind::Pgvector => "pgvector",
        }
    }
}

/// `[vector]`: the vector store.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VectorSettings {
    /// The backend new collections use unless `collections create --backend` says otherwise.
    /// Collections of the embedded backend stay available either way.
    pub backend: VectorBackendKind,
    /// PostgreSQL connection string for the `pgvector` backend, as `"env:VARIABLE"` or
    /// `"file:/path"` (libpq form such as `host=/run/postgresql dbname=ondevice user=me`, or a
    /// `postgresql://` URL). Needed when `backend = "pgvector"`; when set with the embedded
    /// default, pgvector collections can still be created with `--backend pgvector`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretRef>,
    /// Directories the daemon may read files from for `index` jobs (absolute paths). A path an
    /// index request names must lie inside one of them after symlinks are resolved; none by
    /// default, so no API key can make the daemon read files. `ondevice index` reads files outside
    /// these roots itself and sends their content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub index_roots: Vec<std::path::PathBuf>,
}

impl VectorSettings {
    /// Checks values that single fields cannot express; errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.backend == VectorBackendKind::Pgvector && self.url.is_none() {
            return Err((
                "vector.url",
                "backend \"pgvector\" needs url = \"env:VARIABLE\" naming a PostgreSQL connection string".to_owned(),
            ));
        }
        if let Some(r) = self.index_roots.iter().find(|r| !r.is_absolute()) {
            return Err((
                "vector.index_roots",
                format!("{} is not an absolute path: name directories from /", r.display()),
            ));
        }
        Ok(())
    }
}
