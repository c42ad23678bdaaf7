//! Persistence for the egress ledger: the `egress` table, one row per outbound connection the
//! daemon made or refused (purpose, host, port, time, bytes each way, whether the peer was a
//! loopback address, and the outcome). Bounded: [`Store::prune_egress`] keeps rows by age and
//! count; [`Store::record_egress`] prunes every few hundred inserts.
//!
//! Rows never hold a URL's path or query, only its host and port.

use rusqlite::{Row, params};

use crate::{Store, StoreError};

/// The table, appended to `MIGRATIONS`.
pub(crate) const MIGRATION: &str = "CREATE TABLE egress (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        purpose    TEXT NOT NULL,
        host       TEXT NOT NULL,
        port       INTEGER NOT NULL,
        loopback   INTEGER NOT NULL,
        outcome    TEXT NOT NULL,
        sent       INTEGER NOT NULL DEFAULT 0,
        received   INTEGER NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        error      TEXT
    ) STRICT;
    CREATE INDEX egress_by_time ON egress (at);";

/// Rows kept at most (the oldest go first).
pub const EGRESS_MAX_ROWS: i64 = 10_000;
/// Rows older than this many seconds are removed (30 days).
pub const EGRESS_MAX_AGE_S: i64 = 30 * 24 * 3600;

/// One outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRow {
    /// Insertion order (0 before insertion).
    pub seq: i64,
    /// Unix seconds when the connection was opened (or refused).
    pub at: i64,
    /// What it was for: `pull`, `runtime`, `telemetry`, `webhook`.
    pub purpose: String,
    /// Host name or address, without user, path or query.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the host is a loopback name or address.
    pub loopback: bool,
    /// `ok`, `error` or `blocked` (refused by offline mode).
    pub outcome: String,
    /// Bytes sent (request bodies; headers not counted).
    pub sent: u64,
    /// Bytes received (response bodies read).
    pub received: u64,
    /// How long it lasted.
    pub duration_ms: u64,
    /// Why it failed or was blocked.
    pub error: Option<String>,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<EgressRow> {
    Ok(EgressRow {
        seq: r.get(0)?,
        at: r.get(1)?,
        purpose: r.get(2)?,
        host: r.get(3)?,
        port: r.get::<_, i64>(4)?.clamp(0, 65535) as u16,
        loopback: r.get::<_, i64>(5)? != 0,
        outcome: r.get(6)?,
        sent: r.get::<_, i64>(7)?.max(0) as u64,
        received: r.get::<_, i64>(8)?.max(0) as u64,
        duration_ms: r.get::<_, i64>(9)?.max(0) as u64,
        error: r.get(10)?,
    })
}

impl Store {
    /// Appends one row (its `seq` is ignored); every 256th insert prunes by age and count.
    pub fn record_egress(&self, row: &EgressRow) -> Result<i64, StoreError> {
        let seq = self.with(|c| {
            c.execute(
                "INSERT INTO egress (at, purpose, host, port, loopback, outcome, sent, received, duration_ms, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    row.at,
                    row.purpose,
                    row.host,
                    i64::from(row.port),
                    i64::from(row.loopback),
                    row.outcome,
                    row.sent.min(i64::MAX as u64) as i64,
                    row.received.min(i64::MAX as u64) as i64,
                    row.duration_ms.min(i64::MAX as u64) as i64,
                    row.error,
                ],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        if seq % 256 == 0 {
            self.prune_egress(row.at - EGRESS_MAX_AGE_S, EGRESS_MAX_ROWS)?;
        }
        Ok(seq)
    }

    /// The newest `limit` rows, newest first; only those with `seq > after` when given.
    pub fn list_egress(&self, limit: usize, after: Option<i64>) -> Result<Vec<EgressRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT seq, at, purpose, host, port, loopback, outcome, sent, received, duration_ms, error
                 FROM egress WHERE seq > ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            st.query_map(params![after.unwrap_or(0), limit.min(i64::MAX as usize) as i64], from_row)?.collect()
        })
    }

    /// Removes rows older than `before` (unix seconds) and all but the newest `keep`; returns how
    /// many went.
    pub fn prune_egress(&self, before: i64, keep: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            let old = c.execute("DELETE FROM egress WHERE at < ?1", [before])?;
            let over = c.execute(
                "DELETE FROM egress WHERE seq <= (SELECT seq FROM egress ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                [keep.max(0)],
            )?;
            Ok(old + over)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: i64, host: &str) -> EgressRow {
        EgressRow {
            seq: 0,
            at,
            purpose: "pull".into(),
            host: host.into(),
            port: 443,
            loopback: false,
            outcome: "ok".into(),
            sent: 10,
            received: 2000,
            duration_ms: 5,
            error: None,
        }
    }

    #[test]
    fn rows_round_trip_newest_first_and_prune_by_age_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        for i in 0..10 {
            s.record_egress(&row(1000 + i, &format!("h{i}.example"))).unwrap();
        }
        let all = s.list_egress(100, None).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].host, "h9.example");
        assert_eq!(all[0].received, 2000);
        assert_eq!(s.list_egress(100, Some(all[1].seq)).unwrap().len(), 1);
        // Age: rows before 1003 go; count: 4 newest stay.
        assert_eq!(s.prune_egress(1003, 100).unwrap(), 3);
        assert_eq!(s.prune_egress(0, 4).unwrap(), 3);
        let left = s.list_egress(100, None).unwrap();
        assert_eq!(
            left.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
            ["h9.example", "h8.example", "h7.example", "h6.example"]
        );
    }
}
