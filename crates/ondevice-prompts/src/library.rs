//! The local pack library: published versions as content-addressed blobs in the registry's blob
//! store, each held by a GC root owned by `prompt-pack/NAME@VERSION`, with their rows and labels
//! in the store (`ondevice-store`'s `prompts.rs`).
//!
//! A publish lints the pack and runs its tests first; a version once published never changes
//! (publishing the same content again is a no-op, different content is refused). Every publish
//! moves the `latest` label, and the manifest's `labels` (default `production`); `rollback` moves
//! `production` back. Loading a version re-hashes its blob, so a corrupted file is an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use ondevice_registry::{Digest, Registry, RootOwner};
use ondevice_store::{PromptLabelMove, PromptVersionRow};
use semver::Version;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::PromptError;
use crate::archive::VerifyingKey;
use crate::lint::{Finding, Severity, lint_pack};
use crate::pack::{Pack, validate_label, validate_name};
use crate::reference::{LATEST, PRODUCTION, PackRef, resolve};
use crate::render::run_tests;
use crate::sandbox::Sandbox;

/// The GC root owner kind of pack versions.
pub const ROOT_KIND: &str = "prompt-pack";

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The pack.
    pub name: String,
    /// The version.
    pub version: String,
    /// Content digest.
    pub digest: String,
    /// The manifest's description.
    pub description: String,
    /// Labels pointing here.
    pub labels: Vec<String>,
    /// Signer's public key (hex) for imported signed packs.
    pub signer: Option<String>,
    /// Unix seconds.
    pub published_at: i64,
}

/// One pack with its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackSummary {
    /// The pack.
    pub name: String,
    /// What a bare name resolves to now.
    pub current: Option<String>,
    /// The description of the current version.
    pub description: String,
    /// Label → version.
    pub labels: BTreeMap<String, String>,
    /// Every version, oldest first.
    pub versions: Vec<String>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The version as stored.
    pub version: VersionInfo,
    /// `false` when the same content was already published (nothing changed but labels).
    pub created: bool,
    /// Lint warnings (errors refuse the publish).
    pub warnings: Vec<Finding>,
}

/// The library over a registry (blob store, roots) and its store.
#[derive(Debug)]
pub struct Library {
    registry: Arc<Registry>,
    sandbox: Sandbox,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn owner(name: &str, version: &str) -> Result<RootOwner, PromptError> {
    RootOwner::new(ROOT_KIND, &format!("{name}@{version}"))
        .map_err(|e| PromptError::InvalidReference { reference: name.into(), reason: e.to_string() })
}

impl Library {
    /// A library over `registry`.
    pub fn new(registry: Arc<Registry>) -> Library {
        Library { registry, sandbox: Sandbox::default() }
    }

    /// The sandbox renders use.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Lints, tests and stores `pack`; moves `latest`, then `labels` (default: the manifest's,
    /// else `production`).
    pub fn publish(
        &self,
        pack: &Pack,
        labels: &[String],
        signer: Option<&VerifyingKey>,
    ) -> Result<Published, PromptError> {
        let mut labels: Vec<String> = if labels.is_empty() { pack.manifest().labels.clone() } else { labels.to_vec() };
        if labels.is_empty() {
            labels.push(PRODUCTION.to_owned());
        }
        self.publish_imported(pack, &labels, signer)
    }

    /// Like [`Library::publish`], but moves only `latest` and exactly `labels` (an imported pack
    /// does not take over `production` unless its manifest says so).
    pub fn publish_imported(
        &self,
        pack: &Pack,
        labels: &[String],
        signer: Option<&VerifyingKey>,
    ) -> Result<Published, PromptError> {
        let findings = lint_pack(&self.sandbox, pack);
        let (errors, warnings): (Vec<_>, Vec<_>) = findings.into_iter().partition(|f| f.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(PromptError::Lint { findings: errors });
        }
        if let Some(t) = run_tests(&self.sandbox, pack).into_iter().find(|t| t.failure.is_some()) {
            return Err(PromptError::TestFailed { test: t.name, reason: t.failure.unwrap_or_default() });
        }
        for l in labels {
            validate_label(l).map_err(|r| PromptError::InvalidReference { reference: l.clone(), reason: r })?;
        }
        let name = pack.name().to_owned();
        let version = pack.version().to_string();
        let digest = pack.digest();
        let store = self.registry.store();
        let created = match store.prompt_version(&name, &version)? {
            Some(row) if row.digest == digest => false,
            Some(_) => return Err(PromptError::VersionExists { name, version }),
            None => {
                let bytes = pack.canonical_bytes();
                let dir = self.registry.partials_dir();
                // A name of its own per publish: concurrent publishes of the same content must
                // not write or remove each other's partial file.
                static PARTIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = PARTIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tmp = dir.join(format!("prompt-{}-{}-{n}.partial", &digest[7..23], std::process::id()));
                std::fs::write(&tmp, &bytes).map_err(|source| PromptError::Io {
                    op: "cannot write",
                    path: tmp.clone(),
                    source,
                })?;
                let root_owner = owner(&name, &version)?;
                let root = self.registry.put_rooted_file(&tmp, &root_owner);
                let _ = std::fs::remove_file(&tmp);
                let root = root?;
                if root.digest.to_string() != digest {
                    return Err(PromptError::invalid(None, "the stored pack does not hash to its digest"));
                }
                let inserted = store.insert_prompt_version(&PromptVersionRow {
                    name: name.clone(),
                    version: version.clone(),
                    digest: digest.clone(),
                    description: pack.manifest().description.clone(),
                    signer: signer.map(|k| k.to_string()),
                    created_at: now(),
                })?;
                if !inserted {
                    // A concurrent publish of the same version won the insert (the row's primary
                    // key is name and version): the same content is a no-op, other content is
                    // refused and its root released, so a version never has two contents.
                    match store.prompt_version(&name, &version)? {
                        Some(row) if row.digest == digest => {}
                        _ => {
                            self.registry.remove_root(&root.digest, &root_owner)?;
                            return Err(PromptError::VersionExists { name, version });
                        }
                    }
                }
                inserted
            }
        };
        let at = now();
        store.set_prompt_label(&name, LATEST, &version, at)?;
        for l in labels {
            store.set_prompt_label(&name, l, &version, at)?;
        }
        tracing::info!(pack = %name, version = %version, digest = %digest, created, "published prompt pack");
        let info = self.info(&name, &version)?;
        Ok(Published { version: info, created, warnings })
    }

    fn info(&self, name: &str, version: &str) -> Result<VersionInfo, PromptError> {
        let store = self.registry.store();
        let row = store
            .prompt_version(name, version)?
            .ok_or_else(|| PromptError::NotFound { reference: format!("{name}@{version}") })?;
        let labels =
            store.prompt_labels(Some(name))?.into_iter().filter(|l| l.version == version).map(|l| l.label).collect();
        Ok(VersionInfo {
            name: row.name,
            version: row.version,
            digest: row.digest,
            description: row.description,
            labels,
            signer: row.signer,
            published_at: row.created_at,
        })
    }

    /// The version a reference names.
    pub fn resolve(&self, r: &PackRef) -> Result<VersionInfo, PromptError> {
        let store = self.registry.store();
        let rows = store.prompt_versions(Some(&r.name))?;
        let versions: Vec<Version> = rows.iter().filter_map(|r| Version::parse(&r.version).ok()).collect();
        let labels: BTreeMap<String, Version> = store
            .prompt_labels(Some(&r.name))?
            .into_iter()
            .filter_map(|l| Some((l.label, Version::parse(&l.version).ok()?)))
            .collect();
        let v = resolve(&r.selector, &versions, &labels)
            .ok_or_else(|| PromptError::NotFound { reference: r.to_string() })?;
        self.info(&r.name, &v.to_string())
    }

    /// Loads the pack a reference names, re-hashing its blob.
    pub fn load(&self, r: &PackRef) -> Result<(Pack, VersionInfo), PromptError> {
        let info = self.resolve(r)?;
        let digest: Digest = info
            .digest
            .parse()
            .map_err(|_| PromptError::invalid(None, format!("stored digest {:?} is malformed", info.digest)))?;
        let path = self.registry.blobs().path(&digest);
        let bytes =
            std::fs::read(&path).map_err(|source| PromptError::Io { op: "cannot read", path: path.clone(), source })?;
        let actual = format!("sha256:{}", crate::pack::hex(&Sha256::digest(&bytes)));
        if actual != info.digest {
            return Err(PromptError::invalid(
                Some(&path),
                format!("the blob hashes to {actual}, not {}: the file is corrupt, import the pack again", info.digest),
            ));
        }
        let pack = Pack::from_canonical(&bytes)?;
        Ok((pack, info))
    }

    /// Every pack.
    pub fn list(&self) -> Result<Vec<PackSummary>, PromptError> {
        let store = self.registry.store();
        let mut by_name: BTreeMap<String, PackSummary> = BTreeMap::new();
        for row in store.prompt_versions(None)? {
            let e = by_name.entry(row.name.clone()).or_insert_with(|| PackSummary {
                name: row.name.clone(),
                current: None,
                description: String::new(),
                labels: BTreeMap::new(),
                versions: Vec::new(),
            });
            e.versions.push(row.version);
        }
        for l in store.prompt_labels(None)? {
            if let Some(e) = by_name.get_mut(&l.name) {
                e.labels.insert(l.label, l.version);
            }
        }
        let mut out = Vec::new();
        for (name, mut s) in by_name {
            if let Ok(info) = self.resolve(&PackRef { name, selector: crate::reference::Selector::Default }) {
                s.current = Some(info.version);
                s.description = info.description;
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Every version of one pack, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, PromptError> {
        validate_name(name).map_err(|r| PromptError::InvalidReference { reference: name.into(), reason: r })?;
        let rows = self.registry.store().prompt_versions(Some(name))?;
        if rows.is_empty() {
            return Err(PromptError::NotFound { reference: name.into() });
        }
        rows.iter().map(|r| self.info(name, &r.version)).collect()
    }

    /// Label moves of one pack, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<PromptLabelMove>, PromptError> {
        Ok(self.registry.store().prompt_label_history(name)?)
    }

    /// Points `name@label` at `version`; returns the version it pointed to before.
    pub fn set_label(&self, name: &str, label: &str, version: &str) -> Result<Option<String>, PromptError> {
        validate_label(label).map_err(|r| PromptError::InvalidReference { reference: label.into(), reason: r })?;
        let v = Version::parse(version)
            .map_err(|e| PromptError::InvalidReference { reference: version.into(), reason: e.to_string() })?;
        let info = self.info(name, &v.to_string())?;
        Ok(self.registry.store().set_prompt_label(name, label, &info.version, now())?)
    }

    /// Makes `version` the one a bare name resolves to (moves `production`).
    pub fn rollback(&self, name: &str, version: &str) -> Result<Option<String>, PromptError> {
        self.set_label(name, PRODUCTION, version)
    }

    /// Removes one version (its row, labels and GC root; the next `gc` frees the blob unless
    /// another version has the same content).
    pub fn delete(&self, name: &str, version: &str) -> Result<VersionInfo, PromptError> {
        let info = self.info(name, version)?;
        self.registry.store().delete_prompt_version(name, &info.version, now())?;
        if let Ok(d) = info.digest.parse::<Digest>() {
            self.registry.remove_root(&d, &owner(name, &info.version)?)?;
        }
        Ok(info)
    }
}
