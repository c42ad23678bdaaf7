//! Persistence for prompt packs (`ondevice-prompts`): published versions (`prompt_versions`, one
//! row per immutable version naming its content blob), movable labels (`prompt_labels`) and every
//! label move (`prompt_label_history`, so `rollback` and `show` can tell what was served when).
//!
//! Rows are plain data; `ondevice-prompts` validates names, versions and digests before they get
//! here. A version's content blob is held by a GC root owned by `prompt-pack/NAME@VERSION`.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// The migration that creates the prompt pack tables.
pub(crate) const MIGRATION: &str = "CREATE TABLE prompt_versions (
        name        TEXT NOT NULL,
        version     TEXT NOT NULL,
        digest      TEXT NOT NULL,
        description TEXT NOT NULL,
        signer      TEXT,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    ) STRICT;
    CREATE TABLE prompt_labels (
        name       TEXT NOT NULL,
        label      TEXT NOT NULL,
        version    TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (name, label),
        FOREIGN KEY (name, version) REFERENCES prompt_versions (name, version) ON DELETE CASCADE
    ) STRICT;
    CREATE TABLE prompt_label_history (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        name     TEXT NOT NULL,
        label    TEXT NOT NULL,
        version  TEXT,
        previous TEXT,
        at       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX prompt_label_history_by_name ON prompt_label_history (name, seq);";

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptVersionRow {
    /// Pack name.
    pub name: String,
    /// Semver version.
    pub version: String,
    /// Content blob, `sha256:<hex>`.
    pub digest: String,
    /// The manifest's description.
    pub description: String,
    /// Hex ed25519 public key of the archive's signer, for imported signed packs.
    pub signer: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// One label: `name@label` → `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptLabelRow {
    /// Pack name.
    pub name: String,
    /// Label.
    pub label: String,
    /// The version it points to.
    pub version: String,
    /// Unix seconds of the last move.
    pub updated_at: i64,
}

/// One label move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptLabelMove {
    /// Pack name.
    pub name: String,
    /// Label.
    pub label: String,
    /// Where it points now (`None`: removed).
    pub version: Option<String>,
    /// Where it pointed before (`None`: new label).
    pub previous: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

fn version_from_row(r: &Row<'_>) -> rusqlite::Result<PromptVersionRow> {
    Ok(PromptVersionRow {
        name: r.get(0)?,
        version: r.get(1)?,
        digest: r.get(2)?,
        description: r.get(3)?,
        signer: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const VERSION_COLUMNS: &str = "name, version, digest, description, signer, created_at";

impl Store {
    /// Records a published version; `false` when `name@version` already exists (unchanged).
    pub fn insert_prompt_version(&self, row: &PromptVersionRow) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO prompt_versions (name, version, digest, description, signer, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name, version) DO NOTHING",
                params![row.name, row.version, row.digest, row.description, row.signer, row.created_at],
            )
        })
        .map(|n| n > 0)
    }

    /// One version.
    pub fn prompt_version(&self, name: &str, version: &str) -> Result<Option<PromptVersionRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE name = ?1 AND version = ?2"),
                params![name, version],
                version_from_row,
            )
            .optional()
        })
    }

    /// Versions of one pack, or of every pack, by name then publish order.
    pub fn prompt_versions(&self, name: Option<&str>) -> Result<Vec<PromptVersionRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE ?1 IS NULL OR name = ?1
                 ORDER BY name, created_at, rowid"
            ))?;
            st.query_map([name], version_from_row)?.collect()
        })
    }

    /// Deletes a version and the labels pointing at it (recorded as label moves); `false` when it
    /// did not exist.
    pub fn delete_prompt_version(&self, name: &str, version: &str, at: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO prompt_label_history (name, label, version, previous, at)
                 SELECT name, label, NULL, version, ?3 FROM prompt_labels WHERE name = ?1 AND version = ?2",
                params![name, version, at],
            )?;
            tx.execute("DELETE FROM prompt_labels WHERE name = ?1 AND version = ?2", params![name, version])?;
            let n =
                tx.execute("DELETE FROM prompt_versions WHERE name = ?1 AND version = ?2", params![name, version])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Points `name@label` at `version` (which must be published) and records the move; returns
    /// the version it pointed to before.
    pub fn set_prompt_label(
        &self,
        name: &str,
        label: &str,
        version: &str,
        at: i64,
    ) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let previous: Option<String> = tx
                .query_row(
                    "SELECT version FROM prompt_labels WHERE name = ?1 AND label = ?2",
                    params![name, label],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute(
                "INSERT INTO prompt_labels (name, label, version, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name, label) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                params![name, label, version, at],
            )?;
            if previous.as_deref() != Some(version) {
                tx.execute(
                    "INSERT INTO prompt_label_history (name, label, version, previous, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, label, version, previous, at],
                )?;
            }
            tx.commit()?;
            Ok(previous)
        })
    }

    /// Labels of one pack, or of every pack, by name then label.
    pub fn prompt_labels(&self, name: Option<&str>) -> Result<Vec<PromptLabelRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, label, version, updated_at FROM prompt_labels WHERE ?1 IS NULL OR name = ?1
                 ORDER BY name, label",
            )?;
            st.query_map([name], |r| {
                Ok(PromptLabelRow { name: r.get(0)?, label: r.get(1)?, version: r.get(2)?, updated_at: r.get(3)? })
            })?
            .collect()
        })
    }

    /// Label moves of one pack, oldest first.
    pub fn prompt_label_history(&self, name: &str) -> Result<Vec<PromptLabelMove>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, label, version, previous, at FROM prompt_label_history WHERE name = ?1 ORDER BY seq",
            )?;
            st.query_map([name], |r| {
                Ok(PromptLabelMove {
                    name: r.get(0)?,
                    label: r.get(1)?,
                    version: r.get(2)?,
                    previous: r.get(3)?,
                    at: r.get(4)?,
                })
            })?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, version: &str) -> PromptVersionRow {
        PromptVersionRow {
            name: name.into(),
            version: version.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            description: "d".into(),
            signer: None,
            created_at: 1,
        }
    }

    #[test]
    fn versions_labels_and_history_on_a_real_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        assert!(store.insert_prompt_version(&row("sum", "1.0.0")).unwrap());
        assert!(!store.insert_prompt_version(&row("sum", "1.0.0")).unwrap());
        assert!(store.insert_prompt_version(&row("sum", "1.1.0")).unwrap());
        assert_eq!(store.prompt_versions(Some("sum")).unwrap().len(), 2);
        assert_eq!(store.set_prompt_label("sum", "production", "1.1.0", 2).unwrap(), None);
        assert_eq!(store.set_prompt_label("sum", "production", "1.0.0", 3).unwrap().as_deref(), Some("1.1.0"));
        // A label cannot point at a version that is not published.
        assert!(store.set_prompt_label("sum", "production", "9.9.9", 4).is_err());
        assert!(store.delete_prompt_version("sum", "1.0.0", 5).unwrap());
        assert!(store.prompt_labels(Some("sum")).unwrap().is_empty());
        let h = store.prompt_label_history("sum").unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!((h[2].version.as_deref(), h[2].previous.as_deref()), (None, Some("1.0.0")));
        drop(store);
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        assert_eq!(store.prompt_version("sum", "1.1.0").unwrap().unwrap().version, "1.1.0");
    }
}
