//! Model provenance: where a model's content came from. A quantization registers its result with
//! the receipt `ondevice-quantize` wrote (input digests, tool and llama.cpp versions, parameters,
//! imatrix digest, output digest, quality figures) and the registry model it was made from.
//!
//! Provenance belongs to content, not to a name: it is stored per blob digest (store table
//! `model_provenance`), so a copy of the model, or the same file imported again, shows it too;
//! `gc` drops it with the blob. The receipt is kept as JSON (this crate does not interpret it
//! beyond `output_sha256`, which must name the blob it describes), and travels in export bundles.

use std::path::Path;

use ondevice_gguf::GgufFile;
use ondevice_store::ProvenanceRow;

use crate::{Digest, ModelRecord, ModelRef, RefError, Registry, RegistryError, now};

/// Where a model's content came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The receipt (JSON object) of the tool that made the content.
    pub receipt: serde_json::Value,
    /// The registry model it was made from, `name:tag` at the time.
    pub parent: Option<String>,
    /// That model's digest.
    pub parent_digest: Option<Digest>,
    /// Unix seconds when it was recorded.
    pub created_at: i64,
}

impl Provenance {
    fn from_row(row: ProvenanceRow) -> Option<Provenance> {
        Some(Provenance {
            receipt: serde_json::from_str(&row.receipt).ok()?,
            parent: row.parent_model,
            parent_digest: row.parent_digest.and_then(|d| d.parse().ok()),
            created_at: row.created_at,
        })
    }

    /// Checks that the receipt describes `digest` (its `output_sha256` is the digest's hex).
    pub fn check_describes(&self, digest: &Digest) -> Result<(), String> {
        let hex = digest.to_string();
        let hex = hex.strip_prefix("sha256:").unwrap_or(&hex);
        match self.receipt.get("output_sha256").and_then(|v| v.as_str()) {
            Some(s) if s.eq_ignore_ascii_case(hex) => Ok(()),
            Some(s) => Err(format!("the provenance receipt describes sha256:{s}, not {digest}")),
            None => Err("the provenance receipt has no output_sha256".into()),
        }
    }
}

impl Registry {
    /// The provenance recorded for a blob (`None` when there is none or it no longer parses).
    pub fn provenance(&self, digest: &Digest) -> Result<Option<Provenance>, RegistryError> {
        Ok(self.store().get_provenance(&digest.to_string())?.and_then(Provenance::from_row))
    }

    /// Fills in `provenance` of each record.
    pub(crate) fn attach_provenance(&self, records: &mut [ModelRecord]) -> Result<(), RegistryError> {
        if records.is_empty() {
            return Ok(());
        }
        if records.len() == 1 {
            records[0].provenance = self.provenance(&records[0].digest)?;
            return Ok(());
        }
        let all = self.store().list_provenance()?;
        for r in records.iter_mut() {
            let d = r.digest.to_string();
            r.provenance = all.iter().find(|p| p.digest == d).cloned().and_then(Provenance::from_row);
        }
        Ok(())
    }

    /// Records the provenance of a blob (replacing what it had). The receipt must describe it.
    pub(crate) fn record_provenance(&self, digest: &Digest, p: &Provenance) -> Result<bool, RegistryError> {
        p.check_describes(digest).map_err(|reason| RegistryError::InvalidProvenance { digest: *digest, reason })?;
        let row = ProvenanceRow {
            digest: digest.to_string(),
            parent_model: p.parent.clone(),
            parent_digest: p.parent_digest.map(|d| d.to_string()),
            receipt: p.receipt.to_string(),
            created_at: p.created_at,
        };
        Ok(self.store().insert_provenance(&row)?)
    }

    /// Registers a GGUF file a tool made (a quantization's output, staged on the blob store's
    /// filesystem): validated as GGUF, moved into the blob store under `digest` (which the caller
    /// computed over the file), recorded as `name` with `source`, and its provenance stored.
    /// Nothing is registered if any step fails; a blob this call added is then removed.
    pub fn register_made(
        &self,
        staged: &Path,
        digest: Digest,
        name: &ModelRef,
        source: &str,
        provenance: Provenance,
    ) -> Result<ModelRecord, RegistryError> {
        let ModelRef::Named { name, tag } = name else {
            return Err(RefError { input: name.to_string(), reason: "a result needs a name, not a digest" }.into());
        };
        provenance.check_describes(&digest).map_err(|reason| RegistryError::InvalidProvenance { digest, reason })?;
        let gguf = GgufFile::open(staged)
            .map_err(|source| RegistryError::InvalidModelFile { path: staged.to_path_buf(), source })?;
        let _guard = self.lock();
        let stored = self.blobs().adopt(staged, &digest)?;
        let had = self.store().get_provenance(&digest.to_string())?;
        if let Err(e) = self.record_provenance(&digest, &provenance) {
            self.forget_new(&[stored]);
            return Err(e);
        }
        match self.record(name, tag, &gguf, stored, source.to_owned(), None) {
            Ok(mut record) => {
                record.provenance = Some(provenance);
                Ok(record)
            }
            Err(e) => {
                // Put back what the blob had (or nothing); `record` removed a new blob.
                let _ = match had {
                    Some(row) => self.store().insert_provenance(&row).map(drop),
                    None => self.store().delete_provenance(&digest.to_string()).map(drop),
                };
                Err(e)
            }
        }
    }
}

/// A new provenance record made now.
pub fn made_now(receipt: serde_json::Value, parent: Option<(String, Digest)>) -> Provenance {
    let (parent, parent_digest) = match parent {
        Some((p, d)) => (Some(p), Some(d)),
        None => (None, None),
    };
    Provenance { receipt, parent, parent_digest, created_at: now() }
}
