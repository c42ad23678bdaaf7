//! GC roots: blobs held by something other than a model.
//!
//! Prompt packs, vector collections, quantization inputs and receipts keep their content in the
//! blob store like models do, but no model row names it. Each such holder registers a root —
//! (blob, owner kind, owner id) — and [`Registry::gc`] and [`Registry::evict_lru`] keep every
//! rooted blob. A rooted layout blob (a multi-file model's file list) also keeps the files it
//! lists, so rooting a safetensors model's digest keeps the whole model. Removing the last root
//! makes the blob collectable by the next `gc` (unless a model still uses it).

use std::collections::BTreeSet;
use std::path::Path;

use ondevice_store::{BlobRow, RootRow};

use crate::layout::MAX_LAYOUT_BYTES;
use crate::{BlobError, Digest, Registry, RegistryError, now};

/// Longest owner kind, in bytes.
pub const MAX_OWNER_KIND: usize = 64;
/// Longest owner id, in bytes.
pub const MAX_OWNER_ID: usize = 512;

/// What holds a root: a kind (`prompt-pack`, `collection`, `quantize-input`, ...) and which one
/// of that kind (a pack name, a collection id, a job id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RootOwner {
    kind: String,
    id: String,
}

/// An owner kind or id that [`RootOwner::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gc root owner {kind:?}/{id:?}: {reason}")]
pub struct RootOwnerError {
    /// The kind given (at most 100 characters of it).
    pub kind: String,
    /// The id given (at most 100 characters of it).
    pub id: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl RootOwner {
    /// An owner. The kind is 1 to [`MAX_OWNER_KIND`] bytes of lowercase ASCII letters, digits,
    /// `-`, `_` and `.`; the id is 1 to [`MAX_OWNER_ID`] bytes without control characters.
    pub fn new(kind: &str, id: &str) -> Result<RootOwner, RootOwnerError> {
        let bad = |reason| RootOwnerError {
            kind: kind.chars().take(100).collect(),
            id: id.chars().take(100).collect(),
            reason,
        };
        if kind.is_empty() || kind.len() > MAX_OWNER_KIND {
            return Err(bad("the kind is empty or too long"));
        }
        if !kind.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.')) {
            return Err(bad("the kind may hold only lowercase letters, digits, '-', '_' and '.'"));
        }
        if id.is_empty() || id.len() > MAX_OWNER_ID {
            return Err(bad("the id is empty or too long"));
        }
        if id.chars().any(char::is_control) {
            return Err(bad("the id holds a control character"));
        }
        Ok(RootOwner { kind: kind.to_owned(), id: id.to_owned() })
    }

    /// The kind, e.g. `prompt-pack`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Which one of its kind.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for RootOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// One root: `owner` holds `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRoot {
    /// The blob kept.
    pub digest: Digest,
    /// What holds it.
    pub owner: RootOwner,
    /// Unix seconds when it was first registered.
    pub created_at: i64,
}

impl BlobRoot {
    /// A stored row; `None` for a row that no longer validates (it then protects nothing that
    /// could be named, and is reported by [`Registry::list_roots`] callers as absent).
    fn from_row(row: RootRow) -> Option<BlobRoot> {
        let digest = row.digest.parse().ok()?;
        let owner = RootOwner::new(&row.owner_kind, &row.owner_id).ok()?;
        Some(BlobRoot { digest, owner, created_at: row.created_at })
    }
}

impl Registry {
    /// Roots a blob already in the store: `gc` and eviction keep it (and, for a layout blob, the
    /// files it lists) until [`Registry::remove_root`]. Idempotent: registering the same root
    /// again keeps its first time. The blob file must exist ([`BlobError::Missing`] otherwise);
    /// its `blobs` row is written if it has none.
    pub fn add_root(&self, digest: &Digest, owner: &RootOwner) -> Result<BlobRoot, RegistryError> {
        let _guard = self.lock();
        let path = self.blobs().path(digest);
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(BlobError::Missing { digest: *digest, path }.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { digest: *digest, path }.into());
            }
            Err(source) => return Err(BlobError::Io { op: "stat", path, source }.into()),
        };
        self.insert_root(digest, size, owner)
    }

    /// Copies `src` into the blob store and roots it in one step (under the registry's write
    /// lock, so a concurrent `gc` never sees the blob unrooted).
    pub fn put_rooted_file(&self, src: &Path, owner: &RootOwner) -> Result<BlobRoot, RegistryError> {
        let _guard = self.lock();
        let (digest, size) = self.blobs().put_file(src)?;
        // If writing the rows fails the blob stays unreferenced, and the next gc removes it.
        self.insert_root(&digest, size, owner)
    }

    /// Writes the blob row (if missing) and the root row. The caller holds the write lock.
    fn insert_root(&self, digest: &Digest, size: u64, owner: &RootOwner) -> Result<BlobRoot, RegistryError> {
        let at = now();
        let digest_text = digest.to_string();
        self.store().insert_blob(&BlobRow {
            digest: digest_text.clone(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            created_at: at,
        })?;
        let row =
            RootRow { digest: digest_text, owner_kind: owner.kind.clone(), owner_id: owner.id.clone(), created_at: at };
        if self.store().insert_root(&row)? {
            tracing::info!(digest = %digest, owner = %owner, "registered gc root");
        }
        let root = self
            .store()
            .roots_of(&row.digest)?
            .into_iter()
            .find(|r| r.owner_kind == owner.kind && r.owner_id == owner.id)
            .and_then(BlobRoot::from_row);
        Ok(root.unwrap_or(BlobRoot { digest: *digest, owner: owner.clone(), created_at: at }))
    }

    /// Removes one root; returns whether it existed. The blob stays until the next `gc` finds
    /// nothing else holding it.
    pub fn remove_root(&self, digest: &Digest, owner: &RootOwner) -> Result<bool, RegistryError> {
        let _guard = self.lock();
        let removed = self.store().delete_root(&digest.to_string(), &owner.kind, &owner.id)?;
        if removed {
            tracing::info!(digest = %digest, owner = %owner, "removed gc root");
        }
        Ok(removed)
    }

    /// The roots holding one blob, by owner.
    pub fn roots_of(&self, digest: &Digest) -> Result<Vec<BlobRoot>, RegistryError> {
        Ok(self.store().roots_of(&digest.to_string())?.into_iter().filter_map(BlobRoot::from_row).collect())
    }

    /// Every root, by digest then owner.
    pub fn list_roots(&self) -> Result<Vec<BlobRoot>, RegistryError> {
        Ok(self.store().list_roots()?.into_iter().filter_map(BlobRoot::from_row).collect())
    }

    /// Every blob a root keeps: the rooted blobs, and the files of rooted layout blobs.
    pub(crate) fn rooted_blobs(&self) -> Result<BTreeSet<Digest>, RegistryError> {
        let mut kept = BTreeSet::new();
        for row in self.store().list_roots()? {
            let Ok(d) = row.digest.parse::<Digest>() else { continue };
            if kept.insert(d) {
                if let Some(layout) = self.as_layout(&d) {
                    kept.extend(layout.digests());
                }
            }
        }
        Ok(kept)
    }

    /// The blob read as a layout, if it is one (small, and valid layout JSON).
    fn as_layout(&self, d: &Digest) -> Option<crate::Layout> {
        let size = std::fs::metadata(self.blobs().path(d)).ok()?.len();
        if size > MAX_LAYOUT_BYTES {
            return None;
        }
        self.read_layout(d).ok()
    }
}
