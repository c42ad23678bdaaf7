//! `[jobs]`: the background job queue (pulls, quantizations, indexing, bundles) — how many jobs
//! of each resource class run at once, and how long finished jobs are kept. Pulls count against
//! `registry.max_concurrent_jobs` (the `downloads` class).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[jobs]`: concurrency per resource class and retention of finished jobs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSettings {
    /// CPU-heavy jobs (conversion, quantization, embedding) running at once; more wait queued.
    pub cpu_heavy: u32,
    /// Disk-bound jobs (bundles, exports, verification) running at once; more wait queued.
    pub io: u32,
    /// Finished jobs (succeeded, failed, cancelled) are deleted after this many days.
    pub keep_finished_days: u32,
    /// At most this many finished jobs are kept (the newest).
    pub keep_finished: u32,
}

impl Default for JobsSettings {
    fn default() -> Self {
        JobsSettings { cpu_heavy: 1, io: 2, keep_finished_days: 7, keep_finished: 500 }
    }
}

impl JobsSettings {
    /// Checks values that single fields cannot express; errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in
            [("jobs.cpu_heavy", self.cpu_heavy), ("jobs.io", self.io), ("jobs.keep_finished", self.keep_finished)]
        {
            if v == 0 {
                return Err((key, "must be at least 1".to_owned()));
            }
        }
        Ok(())
    }
}
