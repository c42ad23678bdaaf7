//! Persistence for background jobs (model pulls): the `jobs` table (migration 3).
//!
//! A job row carries what a restarted daemon needs to resume: the request (`spec`, JSON written
//! and read by `ondevice-registry`), the state, and the download's chunk bookkeeping (a bitmap of
//! finished chunks), so a resumed pull fetches only the chunks that were not finished.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Job id (opaque text chosen by the registry).
    pub id: String,
    /// Kind, such as `pull`.
    pub kind: String,
    /// The request, as JSON the registry owns.
    pub spec: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes to download, once known.
    pub total_bytes: Option<i64>,
    /// Bytes downloaded and recorded.
    pub done_bytes: i64,
    /// Chunk size of the bitmap, once the download started.
    pub chunk_size: Option<i64>,
    /// Bitmap of finished chunks (bit `i % 8` of byte `i / 8`).
    pub chunks: Vec<u8>,
    /// The model registered on success (`name:tag`).
    pub result: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

const JOB_COLUMNS: &str =
    "id, kind, spec, state, error, total_bytes, done_bytes, chunk_size, chunks, result, created_at, updated_at";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        spec: r.get(2)?,
        state: r.get(3)?,
        error: r.get(4)?,
        total_bytes: r.get(5)?,
        done_bytes: r.get(6)?,
        chunk_size: r.get(7)?,
        chunks: r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default(),
        result: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

impl Store {
    /// Inserts a new job.
    pub fn insert_job(&self, j: &JobRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    j.id,
                    j.kind,
                    j.spec,
                    j.state,
                    j.error,
                    j.total_bytes,
                    j.done_bytes,
                    j.chunk_size,
                    j.chunks,
                    j.result,
                    j.created_at,
                    j.updated_at
                ],
            )
        })
        .map(drop)
    }

    /// Sets a job's state, error and result.
    pub fn set_job_state(
        &self,
        id: &str,
        state: &str,
        error: Option<&str>,
        result: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = ?2, error = ?3, result = ?4, updated_at = ?5 WHERE id = ?1",
                params![id, state, error, result, at],
            )
        })
        .map(drop)
    }

    /// Records download progress: total size, chunk size, finished-chunk bitmap and byte count.
    pub fn set_job_progress(
        &self,
        id: &str,
        total_bytes: Option<i64>,
        chunk_size: Option<i64>,
        chunks: &[u8],
        done_bytes: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET total_bytes = ?2, chunk_size = ?3, chunks = ?4, done_bytes = ?5, updated_at = ?6
                 WHERE id = ?1",
                params![id, total_bytes, chunk_size, chunks, done_bytes, at],
            )
        })
        .map(drop)
    }

    /// One job.
    pub fn get_job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        self.with(|c| {
            c.query_row(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"), [id], job_from_row).optional()
        })
    }

    /// Every job, oldest first.
    pub fn list_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at, id"))?;
            st.query_map([], job_from_row)?.collect()
        })
    }

    /// Deletes finished jobs (not `queued` or `running`) last updated before `before`; returns how many.
    pub fn prune_jobs(&self, before: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND updated_at < ?1", [before])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, at: i64) -> JobRow {
        JobRow {
            id: id.into(),
            kind: "pull".into(),
            spec: "{}".into(),
            state: "queued".into(),
            error: None,
            total_bytes: None,
            done_bytes: 0,
            chunk_size: None,
            chunks: Vec::new(),
            result: None,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn jobs_round_trip_progress_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ondevice.db");
        let store = Store::open(&db).unwrap();
        assert_eq!(store.schema_version().unwrap(), 3);
        store.insert_job(&job("b", 2)).unwrap();
        store.insert_job(&job("a", 1)).unwrap();
        assert!(store.insert_job(&job("a", 1)).is_err(), "ids are unique");
        store.set_job_progress("a", Some(100), Some(10), &[0b101], 20, 5).unwrap();
        store.set_job_state("b", "failed", Some("boom"), None, 6).unwrap();
        drop(store);

        let store = Store::open(&db).unwrap();
        let jobs = store.list_jobs().unwrap();
        assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let a = store.get_job("a").unwrap().unwrap();
        assert_eq!(
            (a.total_bytes, a.chunk_size, a.chunks.as_slice(), a.done_bytes),
            (Some(100), Some(10), &[5u8][..], 20)
        );
        let b = store.get_job("b").unwrap().unwrap();
        assert_eq!((b.state.as_str(), b.error.as_deref()), ("failed", Some("boom")));
        assert_eq!(store.prune_jobs(10).unwrap(), 1, "only the finished job goes");
        assert!(store.get_job("b").unwrap().is_none());
        assert!(store.get_job("a").unwrap().is_some());
        assert!(store.get_job("nope").unwrap().is_none());
    }
}
