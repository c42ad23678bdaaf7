//! Persistence for the embedded vector backend (`ondevice-vector-embedded`): collections, documents
//! with JSON metadata, chunks with their embeddings (little-endian `f32` bytes), and a change log.
//!
//! SQLite is the source of truth; the HNSW index file beside the database is a cache of it. Every
//! write appends to `vector_changes` in the same transaction, and the collection's `head_seq` is the
//! last change. An index file records the change it is current with: at open, a file behind replays
//! the log after it; a file from before the pruned part of the log (or ahead of `head_seq`, or
//! damaged) is rebuilt from `vector_chunks`. Rows are plain data: `ondevice-vector` validates names.

use std::fmt::Write as _;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{OptionalExtension, Row, params, params_from_iter};

use crate::{Store, StoreError};

/// The migration that creates the vector tables (appended to `MIGRATIONS`).
pub(crate) const MIGRATION: &str = "CREATE TABLE vector_collections (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT NOT NULL UNIQUE,
        spec       TEXT NOT NULL,
        head_seq   INTEGER NOT NULL DEFAULT 0,
        pruned_seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE vector_documents (
        collection_id INTEGER NOT NULL REFERENCES vector_collections (id) ON DELETE CASCADE,
        doc_id        TEXT NOT NULL,
        source        TEXT,
        content_hash  TEXT NOT NULL,
        metadata      TEXT NOT NULL DEFAULT '{}',
        updated_at    INTEGER NOT NULL,
        PRIMARY KEY (collection_id, doc_id)
    ) STRICT;
    CREATE TABLE vector_chunks (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        collection_id INTEGER NOT NULL,
        doc_id        TEXT NOT NULL,
        seq           INTEGER NOT NULL,
        text          TEXT NOT NULL,
        embedding     BLOB NOT NULL,
        FOREIGN KEY (collection_id, doc_id) REFERENCES vector_documents (collection_id, doc_id) ON DELETE CASCADE
    ) STRICT;
    CREATE INDEX vector_chunks_by_doc ON vector_chunks (collection_id, doc_id);
    CREATE TABLE vector_changes (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        collection_id INTEGER NOT NULL,
        chunk_id      INTEGER NOT NULL,
        added         INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX vector_changes_by_collection ON vector_changes (collection_id, seq);";

/// One row of `vector_collections`, with its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorCollectionRow {
    /// Stable id (index files are named by it).
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// The collection's settings as JSON (owned by `ondevice-vector`).
    pub spec: String,
    /// The last change in the log.
    pub head_seq: i64,
    /// Changes up to this one are pruned from the log.
    pub pruned_seq: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Documents.
    pub documents: i64,
    /// Chunks.
    pub chunks: i64,
}

/// A document to write.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorDocInput {
    /// Id in its collection.
    pub doc_id: String,
    /// Source path or URL.
    pub source: Option<String>,
    /// `sha256:` of its content.
    pub content_hash: String,
    /// Metadata as a JSON object.
    pub metadata: String,
    /// Chunks in order: text and embedding bytes.
    pub chunks: Vec<(String, Vec<u8>)>,
}

/// What a write changed, for the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VectorWriteOutcome {
    /// Chunk ids removed.
    pub removed: Vec<i64>,
    /// Chunk ids added, in input order (documents, then chunks).
    pub added: Vec<i64>,
    /// Documents that existed among those written or deleted.
    pub existed: u64,
    /// The collection's `head_seq` after the write.
    pub head_seq: i64,
}

/// One change of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorChange {
    /// Log position.
    pub seq: i64,
    /// The chunk.
    pub chunk_id: i64,
    /// Added (`true`) or removed.
    pub added: bool,
}

/// A chunk with its document's fields, as a query hit needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorChunkRow {
    /// Chunk id.
    pub id: i64,
    /// Document id.
    pub doc_id: String,
    /// Position in the document.
    pub seq: i64,
    /// Text.
    pub text: String,
    /// Document source.
    pub source: Option<String>,
    /// Document metadata (JSON object).
    pub metadata: String,
    /// The chunk's embedding as stored (little-endian `f32`s), to re-score a hit exactly.
    pub embedding: Vec<u8>,
}

/// A chunk with its document's fields, borrowed from SQLite's row ([`Store::vector_chunks_with`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorChunkRef<'a> {
    /// Chunk id.
    pub id: i64,
    /// Document id.
    pub doc_id: &'a str,
    /// Position in the document.
    pub seq: i64,
    /// Text.
    pub text: &'a str,
    /// Document source.
    pub source: Option<&'a str>,
    /// Document metadata (JSON object).
    pub metadata: &'a str,
    /// The chunk's embedding as stored (little-endian `f32`s).
    pub embedding: &'a [u8],
}

/// A stored document with its chunk texts.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorDocRow {
    /// Document id.
    pub doc_id: String,
    /// Source.
    pub source: Option<String>,
    /// Content hash.
    pub content_hash: String,
    /// Metadata JSON.
    pub metadata: String,
    /// Chunk texts in order.
    pub chunks: Vec<String>,
}

/// One value a metadata filter accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorFilterValue {
    /// A JSON string.
    Text(String),
    /// A JSON number.
    Number(f64),
    /// A JSON boolean.
    Bool(bool),
}

/// One condition: the metadata key (letters, digits, `_`, `-`; validated by the caller) and the
/// values it may have.
pub type VectorFilterCondition = (String, Vec<VectorFilterValue>);

const COLLECTION_SELECT: &str = "SELECT c.id, c.name, c.spec, c.head_seq, c.pruned_seq, c.created_at,
        (SELECT count(*) FROM vector_documents d WHERE d.collection_id = c.id),
        (SELECT count(*) FROM vector_chunks k WHERE k.collection_id = c.id)
     FROM vector_collections c";

fn collection_from_row(r: &Row<'_>) -> rusqlite::Result<VectorCollectionRow> {
    Ok(VectorCollectionRow {
        id: r.get(0)?,
        name: r.get(1)?,
        spec: r.get(2)?,
        head_seq: r.get(3)?,
        pruned_seq: r.get(4)?,
        created_at: r.get(5)?,
        documents: r.get(6)?,
        chunks: r.get(7)?,
    })
}

/// The chunks (with their documents' fields) whose ids are in the JSON array `?1`.
/// `+k.collection_id`: the ids pick the rows by primary key; without the `+` SQLite may choose the
/// collection's index and scan all its chunks.
const CHUNKS_BY_ID: &str = "SELECT k.id, k.doc_id, k.seq, k.text, d.source, d.metadata, k.embedding
     FROM vector_chunks k JOIN vector_documents d ON d.collection_id = k.collection_id AND d.doc_id = k.doc_id
     WHERE k.id IN (SELECT value FROM json_each(?1)) AND +k.collection_id = ?2";

/// Column `i` of a row, borrowed from SQLite's buffer.
fn borrowed<'r, T>(
    r: &'r Row<'_>,
    i: usize,
    get: impl FnOnce(&ValueRef<'r>) -> rusqlite::types::FromSqlResult<T>,
) -> rusqlite::Result<T> {
    let v = r.get_ref(i)?;
    get(&v).map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)))
}

/// Appends a change and returns its seq.
fn log_change(tx: &rusqlite::Transaction<'_>, collection_id: i64, chunk_id: i64, added: bool) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO vector_changes (collection_id, chunk_id, added) VALUES (?1, ?2, ?3)",
        params![collection_id, chunk_id, added as i64],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Removes a document's chunks (logging each) and returns their ids.
fn remove_chunks(tx: &rusqlite::Transaction<'_>, collection_id: i64, doc_id: &str) -> rusqlite::Result<Vec<i64>> {
    let ids: Vec<i64> = {
        let mut st = tx.prepare_cached("SELECT id FROM vector_chunks WHERE collection_id = ?1 AND doc_id = ?2")?;
        st.query_map(params![collection_id, doc_id], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    tx.execute("DELETE FROM vector_chunks WHERE collection_id = ?1 AND doc_id = ?2", params![collection_id, doc_id])?;
    for id in &ids {
        log_change(tx, collection_id, *id, false)?;
    }
    Ok(ids)
}

fn set_head(tx: &rusqlite::Transaction<'_>, collection_id: i64) -> rusqlite::Result<i64> {
    let head: i64 = tx.query_row(
        "SELECT coalesce(max(seq), 0) FROM vector_changes WHERE collection_id = ?1",
        [collection_id],
        |r| r.get(0),
    )?;
    tx.execute(
        "UPDATE vector_collections SET head_seq = max(head_seq, ?2) WHERE id = ?1",
        params![collection_id, head],
    )?;
    tx.query_row("SELECT head_seq FROM vector_collections WHERE id = ?1", [collection_id], |r| r.get(0))
}

impl Store {
    /// Creates a collection; `None` when the name is taken.
    pub fn vector_create_collection(&self, name: &str, spec: &str, now: i64) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "INSERT INTO vector_collections (name, spec, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![name, spec, now],
            )?;
            Ok((n > 0).then(|| c.last_insert_rowid()))
        })
    }

    /// One collection by name.
    pub fn vector_collection(&self, name: &str) -> Result<Option<VectorCollectionRow>, StoreError> {
        self.with(|c| {
            c.query_row(&format!("{COLLECTION_SELECT} WHERE c.name = ?1"), [name], collection_from_row).optional()
        })
    }

    /// Every collection, by name.
    pub fn vector_collections(&self) -> Result<Vec<VectorCollectionRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("{COLLECTION_SELECT} ORDER BY c.name"))?;
            st.query_map([], collection_from_row)?.collect()
        })
    }

    /// Deletes a collection with its documents, chunks and log; returns its id when it existed.
    pub fn vector_delete_collection(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let id: Option<i64> =
                tx.query_row("SELECT id FROM vector_collections WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            if let Some(id) = id {
                delete_collection_rows(&tx, id)?;
            }
            tx.commit()?;
            Ok(id)
        })
    }

    /// Renames collection `from` to `to`, deleting the collection called `to` first. Returns the
    /// id the name `to` had (its index file is obsolete), or `None` when `from` does not exist.
    pub fn vector_replace_collection(&self, from: &str, to: &str) -> Result<Option<Option<i64>>, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let from_id: Option<i64> =
                tx.query_row("SELECT id FROM vector_collections WHERE name = ?1", [from], |r| r.get(0)).optional()?;
            if from_id.is_none() {
                return Ok(None);
            }
            let old: Option<i64> =
                tx.query_row("SELECT id FROM vector_collections WHERE name = ?1", [to], |r| r.get(0)).optional()?;
            if let Some(old) = old {
                delete_collection_rows(&tx, old)?;
            }
            tx.execute("UPDATE vector_collections SET name = ?2 WHERE name = ?1", params![from, to])?;
            tx.commit()?;
            Ok(Some(old))
        })
    }

    /// Writes documents (each replaces its previous chunks) in one transaction.
    pub fn vector_upsert(
        &self,
        collection_id: i64,
        docs: &[VectorDocInput],
        now: i64,
    ) -> Result<VectorWriteOutcome, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let mut out = VectorWriteOutcome::default();
            for d in docs {
                let removed = remove_chunks(&tx, collection_id, &d.doc_id)?;
                let n = tx.execute(
                    "INSERT INTO vector_documents (collection_id, doc_id, source, content_hash, metadata, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (collection_id, doc_id) DO UPDATE SET source = excluded.source,
                        content_hash = excluded.content_hash, metadata = excluded.metadata,
                        updated_at = excluded.updated_at",
                    params![collection_id, d.doc_id, d.source, d.content_hash, d.metadata, now],
                )?;
                if n > 0 && !removed.is_empty() {
                    out.existed += 1;
                }
                out.removed.extend(removed);
                let mut st = tx.prepare_cached(
                    "INSERT INTO vector_chunks (collection_id, doc_id, seq, text, embedding) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (i, (text, emb)) in d.chunks.iter().enumerate() {
                    st.execute(params![collection_id, d.doc_id, i as i64, text, emb])?;
                    let id = tx.last_insert_rowid();
                    log_change(&tx, collection_id, id, true)?;
                    out.added.push(id);
                }
            }
            out.head_seq = set_head(&tx, collection_id)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Deletes documents by id.
    pub fn vector_delete_documents(
        &self,
        collection_id: i64,
        ids: &[String],
    ) -> Result<VectorWriteOutcome, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let mut out = VectorWriteOutcome::default();
            for id in ids {
                out.removed.extend(remove_chunks(&tx, collection_id, id)?);
                out.existed += tx.execute(
                    "DELETE FROM vector_documents WHERE collection_id = ?1 AND doc_id = ?2",
                    params![collection_id, id],
                )? as u64;
            }
            out.head_seq = set_head(&tx, collection_id)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// `(doc_id, content_hash)` of each of `ids` that exists.
    pub fn vector_content_hashes(
        &self,
        collection_id: i64,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT doc_id, content_hash FROM vector_documents WHERE collection_id = ?1 AND doc_id = ?2",
            )?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(row) =
                    st.query_row(params![collection_id, id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?
                {
                    out.push(row);
                }
            }
            Ok(out)
        })
    }

    /// Up to `limit` documents after `after`, in id order, with their chunk texts.
    pub fn vector_documents_page(
        &self,
        collection_id: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VectorDocRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT doc_id, source, content_hash, metadata FROM vector_documents
                 WHERE collection_id = ?1 AND doc_id > ?2 ORDER BY doc_id LIMIT ?3",
            )?;
            let mut docs: Vec<VectorDocRow> = st
                .query_map(params![collection_id, after.unwrap_or(""), limit as i64], |r| {
                    Ok(VectorDocRow {
                        doc_id: r.get(0)?,
                        source: r.get(1)?,
                        content_hash: r.get(2)?,
                        metadata: r.get(3)?,
                        chunks: Vec::new(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut ch =
                c.prepare("SELECT text FROM vector_chunks WHERE collection_id = ?1 AND doc_id = ?2 ORDER BY seq")?;
            for d in &mut docs {
                d.chunks = ch.query_map(params![collection_id, d.doc_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
            }
            Ok(docs)
        })
    }

    /// The chunks with these ids (in no particular order; missing ids are skipped), read in one
    /// snapshot on a read-only connection, so a query never waits behind a write.
    pub fn vector_chunks(&self, collection_id: i64, ids: &[i64]) -> Result<Vec<VectorChunkRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        self.vector_chunks_with(collection_id, ids, |r| {
            out.push(VectorChunkRow {
                id: r.id,
                doc_id: r.doc_id.to_owned(),
                seq: r.seq,
                text: r.text.to_owned(),
                source: r.source.map(str::to_owned),
                metadata: r.metadata.to_owned(),
                embedding: r.embedding.to_vec(),
            })
        })?;
        Ok(out)
    }

    /// Calls `f` with each of the chunks with these ids (in no particular order; missing ids are
    /// skipped), borrowed from SQLite's row: one statement for all of them (one snapshot, one
    /// cached prepared statement whatever the number of ids), on a read-only connection, so a
    /// query never waits behind a write and copies only what it keeps.
    pub fn vector_chunks_with(
        &self,
        collection_id: i64,
        ids: &[i64],
        mut f: impl FnMut(VectorChunkRef<'_>),
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // The ids as a JSON array for json_each: one statement text for any number of ids.
        let mut list = String::with_capacity(ids.len() * 8 + 2);
        for (i, id) in ids.iter().enumerate() {
            let _ = write!(list, "{}{id}", if i == 0 { '[' } else { ',' });
        }
        list.push(']');
        self.with_read(|c| {
            let mut st = c.prepare_cached(CHUNKS_BY_ID)?;
            let mut rows = st.query(params![list, collection_id])?;
            while let Some(r) = rows.next()? {
                f(VectorChunkRef {
                    id: r.get(0)?,
                    doc_id: borrowed(r, 1, ValueRef::as_str)?,
                    seq: r.get(2)?,
                    text: borrowed(r, 3, ValueRef::as_str)?,
                    source: borrowed(r, 4, ValueRef::as_str_or_null)?,
                    metadata: borrowed(r, 5, ValueRef::as_str)?,
                    embedding: borrowed(r, 6, ValueRef::as_blob)?,
                });
            }
            Ok(())
        })
    }

    /// Ids of the chunks whose document's metadata passes every condition (on a read-only
    /// connection).
    pub fn vector_filtered_chunk_ids(
        &self,
        collection_id: i64,
        conditions: &[VectorFilterCondition],
    ) -> Result<Vec<i64>, StoreError> {
        let mut sql = String::from(
            "SELECT k.id FROM vector_chunks k JOIN vector_documents d
             ON d.collection_id = k.collection_id AND d.doc_id = k.doc_id WHERE k.collection_id = ?",
        );
        let mut args: Vec<SqlValue> = vec![SqlValue::Integer(collection_id)];
        for (key, values) in conditions {
            let path = format!("$.\"{key}\"");
            let mut alts = Vec::new();
            for v in values {
                match v {
                    VectorFilterValue::Text(s) => {
                        alts.push("(json_type(d.metadata, ?) = 'text' AND json_extract(d.metadata, ?) = ?)");
                        args.extend([
                            SqlValue::Text(path.clone()),
                            SqlValue::Text(path.clone()),
                            SqlValue::Text(s.clone()),
                        ]);
                    }
                    VectorFilterValue::Number(n) => {
                        alts.push(
                            "(json_type(d.metadata, ?) IN ('integer', 'real') AND json_extract(d.metadata, ?) = ?)",
                        );
                        args.extend([SqlValue::Text(path.clone()), SqlValue::Text(path.clone()), SqlValue::Real(*n)]);
                    }
                    VectorFilterValue::Bool(b) => {
                        alts.push("json_type(d.metadata, ?) = ?");
                        args.extend([
                            SqlValue::Text(path.clone()),
                            SqlValue::Text(if *b { "true" } else { "false" }.into()),
                        ]);
                    }
                }
            }
            if alts.is_empty() {
                sql.push_str(" AND 0");
            } else {
                sql.push_str(" AND (");
                sql.push_str(&alts.join(" OR "));
                sql.push(')');
            }
        }
        self.with_read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            st.query_map(params_from_iter(args.iter()), |r| r.get(0))?.collect()
        })
    }

    /// Up to `limit` `(chunk id, embedding bytes)` with ids above `after`, in id order.
    pub fn vector_embeddings_page(
        &self,
        collection_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, embedding FROM vector_chunks WHERE collection_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            st.query_map(params![collection_id, after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    /// One chunk's embedding bytes.
    pub fn vector_embedding(&self, collection_id: i64, chunk_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT embedding FROM vector_chunks WHERE id = ?1 AND collection_id = ?2",
                params![chunk_id, collection_id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Changes after `seq`, in order.
    pub fn vector_changes_after(&self, collection_id: i64, seq: i64) -> Result<Vec<VectorChange>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT seq, chunk_id, added FROM vector_changes WHERE collection_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            st.query_map(params![collection_id, seq], |r| {
                Ok(VectorChange { seq: r.get(0)?, chunk_id: r.get(1)?, added: r.get::<_, i64>(2)? != 0 })
            })?
            .collect()
        })
    }

    /// Drops changes up to `seq` (an index file current with `seq` is saved).
    pub fn vector_prune_changes(&self, collection_id: i64, seq: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "DELETE FROM vector_changes WHERE collection_id = ?1 AND seq <= ?2",
                params![collection_id, seq],
            )?;
            tx.execute(
                "UPDATE vector_collections SET pruned_seq = max(pruned_seq, ?2) WHERE id = ?1",
                params![collection_id, seq],
            )?;
            tx.commit()
        })
    }
}

fn delete_collection_rows(tx: &rusqlite::Transaction<'_>, id: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM vector_chunks WHERE collection_id = ?1", [id])?;
    tx.execute("DELETE FROM vector_documents WHERE collection_id = ?1", [id])?;
    tx.execute("DELETE FROM vector_changes WHERE collection_id = ?1", [id])?;
    tx.execute("DELETE FROM vector_collections WHERE id = ?1", [id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, meta: &str, chunks: usize) -> VectorDocInput {
        VectorDocInput {
            doc_id: id.into(),
            source: Some(format!("/docs/{id}")),
            content_hash: format!("sha256:{id}"),
            metadata: meta.into(),
            chunks: (0..chunks).map(|i| (format!("{id} chunk {i}"), vec![i as u8; 8])).collect(),
        }
    }

    #[test]
    fn writes_log_changes_and_filters_match_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        let id = store.vector_create_collection("notes", "{}", 1).unwrap().unwrap();
        assert_eq!(store.vector_create_collection("notes", "{}", 1).unwrap(), None);
        let out = store
            .vector_upsert(id, &[doc("a", r#"{"lang":"rust","n":2,"ok":true}"#, 2), doc("b", r#"{"lang":"go"}"#, 1)], 5)
            .unwrap();
        assert_eq!(out.added.len(), 3);
        assert_eq!(out.head_seq, 3);
        // Rewriting a document removes its old chunks and logs both sides.
        let out = store.vector_upsert(id, &[doc("a", r#"{"lang":"rust","n":2,"ok":true}"#, 1)], 6).unwrap();
        assert_eq!((out.removed.len(), out.added.len(), out.existed), (2, 1, 1));
        let changes = store.vector_changes_after(id, 3).unwrap();
        assert_eq!(changes.iter().filter(|c| !c.added).count(), 2);
        assert_eq!(store.vector_collection("notes").unwrap().unwrap().chunks, 2);

        let text = |s: &str| VectorFilterValue::Text(s.into());
        let ids = store.vector_filtered_chunk_ids(id, &[("lang".into(), vec![text("rust")])]).unwrap();
        assert_eq!(ids, out.added);
        let ids = store.vector_filtered_chunk_ids(id, &[("lang".into(), vec![text("rust"), text("go")])]).unwrap();
        assert_eq!(ids.len(), 2);
        let num = store.vector_filtered_chunk_ids(id, &[("n".into(), vec![VectorFilterValue::Number(2.0)])]).unwrap();
        assert_eq!(num.len(), 1);
        // A string "2" is not the number 2; a boolean is not 1.
        assert!(store.vector_filtered_chunk_ids(id, &[("n".into(), vec![text("2")])]).unwrap().is_empty());
        let b = store.vector_filtered_chunk_ids(id, &[("ok".into(), vec![VectorFilterValue::Bool(true)])]).unwrap();
        assert_eq!(b.len(), 1);

        let rows = store.vector_chunks(id, &out.added).unwrap();
        assert_eq!(rows[0].doc_id, "a");
        assert_eq!(rows[0].source.as_deref(), Some("/docs/a"));
        assert_eq!(rows[0].embedding, vec![0u8; 8]);

        store.vector_prune_changes(id, 4).unwrap();
        let c = store.vector_collection("notes").unwrap().unwrap();
        assert_eq!(c.pruned_seq, 4);
        assert!(store.vector_changes_after(id, 0).unwrap().iter().all(|c| c.seq > 4));

        let del = store.vector_delete_documents(id, &["b".into(), "zz".into()]).unwrap();
        assert_eq!((del.existed, del.removed.len()), (1, 1));
        let hashes = store.vector_content_hashes(id, &["a".into(), "b".into()]).unwrap();
        assert_eq!(hashes, vec![("a".to_string(), "sha256:a".to_string())]);
    }

    #[test]
    fn chunks_by_id_are_looked_up_by_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        let plan: Vec<String> = store
            .with(|c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {CHUNKS_BY_ID}"))?;
                st.query_map(params!["[1,2]", 1], |r| r.get(3))?.collect()
            })
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("SEARCH k USING INTEGER PRIMARY KEY")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("SCAN k") || p.contains("vector_chunks_by_doc")), "{plan:?}");
    }

    #[test]
    fn replace_swaps_names_and_delete_cascades() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ondevice.db")).unwrap();
        let old = store.vector_create_collection("kb", "{\"v\":1}", 1).unwrap().unwrap();
        let new = store.vector_create_collection("kb.reembed", "{\"v\":2}", 1).unwrap().unwrap();
        store.vector_upsert(old, &[doc("a", "{}", 2)], 1).unwrap();
        store.vector_upsert(new, &[doc("a", "{}", 3)], 1).unwrap();
        assert_eq!(store.vector_replace_collection("kb.reembed", "kb").unwrap(), Some(Some(old)));
        let kb = store.vector_collection("kb").unwrap().unwrap();
        assert_eq!((kb.id, kb.chunks, kb.spec.as_str()), (new, 3, "{\"v\":2}"));
        assert!(store.vector_collection("kb.reembed").unwrap().is_none());
        assert_eq!(store.vector_replace_collection("missing", "kb").unwrap(), None);
        let page = store.vector_documents_page(new, None, 10).unwrap();
        assert_eq!(page[0].chunks.len(), 3);
        assert_eq!(store.vector_delete_collection("kb").unwrap(), Some(new));
        assert!(store.vector_embeddings_page(new, 0, 10).unwrap().is_empty());
        assert!(store.vector_collections().unwrap().is_empty());
    }
}
