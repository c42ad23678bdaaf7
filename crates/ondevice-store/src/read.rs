//! Read-only connections for hot read paths (vector queries), so they neither wait behind a
//! writer's transaction on the shared connection (WAL lets readers run beside one writer) nor read
//! every page through a system call: each has the database memory-mapped (`mmap_size`) and a larger
//! page cache. A small pool keeps them, with their prepared statements, between calls.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

/// Connections kept between calls (more are opened under concurrency and closed after).
const KEEP: usize = 4;

/// Bytes of the database a read connection maps into memory (address space only).
#[cfg(target_pointer_width = "64")]
const MMAP_BYTES: i64 = 1 << 30;
#[cfg(not(target_pointer_width = "64"))]
const MMAP_BYTES: i64 = 64 << 20;

/// Page cache per read connection, in KiB (SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 16 * 1024;

#[derive(Default)]
pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn open(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        Ok(conn)
    }

    /// Runs `f` on an idle read connection (opening one when none is idle).
    pub(crate) fn with<T>(
        &self,
        path: &Path,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => Self::open(path)?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP {
            idle.push(conn);
        }
        out
    }
}
