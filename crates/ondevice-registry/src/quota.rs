//! Disk quota awareness: how much the registry holds, how much the disk has, and least-recently
//! used eviction of unpinned models to make room.

use std::path::Path;

use crate::{BlobError, ModelRecord, Registry, RegistryError};

/// Why [`Registry::reserve`] refused.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// It does not fit.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The registry failed while making room.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Space rules for downloads (from `[registry]`).
#[derive(Debug, Clone, Default)]
pub struct QuotaPolicy {
    /// Most bytes the blob store may hold (finished blobs plus reserved downloads).
    pub quota: Option<u64>,
    /// Remove least recently used unpinned models when a download does not fit.
    pub evict: bool,
    /// Bytes always left free on the disk.
    pub min_free: u64,
}

/// A download that does not fit; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Over the configured quota.
    #[error(
        "not enough room for {model}: it needs {} but only {} is left under the quota of {}; remove models (`ondevice models rm`, then `ondevice models gc`), raise [registry] quota, or set [registry] evict = true",
        human(*needed), human(*available), human(*quota)
    )]
    Exceeded {
        /// The model being pulled.
        model: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left under the quota.
        available: u64,
        /// The quota.
        quota: u64,
    },
    /// Not enough free disk space.
    #[error(
        "not enough disk space for {model} in {path}: it needs {} but only {} is free (keeping {} free); free some space or remove models",
        human(*needed), human(*free), human(*min_free)
    )]
    DiskFull {
        /// The model being pulled.
        model: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// Bytes kept free.
        min_free: u64,
        /// The data directory.
        path: String,
    },
}

/// `1.5 GiB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Free bytes on the filesystem holding `path`, if the platform says. `None` means "unknown": the
/// caller skips the free-space check (the quota still applies).
pub fn free_space(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        match nix::sys::statvfs::statvfs(path) {
            // The field types differ by platform (32-bit block counts on macOS).
            #[allow(clippy::unnecessary_cast)]
            Ok(st) => Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read free disk space; pulls skip the free-space check");
                None
            }
        }
    }
    // No dependency in the workspace reads free space portably (no fs4/fs2/sysinfo in
    // Cargo.lock), so elsewhere the check is skipped, said once in the log; `[registry] quota`
    // still bounds what pulls may write.
    #[cfg(not(unix))]
    {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                path = %path.display(),
                "free disk space is not checked on this platform; set [registry] quota to bound pulls"
            );
        });
        None
    }
}

impl Registry {
    /// Reserves `bytes` for the job `id`, which is about to write `what` into the store (a pull's
    /// download, a quantization's output), under the quota and the free disk space of `dir`,
    /// counting what other jobs reserved, evicting least recently used models when the policy
    /// allows. `on_disk` is what the job already wrote there (a resumed download). Replaces the
    /// job's earlier reservation; [`Registry::release`] ends it. Blocking.
    pub fn reserve(
        &self,
        id: &str,
        what: &str,
        bytes: u64,
        on_disk: u64,
        dir: &Path,
        policy: &QuotaPolicy,
    ) -> Result<(), ReserveError> {
        let mut reservations = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        let others: u64 = reservations.iter().filter(|(k, _)| k.as_str() != id).map(|(_, v)| v).sum();
        if let Some(quota) = policy.quota {
            loop {
                let used = self.blob_bytes()?;
                if used.saturating_add(others).saturating_add(bytes) <= quota {
                    break;
                }
                if policy.evict && self.evict_lru()?.is_some() {
                    continue;
                }
                let available = quota.saturating_sub(used.saturating_add(others));
                return Err(QuotaError::Exceeded { model: what.to_owned(), needed: bytes, available, quota }.into());
            }
        }
        let still_needed = bytes.saturating_sub(on_disk).saturating_add(others);
        while let Some(free) = free_space(dir) {
            if free >= still_needed.saturating_add(policy.min_free) {
                break;
            }
            if policy.evict && self.evict_lru()?.is_some() {
                continue;
            }
            return Err(QuotaError::DiskFull {
                model: what.to_owned(),
                needed: still_needed,
                free,
                min_free: policy.min_free,
                path: dir.display().to_string(),
            }
            .into());
        }
        reservations.insert(id.to_owned(), bytes);
        Ok(())
    }

    /// Ends the reservation of job `id` (its bytes are in the store now, or it gave up).
    pub fn release(&self, id: &str) {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Bytes reserved by running jobs.
    pub fn reserved_bytes(&self) -> u64 {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    /// Bytes of the blob files on disk.
    pub fn blob_bytes(&self) -> Result<u64, RegistryError> {
        Ok(self.blobs().scan()?.blobs.iter().map(|(_, s)| s).sum())
    }

    /// Removes the least recently used model that is neither pinned, nor loaded, nor held by a GC
    /// root (removing it would free nothing), and its blobs when no other model and no root uses
    /// them; returns it, or `None` when nothing can be evicted.
    pub fn evict_lru(&self) -> Result<Option<ModelRecord>, RegistryError> {
        let in_use = self.in_use();
        let _guard = self.lock();
        let rooted = self.rooted_blobs()?;
        let models = self.list()?;
        let Some(victim) = models
            .iter()
            .filter(|m| !m.pinned && !in_use.contains(&m.reference()) && !rooted.contains(&m.digest))
            .min_by_key(|m| (m.last_used_at.unwrap_or(m.created_at), m.created_at))
            .cloned()
        else {
            return Ok(None);
        };
        let blobs = self.referenced_blobs(&victim)?;
        self.store().delete_model(&victim.name, &victim.tag)?;
        // Blobs are shared (same content under two names, or one file in two layouts) and may be
        // rooted: keep what the remaining models and the roots still use.
        let mut still_used = rooted;
        for m in self.list()? {
            still_used.extend(self.referenced_blobs(&m)?);
        }
        for d in blobs.into_iter().filter(|d| !still_used.contains(d)) {
            if self.store().delete_blob(&d.to_string())? {
                match self.blobs().remove(&d) {
                    Ok(_) => {}
                    Err(BlobError::Io { .. }) => tracing::warn!(digest = %d, "cannot remove evicted blob"),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        tracing::info!(model = %victim.reference(), "evicted least recently used model to make room");
        Ok(Some(victim))
    }
}
