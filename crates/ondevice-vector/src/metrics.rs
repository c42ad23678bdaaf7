//! What the vector store observes for the daemon's `/metrics`: a latency histogram of queries
//! (by backend and by what was searched with, text or vector) and the progress of running `index`
//! jobs. Lock-free counters for the histogram; a small map for the jobs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the query latency histogram's buckets (`+Inf` is implied).
pub const QUERY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative), the last one is `+Inf`.
    buckets: [AtomicU64; QUERY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = QUERY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(QUERY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self, backend: &'static str, input: &'static str) -> QueryLatency {
        let mut acc = 0;
        let mut cumulative = Vec::with_capacity(QUERY_BUCKETS.len() + 1);
        for b in &self.buckets {
            acc += b.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        QueryLatency {
            backend,
            input,
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A query latency histogram as read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryLatency {
    /// `embedded` or `pgvector`.
    pub backend: &'static str,
    /// `text` (embedding the query included) or `vector`.
    pub input: &'static str,
    /// Cumulative counts per bucket of [`QUERY_BUCKETS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    /// Queries observed.
    pub count: u64,
    /// Their total time.
    pub sum_seconds: f64,
}

/// A running `index` job's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexProgress {
    /// The job id.
    pub job: String,
    /// The collection.
    pub collection: String,
    /// Files finished (indexed, unchanged or skipped).
    pub files_done: u64,
    /// Files found by the walk.
    pub files_total: u64,
    /// Chunks written by this run.
    pub chunks: u64,
}

/// A histogram per (backend, input).
type Histograms = Vec<((&'static str, &'static str), std::sync::Arc<Histogram>)>;

/// The store's observations (see the module docs).
#[derive(Debug, Default)]
pub struct Observed {
    /// (backend, input) → histogram; few and fixed, so a small vector.
    queries: Mutex<Histograms>,
    jobs: Mutex<BTreeMap<String, IndexProgress>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Observed {
    /// Records one answered query.
    pub fn query(&self, backend: &'static str, input: &'static str, took: Duration) {
        let h = {
            let mut q = lock(&self.queries);
            match q.iter().find(|(k, _)| *k == (backend, input)) {
                Some((_, h)) => h.clone(),
                None => {
                    let h = std::sync::Arc::new(Histogram::default());
                    q.push(((backend, input), h.clone()));
                    h
                }
            }
        };
        h.observe(took);
    }

    /// Every query histogram, by backend and input.
    pub fn query_latencies(&self) -> Vec<QueryLatency> {
        let mut v: Vec<QueryLatency> = lock(&self.queries).iter().map(|((b, i), h)| h.snapshot(b, i)).collect();
        v.sort_by_key(|q| (q.backend, q.input));
        v
    }

    /// Sets a running index job's progress.
    pub fn index_progress(&self, p: IndexProgress) {
        lock(&self.jobs).insert(p.job.clone(), p);
    }

    /// Forgets a finished index job.
    pub fn index_finished(&self, job: &str) {
        lock(&self.jobs).remove(job);
    }

    /// Running index jobs, by id.
    pub fn index_jobs(&self) -> Vec<IndexProgress> {
        lock(&self.jobs).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let o = Observed::default();
        o.query("embedded", "text", Duration::from_micros(300));
        o.query("embedded", "text", Duration::from_millis(20));
        o.query("embedded", "text", Duration::from_secs(5));
        o.query("pgvector", "vector", Duration::from_millis(2));
        let q = o.query_latencies();
        assert_eq!(q.len(), 2);
        let e = &q[0];
        assert_eq!((e.backend, e.input, e.count), ("embedded", "text", 3));
        assert_eq!(e.cumulative[0], 1, "0.3 ms is within 0.5 ms");
        assert_eq!(e.cumulative[QUERY_BUCKETS.iter().position(|b| *b == 0.025).unwrap()], 2);
        assert_eq!(e.cumulative[QUERY_BUCKETS.len() - 1], 2, "5 s is past the last bound");
        assert_eq!(*e.cumulative.last().unwrap(), 3);
        assert!((e.sum_seconds - 5.0203).abs() < 1e-6, "{}", e.sum_seconds);
        assert_eq!(q[1].cumulative[QUERY_BUCKETS.iter().position(|b| *b == 0.0025).unwrap()], 1);
    }

    #[test]
    fn index_jobs_appear_while_running() {
        let o = Observed::default();
        o.index_progress(IndexProgress {
            job: "j1".into(),
            collection: "c".into(),
            files_total: 4,
            ..Default::default()
        });
        o.index_progress(IndexProgress {
            job: "j1".into(),
            collection: "c".into(),
            files_done: 2,
            files_total: 4,
            chunks: 7,
        });
        assert_eq!(o.index_jobs().len(), 1);
        assert_eq!(o.index_jobs()[0].files_done, 2);
        o.index_finished("j1");
        assert!(o.index_jobs().is_empty());
    }
}
