//! Persistence for the model registry: the `models` and `blobs` tables (migration 2). A blob is
//! referenced while a model or a GC root (`roots.rs`) names it.
//!
//! Rows are plain data; `ondevice-registry` validates names and digests before they get here and
//! turns rows into its domain types.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// One row of `models`: a `name:tag` pointing at a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    /// Model name, e.g. `smollm2-135m-instruct`.
    pub name: String,
    /// Tag, e.g. `latest`.
    pub tag: String,
    /// Blob digest, `sha256:<hex>`.
    pub digest: String,
    /// File format, e.g. `gguf`.
    pub format: String,
    /// `general.architecture` or equivalent.
    pub architecture: Option<String>,
    /// Number of parameters.
    pub parameter_count: Option<i64>,
    /// Quantization name, e.g. `Q4_1`.
    pub quantization: Option<String>,
    /// Trained context length in tokens.
    pub context_length: Option<i64>,
    /// Size in bytes.
    pub size: i64,
    /// Where it came from, e.g. `import:model.gguf`.
    pub source: String,
    /// License identifier or text.
    pub license: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// Pinned models are never evicted.
    pub pinned: bool,
}

/// One row of `blobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Unix seconds.
    pub created_at: i64,
}

const MODEL_COLUMNS: &str = "name, tag, digest, format, architecture, parameter_count, quantization, context_length, \
     size, source, license, created_at, last_used_at, pinned";

fn model_from_row(r: &Row<'_>) -> rusqlite::Result<ModelRow> {
    Ok(ModelRow {
        name: r.get(0)?,
        tag: r.get(1)?,
        digest: r.get(2)?,
        format: r.get(3)?,
        architecture: r.get(4)?,
        parameter_count: r.get(5)?,
        quantization: r.get(6)?,
        context_length: r.get(7)?,
        size: r.get(8)?,
        source: r.get(9)?,
        license: r.get(10)?,
        created_at: r.get(11)?,
        last_used_at: r.get(12)?,
        pinned: r.get::<_, i64>(13)? != 0,
    })
}

impl Store {
    /// Inserts a model, or replaces every column of the existing `name:tag`. Its blob row must exist.
    pub fn insert_model(&self, m: &ModelRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO models ({MODEL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (name, tag) DO UPDATE SET
                       digest = excluded.digest, format = excluded.format, architecture = excluded.architecture,
                       parameter_count = excluded.parameter_count, quantization = excluded.quantization,
                       context_length = excluded.context_length, size = excluded.size, source = excluded.source,
                       license = excluded.license, created_at = excluded.created_at,
                       last_used_at = excluded.last_used_at, pinned = excluded.pinned"
                ),
                params![
                    m.name,
                    m.tag,
                    m.digest,
                    m.format,
                    m.architecture,
                    m.parameter_count,
                    m.quantization,
                    m.context_length,
                    m.size,
                    m.source,
                    m.license,
                    m.created_at,
                    m.last_used_at,
                    i64::from(m.pinned)
                ],
            )
        })
        .map(drop)
    }

    /// The model `name:tag`, if registered.
    pub fn get_model(&self, name: &str, tag: &str) -> Result<Option<ModelRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {MODEL_COLUMNS} FROM models WHERE name = ?1 AND tag = ?2"),
                params![name, tag],
                model_from_row,
            )
            .optional()
        })
    }

    /// Every model, ordered by name then tag.
    pub fn list_models(&self) -> Result<Vec<ModelRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY name, tag"))?;
            st.query_map([], model_from_row)?.collect()
        })
    }

    /// Deletes the row for `name:tag` (not its blob); returns whether it existed.
    pub fn delete_model(&self, name: &str, tag: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM models WHERE name = ?1 AND tag = ?2", params![name, tag])).map(|n| n > 0)
    }

    /// Sets `last_used_at` of `name:tag` to `at` (Unix seconds); returns whether the model exists.
    pub fn touch_model(&self, name: &str, tag: &str, at: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("UPDATE models SET last_used_at = ?3 WHERE name = ?1 AND tag = ?2", params![name, tag, at])
        })
        .map(|n| n > 0)
    }

    /// Pins or unpins `name:tag` (pinned models are never evicted); returns whether it exists.
    pub fn set_model_pinned(&self, name: &str, tag: &str, pinned: bool) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE models SET pinned = ?3 WHERE name = ?1 AND tag = ?2",
                params![name, tag, i64::from(pinned)],
            )
        })
        .map(|n| n > 0)
    }

    /// Records a blob; a digest already present is left as it is.
    pub fn insert_blob(&self, b: &BlobRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (digest) DO NOTHING",
                params![b.digest, b.size, b.created_at],
            )
        })
        .map(drop)
    }

    /// Whether any model or GC root (`roots.rs`) refers to the blob.
    pub fn blob_referenced(&self, digest: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM models WHERE digest = ?1)
                     OR EXISTS (SELECT 1 FROM blob_roots WHERE digest = ?1)",
                [digest],
                |r| r.get(0),
            )
        })
    }

    /// Every recorded blob, ordered by digest.
    pub fn list_blobs(&self) -> Result<Vec<BlobRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT digest, size, created_at FROM blobs ORDER BY digest")?;
            st.query_map([], |r| Ok(BlobRow { digest: r.get(0)?, size: r.get(1)?, created_at: r.get(2)? }))?.collect()
        })
    }

    /// Deletes the blob's row unless a model or a GC root still refers to it (checked in the same
    /// statement); returns whether a row was deleted.
    pub fn delete_blob(&self, digest: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM blobs WHERE digest = ?1
                   AND NOT EXISTS (SELECT 1 FROM models WHERE digest = ?1)
                   AND NOT EXISTS (SELECT 1 FROM blob_roots WHERE digest = ?1)",
                [digest],
            )
        })
        .map(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn model(name: &str, digest: &str) -> ModelRow {
        ModelRow {
            name: name.into(),
            tag: "latest".into(),
            digest: digest.into(),
            format: "gguf".into(),
            architecture: Some("llama".into()),
            parameter_count: Some(135_000_000),
            quantization: Some("Q4_1".into()),
            context_length: Some(8192),
            size: 10,
            source: "import:m.gguf".into(),
            license: None,
            created_at: 100,
            last_used_at: None,
            pinned: false,
        }
    }

    fn blob(digest: &str) -> BlobRow {
        BlobRow { digest: digest.into(), size: 10, created_at: 100 }
    }

    #[test]
    fn models_and_blobs_round_trip_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        let store = Store::open(&db).unwrap();
        assert_eq!(store.schema_version().unwrap(), crate::MIGRATIONS.len() as i64);
        store.insert_blob(&blob(D1)).unwrap();
        store.insert_blob(&blob(D1)).unwrap(); // idempotent
        store.insert_blob(&blob(D2)).unwrap();
        store.insert_model(&model("b", D1)).unwrap();
        store.insert_model(&model("a", D1)).unwrap();
        drop(store);

        let store = Store::open(&db).unwrap();
        assert_eq!(store.list_blobs().unwrap(), vec![blob(D1), blob(D2)]);
        let names: Vec<_> = store.list_models().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.get_model("a", "latest").unwrap(), Some(model("a", D1)));
        assert_eq!(store.get_model("a", "other").unwrap(), None);

        // Upsert replaces the row.
        let mut changed = model("a", D2);
        changed.pinned = true;
        changed.last_used_at = Some(200);
        store.insert_model(&changed).unwrap();
        assert_eq!(store.get_model("a", "latest").unwrap(), Some(changed));
        assert_eq!(store.list_models().unwrap().len(), 2);
    }

    #[test]
    fn touch_and_pin_update_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        store.insert_blob(&blob(D1)).unwrap();
        store.insert_model(&model("a", D1)).unwrap();
        store.insert_model(&model("b", D1)).unwrap();
        assert!(store.touch_model("a", "latest", 500).unwrap());
        assert!(store.set_model_pinned("b", "latest", true).unwrap());
        assert!(!store.touch_model("c", "latest", 500).unwrap());
        assert!(!store.set_model_pinned("c", "latest", true).unwrap());
        let a = store.get_model("a", "latest").unwrap().unwrap();
        let b = store.get_model("b", "latest").unwrap().unwrap();
        assert_eq!((a.last_used_at, a.pinned), (Some(500), false));
        assert_eq!((b.last_used_at, b.pinned), (None, true));
        assert!(store.set_model_pinned("b", "latest", false).unwrap());
        assert!(!store.get_model("b", "latest").unwrap().unwrap().pinned);
    }

    #[test]
    fn referenced_blobs_are_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        store.insert_blob(&blob(D1)).unwrap();
        store.insert_model(&model("a", D1)).unwrap();
        assert!(store.blob_referenced(D1).unwrap());
        assert!(!store.delete_blob(D1).unwrap());
        assert!(store.delete_model("a", "latest").unwrap());
        assert!(!store.delete_model("a", "latest").unwrap());
        assert!(!store.blob_referenced(D1).unwrap());
        assert!(store.delete_blob(D1).unwrap());
        assert!(store.list_blobs().unwrap().is_empty());
    }

    #[test]
    fn a_model_needs_its_blob_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        let err = store.insert_model(&model("a", D1)).unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        assert!(store.list_models().unwrap().is_empty());
    }

    #[test]
    fn version_one_databases_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch(crate::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = Store::open(&db).unwrap();
        assert_eq!(store.schema_version().unwrap(), crate::MIGRATIONS.len() as i64);
        assert!(store.list_models().unwrap().is_empty());
    }
}
