//! Persistence for GC roots: the `blob_roots` table. A root keeps a blob that something other
//! than a model refers to (a prompt pack, a vector collection, a quantization input or receipt)
//! out of reach of `gc`, eviction and blob deletion, for as long as its owner holds it.
//!
//! Rows are plain data; `ondevice-registry` validates digests and owners before they get here.

use rusqlite::{Row, params};

use crate::{Store, StoreError};

/// One row of `blob_roots`: `owner_kind`/`owner_id` holds `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRow {
    /// Blob digest, `sha256:<hex>`; its `blobs` row must exist.
    pub digest: String,
    /// What holds it, e.g. `prompt-pack`.
    pub owner_kind: String,
    /// Which one of that kind, e.g. the pack's name.
    pub owner_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

fn root_from_row(r: &Row<'_>) -> rusqlite::Result<RootRow> {
    Ok(RootRow { digest: r.get(0)?, owner_kind: r.get(1)?, owner_id: r.get(2)?, created_at: r.get(3)? })
}

const ROOT_COLUMNS: &str = "digest, owner_kind, owner_id, created_at";

impl Store {
    /// Records a root; returns whether it is new (an existing root keeps its `created_at`).
    pub fn insert_root(&self, root: &RootRow) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO blob_roots (digest, owner_kind, owner_id, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest, owner_kind, owner_id) DO NOTHING",
                params![root.digest, root.owner_kind, root.owner_id, root.created_at],
            )
        })
        .map(|n| n > 0)
    }

    /// Deletes one root; returns whether it existed.
    pub fn delete_root(&self, digest: &str, owner_kind: &str, owner_id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM blob_roots WHERE digest = ?1 AND owner_kind = ?2 AND owner_id = ?3",
                params![digest, owner_kind, owner_id],
            )
        })
        .map(|n| n > 0)
    }

    /// The roots holding one blob, by owner.
    pub fn roots_of(&self, digest: &str) -> Result<Vec<RootRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ROOT_COLUMNS} FROM blob_roots WHERE digest = ?1 ORDER BY owner_kind, owner_id"
            ))?;
            st.query_map([digest], root_from_row)?.collect()
        })
    }

    /// Every root, by digest then owner.
    pub fn list_roots(&self) -> Result<Vec<RootRow>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare(&format!("SELECT {ROOT_COLUMNS} FROM blob_roots ORDER BY digest, owner_kind, owner_id"))?;
            st.query_map([], root_from_row)?.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobRow;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn root(digest: &str, kind: &str, id: &str) -> RootRow {
        RootRow { digest: digest.into(), owner_kind: kind.into(), owner_id: id.into(), created_at: 100 }
    }

    #[test]
    fn roots_keep_their_blob_until_the_last_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        for d in [D1, D2] {
            store.insert_blob(&BlobRow { digest: d.into(), size: 10, created_at: 100 }).unwrap();
        }
        assert!(store.insert_root(&root(D1, "prompt-pack", "a")).unwrap());
        assert!(!store.insert_root(&RootRow { created_at: 999, ..root(D1, "prompt-pack", "a") }).unwrap());
        assert!(store.insert_root(&root(D1, "collection", "docs")).unwrap());
        assert_eq!(store.roots_of(D1).unwrap(), vec![root(D1, "collection", "docs"), root(D1, "prompt-pack", "a")]);
        assert!(store.roots_of(D2).unwrap().is_empty());

        assert!(store.blob_referenced(D1).unwrap());
        assert!(!store.delete_blob(D1).unwrap(), "a rooted blob row is not deleted");
        assert!(store.delete_root(D1, "collection", "docs").unwrap());
        assert!(!store.delete_root(D1, "collection", "docs").unwrap());
        assert!(store.blob_referenced(D1).unwrap(), "one root left");
        assert!(store.delete_root(D1, "prompt-pack", "a").unwrap());
        assert!(!store.blob_referenced(D1).unwrap());
        assert!(store.delete_blob(D1).unwrap());
        assert!(store.list_roots().unwrap().is_empty());
    }

    /// A database from the version before `blob_roots` keeps its models and blobs, and gains the
    /// table (the migration is found by content, so later migrations do not move this test).
    #[test]
    fn databases_before_roots_are_migrated() {
        let mine = crate::MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE blob_roots"))
            .expect("the blob_roots migration");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            for m in &crate::MIGRATIONS[..mine] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(&format!(
                "INSERT INTO blobs VALUES ('{D1}', 10, 100);
                 INSERT INTO models (name, tag, digest, format, size, source, created_at)
                 VALUES ('a', 'latest', '{D1}', 'gguf', 10, 'import:a.gguf', 100);"
            ))
            .unwrap();
            conn.pragma_update(None, "user_version", mine as i64).unwrap();
        }
        let store = Store::open(&db).unwrap();
        assert_eq!(store.schema_version().unwrap(), crate::MIGRATIONS.len() as i64);
        assert_eq!(store.list_models().unwrap().len(), 1);
        assert!(store.list_roots().unwrap().is_empty());
        assert!(store.insert_root(&root(D1, "prompt-pack", "a")).unwrap());
        assert!(store.delete_model("a", "latest").unwrap());
        assert!(!store.delete_blob(D1).unwrap(), "the root keeps the blob after its model is gone");
    }

    #[test]
    fn a_root_needs_its_blob_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        let err = store.insert_root(&root(D1, "prompt-pack", "a")).unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    }
}
