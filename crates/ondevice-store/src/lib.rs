//! The only crate that opens SQLite. It owns the database file under `$ONDEVICE_HOME`, its
//! schema migrations, and the persistence other crates need: API keys (auth's `KeyStore`) and the
//! model registry's `models` and `blobs` tables (`models.rs`), its GC roots (`roots.rs`), its
//! background jobs (`jobs.rs`), the embedded vector store's tables (`vector.rs`) and prompt pack
//! versions and labels (`prompts.rs`), model provenance (quantization receipts, `provenance.rs`), the
//! egress ledger (`egress.rs`) and telemetry's consent and outbox (`telemetry.rs`).

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ondevice_auth::{KeyId, KeyRecord, KeyStore, Scopes, SecretHash, StoreFailure};
use rusqlite::{Connection, OptionalExtension, params};

mod egress;
mod jobs;
mod models;
mod prompts;
mod provenance;
mod read;
mod roots;
mod telemetry;
mod vector;

pub use egress::{EGRESS_MAX_AGE_S, EGRESS_MAX_ROWS, EgressRow};
pub use jobs::{JobProgressRow, JobRow};
pub use models::{BlobRow, ModelRow};
pub use prompts::{PromptLabelMove, PromptLabelRow, PromptVersionRow};
pub use provenance::ProvenanceRow;
pub use roots::RootRow;
pub use telemetry::{OUTBOX_MAX_EVENTS, OutboxRow};
pub use vector::{
    VectorChange, VectorChunkRef, VectorChunkRow, VectorCollectionRow, VectorDocInput, VectorDocRow,
    VectorFilterCondition, VectorFilterValue, VectorWriteOutcome,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: API keys. The secret is stored only as a SHA-256 hash.
    "CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY NOT NULL,
        name         TEXT NOT NULL,
        scopes       TEXT NOT NULL,
        secret_hash  BLOB NOT NULL CHECK (length(secret_hash) = 32),
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at   INTEGER
    ) STRICT;",
    // 2: the model registry. Blobs are content-addressed files under `blobs/`; a model row names one.
    "CREATE TABLE blobs (
        digest     TEXT PRIMARY KEY NOT NULL,
        size       INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE models (
        name            TEXT NOT NULL,
        tag             TEXT NOT NULL,
        digest          TEXT NOT NULL REFERENCES blobs (digest),
        format          TEXT NOT NULL,
        architecture    TEXT,
        parameter_count INTEGER,
        quantization    TEXT,
        context_length  INTEGER,
        size            INTEGER NOT NULL,
        source          TEXT NOT NULL,
        license         TEXT,
        created_at      INTEGER NOT NULL,
        last_used_at    INTEGER,
        pinned          INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, tag)
    ) STRICT;
    CREATE INDEX models_by_digest ON models (digest);",
    // 3: background jobs (model pulls) with the chunk bookkeeping a restarted daemon resumes from.
    "CREATE TABLE jobs (
        id          TEXT PRIMARY KEY NOT NULL,
        kind        TEXT NOT NULL,
        spec        TEXT NOT NULL,
        state       TEXT NOT NULL,
        error       TEXT,
        total_bytes INTEGER,
        done_bytes  INTEGER NOT NULL DEFAULT 0,
        chunk_size  INTEGER,
        chunks      BLOB,
        result      TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX jobs_by_state ON jobs (state);",
    // 4: GC roots: blobs held by something other than a model (prompt packs, vector collections,
    // quantization inputs and receipts); gc and eviction keep them (`roots.rs`).
    "CREATE TABLE blob_roots (
        digest     TEXT NOT NULL REFERENCES blobs (digest),
        owner_kind TEXT NOT NULL,
        owner_id   TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (digest, owner_kind, owner_id)
    ) STRICT;
    CREATE INDEX blob_roots_by_owner ON blob_roots (owner_kind, owner_id);",
    // 5: jobs of any kind (`ondevice-jobs`): progress (done/total/unit + message), an opaque
    // checkpoint, a dedup key, a resource class and a kind-specific JSON detail replace the
    // pull-specific columns. Pull rows carry over: their chunk bookkeeping becomes the pull's
    // checkpoint (`done_hex` is the old bitmap in hex), their registered digest its detail.
    "CREATE TABLE jobs_v5 (
        id          TEXT PRIMARY KEY NOT NULL,
        kind        TEXT NOT NULL,
        spec        TEXT NOT NULL,
        dedup_key   TEXT,
        class       TEXT NOT NULL,
        state       TEXT NOT NULL,
        error       TEXT,
        done        INTEGER NOT NULL DEFAULT 0,
        total       INTEGER,
        unit        TEXT NOT NULL DEFAULT '',
        message     TEXT,
        checkpoint  BLOB,
        detail      TEXT NOT NULL DEFAULT '{}',
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        finished_at INTEGER
    ) STRICT;
    INSERT INTO jobs_v5 (id, kind, spec, dedup_key, class, state, error, done, total, unit, message,
                         checkpoint, detail, created_at, updated_at, finished_at)
    SELECT id, kind, spec, json_extract(spec, '$.model'), 'downloads', state, error, done_bytes, total_bytes,
           'bytes', NULL,
           CASE WHEN chunk_size IS NULL THEN NULL ELSE CAST(json_object(
               'total', total_bytes, 'chunk_size', chunk_size, 'done_hex', lower(hex(coalesce(chunks, x''))))
               AS BLOB) END,
           json_object('model', json_extract(spec, '$.model'), 'source', json_extract(spec, '$.source'),
                       'digest', result),
           created_at, updated_at,
           CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN updated_at END
    FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v5 RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs (state);
    CREATE INDEX jobs_by_kind ON jobs (kind, dedup_key);",
    // Vector store (embedded backend): collections, documents, chunks with embeddings and the change
    // log the HNSW index files replay (`vector.rs`).
    vector::MIGRATION,
    // Prompt packs: published versions, movable labels and their history (`prompts.rs`).
    prompts::MIGRATION,
    // Model provenance: a quantization receipt and the parent model, per blob (`provenance.rs`).
    provenance::MIGRATION,
    // Egress ledger: one row per outbound connection, pruned by age and count (`egress.rs`).
    egress::MIGRATION,
    // Telemetry: consent and install id, and the outbox of events to send (`telemetry.rs`).
    telemetry::MIGRATION,
];

/// A database failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The file cannot be created or its permissions set.
    #[error("database {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was written by a newer ondevice.
    #[error(
        "database {path} has schema version {found}, newer than this ondevice supports ({supported}): upgrade ondevice"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A stored row cannot be decoded.
    #[error("database {path}: corrupt row in {table}: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Table name.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Makes the database readable by its owner only (it holds key hashes and model use): creates it
/// with mode 0600, or narrows an existing file. SQLite gives its `-wal` and `-shm` files the mode
/// of the database.
#[cfg(unix)]
fn restrict_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_mode(_path: &Path) -> std::io::Result<()> {
    // The database lives under the user's profile, whose ACL is private.
    Ok(())
}

/// The SQLite database (WAL mode), shared by the daemon's services.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Read-only connections for hot read paths (`read.rs`).
    readers: read::Readers,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let sql = |source| StoreError::Sqlite { path: path.to_path_buf(), source };
        restrict_mode(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version, supported });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(sql)?;
            tx.execute_batch(m).map_err(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        Ok(Store { path: path.to_path_buf(), conn: Mutex::new(conn), readers: read::Readers::default() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version in effect.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Like `with`, on a read-only connection of the pool (`read.rs`): for reads that must not wait
    /// behind a writer's transaction.
    fn with_read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.readers.with(&self.path, f).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), table: "api_keys", detail }
    }
}

fn failure(e: StoreError) -> StoreFailure {
    StoreFailure(Box::new(e))
}

impl KeyStore for Store {
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreFailure> {
        type Row = (String, String, String, Vec<u8>, i64, Option<i64>, Option<i64>);
        let rows: Vec<Row> = self
            .with(|c| {
                let mut st = c.prepare(
                    "SELECT id, name, scopes, secret_hash, created_at, last_used_at, revoked_at FROM api_keys",
                )?;
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
                    .collect()
            })
            .map_err(failure)?;
        rows.into_iter()
            .map(|(id, name, scopes, hash, created_at, last_used_at, revoked_at)| {
                let id: KeyId = id.parse().map_err(|_| failure(self.corrupt(format!("bad key id {id:?}"))))?;
                let scopes = Scopes::from_list(&scopes).map_err(|e| failure(self.corrupt(e.to_string())))?;
                let hash: [u8; 32] =
                    hash.try_into().map_err(|_| failure(self.corrupt(format!("bad hash length for key {id}"))))?;
                Ok(KeyRecord { id, name, scopes, hash: SecretHash(hash), created_at, last_used_at, revoked_at })
            })
            .collect()
    }

    fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreFailure> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_keys (id, name, scopes, secret_hash, created_at, last_used_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    k.id.to_string(),
                    k.name,
                    k.scopes.to_list(),
                    &k.hash.0[..],
                    k.created_at,
                    k.last_used_at,
                    k.revoked_at
                ],
            )
        })
        .map(drop)
        .map_err(failure)
    }

    fn revoke_key(&self, id: KeyId, at: i64) -> Result<(), StoreFailure> {
        self.with(|c| {
            c.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), at],
            )
        })
        .map(drop)
        .map_err(failure)
    }

    fn touch_keys(&self, used: &[(KeyId, i64)]) -> Result<(), StoreFailure> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut st =
                    tx.prepare("UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1")?;
                for (id, at) in used {
                    st.execute(params![id.to_string(), at])?;
                }
            }
            tx.commit()
        })
        .map_err(failure)
    }
}

impl Store {
    /// Reads one key's last-used time straight from the database (diagnostics, tests).
    pub fn key_last_used(&self, id: KeyId) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT last_used_at FROM api_keys WHERE id = ?1", [id.to_string()], |r| r.get(0))
                .optional()
                .map(Option::flatten)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ondevice_auth::{Presented, Scope, Verifier};

    use super::*;

    #[test]
    fn keys_persist_across_reopen_with_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        let store = Arc::new(Store::open(&db).unwrap());
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let v = Verifier::new(store.clone(), true).unwrap();
        let (info, key) = v.create_key(Some("ci"), Scopes::from_list("read,infer").unwrap()).unwrap();
        let header = format!("Bearer {key}");
        let presented = Presented { authorization: Some(header.as_bytes()), ..Default::default() };
        v.authorize(&presented, Scope::Infer).unwrap();
        v.flush_last_used().unwrap();
        assert!(store.key_last_used(info.id).unwrap().is_some());
        drop(v);
        drop(store);

        // The secret never reaches the file.
        let bytes = std::fs::read(&db).unwrap();
        let secret = key.rsplit('_').next().unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));

        let store = Arc::new(Store::open(&db).unwrap());
        let v = Verifier::new(store.clone(), true).unwrap();
        assert_eq!(v.authorize(&presented, Scope::Read).unwrap().name, "ci");
        v.revoke(&info.id.to_string()).unwrap();
        let v = Verifier::new(store, true).unwrap();
        assert!(v.authorize(&presented, Scope::Read).is_err());
        assert!(v.list_keys()[0].revoked_at.is_some());
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        let store = Store::open(&db).unwrap();
        store.schema_version().unwrap();
        assert_eq!(mode(&db), 0o600);
        for suffix in ["-wal", "-shm"] {
            let side = dir.path().join(format!("ondevice.db{suffix}"));
            assert_eq!(mode(&side), 0o600, "{}", side.display());
        }
        drop(store);
        // A database left world-readable by an older version is narrowed on open.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        Connection::open(&db).unwrap().pragma_update(None, "user_version", 999).unwrap();
        let err = Store::open(&db).unwrap_err();
        assert!(err.to_string().contains("newer than this ondevice supports"), "{err}");
    }

    #[test]
    fn corrupt_rows_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        let store = Store::open(&db).unwrap();
        store
            .with(|c| c.execute("INSERT INTO api_keys VALUES ('zz', 'n', 'read', zeroblob(32), 0, NULL, NULL)", []))
            .unwrap();
        let err = store.load_keys().unwrap_err();
        assert!(err.to_string().contains("bad key id"), "{err}");
    }
}
