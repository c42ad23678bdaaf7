//! Persistence for model provenance: the `model_provenance` table. A row describes where the
//! content of one blob came from (a quantization receipt as JSON, and the registry model it was
//! made from), keyed by the blob's digest, so every name that points at the content (a copy, a
//! re-import of the same file) shows the same provenance.
//!
//! Rows are plain data; `ondevice-registry` checks digests and that a receipt describes its blob
//! before it gets here, and removes the row when `gc` removes the blob.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// The migration that creates the table.
pub(crate) const MIGRATION: &str = "CREATE TABLE model_provenance (
        digest        TEXT PRIMARY KEY NOT NULL,
        parent_model  TEXT,
        parent_digest TEXT,
        receipt       TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;";

/// One row of `model_provenance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceRow {
    /// The blob described, `sha256:<hex>`.
    pub digest: String,
    /// The registry model it was made from, `name:tag` at the time.
    pub parent_model: Option<String>,
    /// That model's digest, `sha256:<hex>`.
    pub parent_digest: Option<String>,
    /// The receipt, JSON.
    pub receipt: String,
    /// Unix seconds.
    pub created_at: i64,
}

const COLUMNS: &str = "digest, parent_model, parent_digest, receipt, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ProvenanceRow> {
    Ok(ProvenanceRow {
        digest: r.get(0)?,
        parent_model: r.get(1)?,
        parent_digest: r.get(2)?,
        receipt: r.get(3)?,
        created_at: r.get(4)?,
    })
}

impl Store {
    /// Records the provenance of a blob, replacing what was recorded for it; returns whether the
    /// blob had none before.
    pub fn insert_provenance(&self, p: &ProvenanceRow) -> Result<bool, StoreError> {
        self.with(|c| {
            let existed: bool = c
                .query_row("SELECT 1 FROM model_provenance WHERE digest = ?1", [&p.digest], |_| Ok(()))
                .optional()?
                .is_some();
            c.execute(
                &format!(
                    "INSERT INTO model_provenance ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (digest) DO UPDATE SET parent_model = excluded.parent_model,
                       parent_digest = excluded.parent_digest, receipt = excluded.receipt,
                       created_at = excluded.created_at"
                ),
                params![p.digest, p.parent_model, p.parent_digest, p.receipt, p.created_at],
            )?;
            Ok(!existed)
        })
    }

    /// The provenance of one blob.
    pub fn get_provenance(&self, digest: &str) -> Result<Option<ProvenanceRow>, StoreError> {
        self.with(|c| {
            c.query_row(&format!("SELECT {COLUMNS} FROM model_provenance WHERE digest = ?1"), [digest], from_row)
                .optional()
        })
    }

    /// Every provenance row, by digest.
    pub fn list_provenance(&self) -> Result<Vec<ProvenanceRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM model_provenance ORDER BY digest"))?;
            st.query_map([], from_row)?.collect()
        })
    }

    /// Deletes the provenance of one blob; returns whether it had one.
    pub fn delete_provenance(&self, digest: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM model_provenance WHERE digest = ?1", params![digest])).map(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_rows_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let d = format!("sha256:{}", "ab".repeat(32));
        let mut row = ProvenanceRow {
            digest: d.clone(),
            parent_model: Some("smollm2:latest".into()),
            parent_digest: Some(format!("sha256:{}", "cd".repeat(32))),
            receipt: r#"{"tool":"ondevice 0.1.0"}"#.into(),
            created_at: 7,
        };
        assert!(store.insert_provenance(&row).unwrap());
        assert_eq!(store.get_provenance(&d).unwrap().as_ref(), Some(&row));
        row.receipt = "{}".into();
        assert!(!store.insert_provenance(&row).unwrap(), "a second insert replaces");
        assert_eq!(store.list_provenance().unwrap(), vec![row]);
        assert!(store.delete_provenance(&d).unwrap());
        assert!(!store.delete_provenance(&d).unwrap());
        assert_eq!(store.get_provenance(&d).unwrap(), None);
    }
}
