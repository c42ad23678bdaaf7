//! Process-wide counters of registry operations (for the daemon's `/metrics`): how many of each
//! operation ended ok or with an error, and the time they took. The daemon's operations go
//! through [`crate::service::RegistryModels`] and [`crate::jobs::Pulls`], which count here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A registry operation that is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Import of a file, directory or bundle.
    Import,
    /// Registering a model under a second name.
    Copy,
    /// Removal of models.
    Remove,
    /// Pinning or unpinning.
    Pin,
    /// Re-hashing blobs.
    Verify,
    /// Garbage collection of blobs and partial files.
    Gc,
    /// Export as a bundle.
    Export,
    /// Submission of a pull job (the download itself is the job's).
    Pull,
}

impl Op {
    /// Every operation, in the order [`snapshot`] lists them.
    pub const ALL: [Op; 8] = [Op::Import, Op::Copy, Op::Remove, Op::Pin, Op::Verify, Op::Gc, Op::Export, Op::Pull];

    /// The label value (`import`, `pull`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Import => "import",
            Op::Copy => "copy",
            Op::Remove => "remove",
            Op::Pin => "pin",
            Op::Verify => "verify",
            Op::Gc => "gc",
            Op::Export => "export",
            Op::Pull => "pull",
        }
    }

    fn index(self) -> usize {
        match self {
            Op::Import => 0,
            Op::Copy => 1,
            Op::Remove => 2,
            Op::Pin => 3,
            Op::Verify => 4,
            Op::Gc => 5,
            Op::Export => 6,
            Op::Pull => 7,
        }
    }
}

/// Counts by operation: [ok, error].
static COUNTS: [[AtomicU64; 2]; 8] = [const { [const { AtomicU64::new(0) }; 2] }; 8];
/// Total time by operation, in microseconds.
static MICROS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Counts one finished operation and its duration.
pub fn record(op: Op, ok: bool, took: Duration) {
    let i = op.index();
    COUNTS[i][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    MICROS[i].fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// One operation's counts so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpCounts {
    /// The operation.
    pub op: Op,
    /// Ended ok.
    pub ok: u64,
    /// Ended with an error.
    pub error: u64,
    /// Total time of all of them, in seconds.
    pub seconds: f64,
}

/// The counts of this process so far, every operation.
pub fn snapshot() -> Vec<OpCounts> {
    Op::ALL
        .into_iter()
        .map(|op| {
            let i = op.index();
            OpCounts {
                op,
                ok: COUNTS[i][0].load(Ordering::Relaxed),
                error: COUNTS[i][1].load(Ordering::Relaxed),
                seconds: MICROS[i].load(Ordering::Relaxed) as f64 / 1e6,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(op: Op) -> OpCounts {
        snapshot().into_iter().find(|c| c.op == op).expect("every op is listed")
    }

    #[test]
    fn record_counts_by_op_and_outcome() {
        // Other tests of this process may count too: compare deltas of one op only they don't use.
        let before = get(Op::Copy);
        record(Op::Copy, true, Duration::from_millis(1500));
        record(Op::Copy, false, Duration::from_millis(500));
        record(Op::Copy, true, Duration::ZERO);
        let after = get(Op::Copy);
        assert_eq!(after.ok - before.ok, 2);
        assert_eq!(after.error - before.error, 1);
        assert!((after.seconds - before.seconds - 2.0).abs() < 1e-6, "{after:?} vs {before:?}");
        assert_eq!(snapshot().len(), Op::ALL.len());
        let labels: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Op::ALL.len());
    }
}
