//! Persistence for background jobs of every kind (`ondevice-jobs`): the `jobs` table
//! (migration 5, which carried the pull-only table of migration 3 over).
//!
//! A row carries what a restarted daemon needs to resume a job: its kind and typed request
//! (`spec`, JSON owned by the kind), its state, its progress, and an opaque `checkpoint` the job
//! wrote last, from which it continues after a restart, even after `kill -9`.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Job id (opaque text).
    pub id: String,
    /// Kind, such as `pull`.
    pub kind: String,
    /// The request, as JSON the kind owns.
    pub spec: String,
    /// Jobs of one kind with the same key are one job while it is queued or running.
    pub dedup_key: Option<String>,
    /// Resource class: `downloads`, `cpu-heavy` or `io`.
    pub class: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Units of work done.
    pub done: i64,
    /// Units of work in all, once known.
    pub total: Option<i64>,
    /// What the units are (`bytes`, `tensors`, `documents`, ...).
    pub unit: String,
    /// What the job is doing now, for people.
    pub message: Option<String>,
    /// Where a resumed job continues from (opaque bytes the kind wrote).
    pub checkpoint: Option<Vec<u8>>,
    /// Kind-specific detail (JSON object).
    pub detail: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
}

/// Progress as stored with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgressRow<'a> {
    /// Units done.
    pub done: i64,
    /// Units in all.
    pub total: Option<i64>,
    /// Unit name.
    pub unit: &'a str,
    /// Message.
    pub message: Option<&'a str>,
}

const JOB_COLUMNS: &str = "id, kind, spec, dedup_key, class, state, error, done, total, unit, message, checkpoint, \
                           detail, created_at, updated_at, finished_at";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        spec: r.get(2)?,
        dedup_key: r.get(3)?,
        class: r.get(4)?,
        state: r.get(5)?,
        error: r.get(6)?,
        done: r.get(7)?,
        total: r.get(8)?,
        unit: r.get(9)?,
        message: r.get(10)?,
        checkpoint: r.get(11)?,
        detail: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
        finished_at: r.get(15)?,
    })
}

const FINISHED: &str = "('succeeded', 'failed', 'cancelled')";

impl Store {
    /// Inserts a new job.
    pub fn insert_job(&self, j: &JobRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO jobs ({JOB_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                params![
                    j.id,
                    j.kind,
                    j.spec,
                    j.dedup_key,
                    j.class,
                    j.state,
                    j.error,
                    j.done,
                    j.total,
                    j.unit,
                    j.message,
                    j.checkpoint,
                    j.detail,
                    j.created_at,
                    j.updated_at,
                    j.finished_at
                ],
            )
        })
        .map(drop)
    }

    /// Sets a job's state, error, progress and detail; a finished state stamps `finished_at`.
    pub fn set_job_state(
        &self,
        id: &str,
        state: &str,
        error: Option<&str>,
        progress: JobProgressRow<'_>,
        detail: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "UPDATE jobs SET state = ?2, error = ?3, done = ?4, total = ?5, unit = ?6, message = ?7,
                         detail = ?8, updated_at = ?9,
                         finished_at = CASE WHEN ?2 IN {FINISHED} THEN ?9 ELSE NULL END
                     WHERE id = ?1"
                ),
                params![id, state, error, progress.done, progress.total, progress.unit, progress.message, detail, at],
            )
        })
        .map(drop)
    }

    /// Records a checkpoint with the progress and detail it corresponds to.
    pub fn set_job_checkpoint(
        &self,
        id: &str,
        checkpoint: &[u8],
        progress: JobProgressRow<'_>,
        detail: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET checkpoint = ?2, done = ?3, total = ?4, unit = ?5, message = ?6, detail = ?7,
                     updated_at = ?8
                 WHERE id = ?1",
                params![id, checkpoint, progress.done, progress.total, progress.unit, progress.message, detail, at],
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

    /// Jobs, oldest first, optionally of one kind and/or in one state.
    pub fn list_jobs(&self, kind: Option<&str>, state: Option<&str>) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR state = ?2)
                 ORDER BY created_at, rowid"
            ))?;
            st.query_map(params![kind, state], job_from_row)?.collect()
        })
    }

    /// Deletes finished jobs (not `queued` or `running`) last updated before `before`, and the
    /// oldest finished ones beyond the newest `keep` (newest: last updated, then last created, as
    /// timestamps are whole seconds); returns how many.
    pub fn prune_jobs(&self, before: i64, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.with(|c| {
            let old =
                c.execute(&format!("DELETE FROM jobs WHERE state IN {FINISHED} AND updated_at < ?1"), [before])?;
            let extra = c.execute(
                &format!(
                    "DELETE FROM jobs WHERE state IN {FINISHED} AND id NOT IN (
                         SELECT id FROM jobs WHERE state IN {FINISHED} ORDER BY updated_at DESC, rowid DESC LIMIT ?1)"
                ),
                [keep],
            )?;
            Ok(old + extra)
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
            dedup_key: Some("m:latest".into()),
            class: "downloads".into(),
            state: "queued".into(),
            error: None,
            done: 0,
            total: None,
            unit: "bytes".into(),
            message: None,
            checkpoint: None,
            detail: "{}".into(),
            created_at: at,
            updated_at: at,
            finished_at: None,
        }
    }

    fn progress(done: i64) -> JobProgressRow<'static> {
        JobProgressRow { done, total: Some(100), unit: "bytes", message: Some("half") }
    }

    #[test]
    fn jobs_round_trip_checkpoints_filters_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.insert_job(&job("a", 10)).unwrap();
        store.insert_job(&job("b", 20)).unwrap();
        let mut other = job("c", 30);
        other.kind = "index".into();
        store.insert_job(&other).unwrap();

        store.set_job_checkpoint("a", b"\x01\x02", progress(50), r#"{"x":1}"#, 11).unwrap();
        let a = store.get_job("a").unwrap().unwrap();
        assert_eq!(a.checkpoint.as_deref(), Some(&b"\x01\x02"[..]));
        assert_eq!((a.done, a.total, a.unit.as_str(), a.message.as_deref()), (50, Some(100), "bytes", Some("half")));
        assert_eq!(a.detail, r#"{"x":1}"#);
        assert_eq!(a.finished_at, None);

        store.set_job_state("a", "succeeded", None, progress(100), "{}", 12).unwrap();
        store.set_job_state("b", "failed", Some("boom"), progress(3), "{}", 25).unwrap();
        let b = store.get_job("b").unwrap().unwrap();
        assert_eq!((b.state.as_str(), b.error.as_deref(), b.finished_at), ("failed", Some("boom"), Some(25)));

        assert_eq!(store.list_jobs(Some("pull"), None).unwrap().len(), 2);
        assert_eq!(
            store.list_jobs(None, Some("queued")).unwrap().iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(store.list_jobs(Some("index"), Some("failed")).unwrap().len(), 0);

        // Age: "a" (updated at 12) goes; count: of the finished ones only the newest one stays.
        assert_eq!(store.prune_jobs(20, 10).unwrap(), 1);
        assert!(store.get_job("a").unwrap().is_none());
        store.insert_job(&job("d", 40)).unwrap();
        store.set_job_state("d", "cancelled", None, progress(0), "{}", 41).unwrap();
        assert_eq!(store.prune_jobs(0, 1).unwrap(), 1);
        let left: Vec<String> = store.list_jobs(None, None).unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(left, ["c", "d"], "queued jobs are never pruned; the newest finished one stays");
        // Finished in the same second (timestamps are whole seconds): the later-created job is
        // the newer one, whatever the random ids say.
        for id in ["zz", "aa"] {
            store.insert_job(&job(id, 50)).unwrap();
            store.set_job_state(id, "succeeded", None, progress(0), "{}", 51).unwrap();
        }
        assert_eq!(store.prune_jobs(0, 1).unwrap(), 2);
        let left: Vec<String> = store.list_jobs(None, None).unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(left, ["c", "aa"], "the job created last wins a tie");
    }

    #[test]
    fn pull_jobs_of_schema_four_carry_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for m in &crate::MIGRATIONS[..4] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            conn.execute(
                "INSERT INTO jobs (id, kind, spec, state, error, total_bytes, done_bytes, chunk_size, chunks, result,
                                   created_at, updated_at)
                 VALUES ('j1', 'pull', '{\"model\":\"m:latest\",\"source\":\"catalog:m\"}', 'running', NULL,
                         100, 40, 16, x'0b', NULL, 1, 2),
                        ('j2', 'pull', '{\"model\":\"n:latest\",\"source\":\"u\"}', 'succeeded', NULL,
                         5, 5, NULL, NULL, 'sha256:ab', 3, 4)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let j1 = store.get_job("j1").unwrap().unwrap();
        assert_eq!((j1.kind.as_str(), j1.state.as_str(), j1.class.as_str()), ("pull", "running", "downloads"));
        assert_eq!((j1.done, j1.total, j1.unit.as_str()), (40, Some(100), "bytes"));
        assert_eq!(j1.dedup_key.as_deref(), Some("m:latest"));
        let cp: serde_json_value::Value = serde_json_value::from_slice(j1.checkpoint.as_deref().unwrap());
        assert_eq!(cp, serde_json_value::Value::parse(r#"{"total":100,"chunk_size":16,"done_hex":"0b"}"#));
        assert_eq!(j1.finished_at, None);
        let j2 = store.get_job("j2").unwrap().unwrap();
        assert_eq!(j2.checkpoint, None);
        assert_eq!(j2.finished_at, Some(4));
        assert!(j2.detail.contains(r#""digest":"sha256:ab""#), "{}", j2.detail);
        assert!(j2.detail.contains(r#""model":"n:latest""#), "{}", j2.detail);
    }

    /// Compares JSON texts without a JSON dependency: SQLite normalises both.
    mod serde_json_value {
        #[derive(Debug, PartialEq)]
        pub struct Value(String);
        impl Value {
            pub fn parse(s: &str) -> Value {
                let c = rusqlite::Connection::open_in_memory().unwrap();
                Value(c.query_row("SELECT json(?1)", [s], |r| r.get(0)).unwrap())
            }
        }
        pub fn from_slice(b: &[u8]) -> Value {
            Value::parse(std::str::from_utf8(b).unwrap())
        }
    }
}
