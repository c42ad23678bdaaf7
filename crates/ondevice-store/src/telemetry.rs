//! Persistence for opt-in telemetry: the consent record and install id (`telemetry_state`, a
//! small key/value table) and the outbox (`telemetry_outbox`): each event is stored with the exact
//! bytes that will be sent before any attempt, and deleted only once the endpoint acknowledged it,
//! so a killed daemon sends it again after restart (at least once; the event id lets the receiver
//! drop duplicates).

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// The tables, appended to `MIGRATIONS`.
pub(crate) const MIGRATION: &str = "CREATE TABLE telemetry_state (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE telemetry_outbox (
        id              TEXT PRIMARY KEY NOT NULL,
        created_at      INTEGER NOT NULL,
        body            TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT
    ) STRICT;";

/// Events kept in the outbox at most: beyond it the oldest are dropped (telemetry never grows
/// without bound while an endpoint is unreachable).
pub const OUTBOX_MAX_EVENTS: i64 = 500;

/// One event waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The dedupe id the receiver sees.
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The exact body that is sent.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Unix seconds before which no new attempt is made.
    pub next_attempt_at: i64,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        created_at: r.get(1)?,
        body: r.get(2)?,
        attempts: r.get(3)?,
        next_attempt_at: r.get(4)?,
        last_error: r.get(5)?,
    })
}

impl Store {
    /// One telemetry state value (`install_id`, `consent_version`, `enabled`, ...).
    pub fn telemetry_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| c.query_row("SELECT value FROM telemetry_state WHERE key = ?1", [key], |r| r.get(0)).optional())
    }

    /// Sets several telemetry state values at once (one transaction).
    pub fn telemetry_set(&self, values: &[(&str, &str)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for (k, v) in values {
                tx.execute(
                    "INSERT INTO telemetry_state (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![k, v],
                )?;
            }
            tx.commit()
        })
    }

    /// Adds an event (an id already queued is left as it is); drops the oldest beyond
    /// [`OUTBOX_MAX_EVENTS`].
    pub fn outbox_push(&self, id: &str, created_at: i64, body: &str) -> Result<(), StoreError> {
        self.outbox_push_with(id, created_at, body, &[])
    }

    /// [`Store::outbox_push`] and [`Store::telemetry_set`] in one transaction (a report and the
    /// state recording it, such as its sequence number, are kept together or not at all).
    pub fn outbox_push_with(
        &self,
        id: &str,
        created_at: i64,
        body: &str,
        state: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let c = c.unchecked_transaction()?;
            for (k, v) in state {
                c.execute(
                    "INSERT INTO telemetry_state (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![k, v],
                )?;
            }
            c.execute(
                "INSERT INTO telemetry_outbox (id, created_at, body) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![id, created_at, body],
            )?;
            c.execute(
                "DELETE FROM telemetry_outbox WHERE id NOT IN
                 (SELECT id FROM telemetry_outbox ORDER BY created_at DESC, id DESC LIMIT ?1)",
                [OUTBOX_MAX_EVENTS],
            )?;
            c.commit()
        })
    }

    /// Events due at `now` (oldest first), at most `limit`.
    pub fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, created_at, body, attempts, next_attempt_at, last_error FROM telemetry_outbox
                 WHERE next_attempt_at <= ?1 ORDER BY created_at, id LIMIT ?2",
            )?;
            st.query_map(params![now, limit.min(i64::MAX as usize) as i64], from_row)?.collect()
        })
    }

    /// Every queued event, oldest first.
    pub fn outbox_all(&self) -> Result<Vec<OutboxRow>, StoreError> {
        self.outbox_due(i64::MAX, usize::MAX)
    }

    /// Removes acknowledged events.
    pub fn outbox_ack(&self, ids: &[String]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for id in ids {
                tx.execute("DELETE FROM telemetry_outbox WHERE id = ?1", [id])?;
            }
            tx.commit()
        })
    }

    /// Records a failed attempt: the next one waits until `next_attempt_at`.
    pub fn outbox_failed(&self, ids: &[String], next_attempt_at: i64, error: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for id in ids {
                tx.execute(
                    "UPDATE telemetry_outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
                     WHERE id = ?1",
                    params![id, next_attempt_at, error],
                )?;
            }
            tx.commit()
        })
    }

    /// Empties the outbox (telemetry turned off: nothing queued is sent later).
    pub fn outbox_clear(&self) -> Result<usize, StoreError> {
        self.with(|c| c.execute("DELETE FROM telemetry_outbox", []))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_outbox_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.telemetry_get("install_id").unwrap(), None);
        s.telemetry_set(&[("install_id", "a"), ("enabled", "true")]).unwrap();
        s.telemetry_set(&[("install_id", "b")]).unwrap();
        assert_eq!(s.telemetry_get("install_id").unwrap().as_deref(), Some("b"));
        assert_eq!(s.telemetry_get("enabled").unwrap().as_deref(), Some("true"));

        s.outbox_push("e1", 10, "{\"a\":1}").unwrap();
        s.outbox_push("e2", 11, "{\"a\":2}").unwrap();
        s.outbox_push("e1", 12, "ignored").unwrap();
        let due = s.outbox_due(100, 10).unwrap();
        assert_eq!(due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["e1", "e2"]);
        assert_eq!(due[0].body, "{\"a\":1}");
        s.outbox_failed(&["e1".into()], 200, "refused").unwrap();
        assert_eq!(s.outbox_due(100, 10).unwrap().len(), 1);
        let all = s.outbox_all().unwrap();
        assert_eq!(all[0].attempts, 1);
        assert_eq!(all[0].last_error.as_deref(), Some("refused"));
        s.outbox_ack(&["e2".into()]).unwrap();
        assert_eq!(s.outbox_all().unwrap().len(), 1);
        for i in 0..(OUTBOX_MAX_EVENTS + 5) {
            s.outbox_push(&format!("x{i:05}"), 1000 + i, "{}").unwrap();
        }
        assert_eq!(s.outbox_all().unwrap().len() as i64, OUTBOX_MAX_EVENTS);
        assert_eq!(s.outbox_clear().unwrap() as i64, OUTBOX_MAX_EVENTS);
    }
}
