//! Model bundles: `ondevice models export` writes a POSIX tar holding `manifest.json` (the
//! model's metadata and the SHA-256 and size of each file) followed by `blobs/sha256-<hex>`;
//! `ondevice models import BUNDLE.tar` restores it bit for bit on another home.
//!
//! The reader is strict, so a hostile archive cannot write outside the blob store (zip-slip):
//! only regular-file entries named exactly `manifest.json` (first) or `blobs/sha256-<64 hex>`
//! listed in the manifest are accepted; links, directories, devices, absolute or `..` paths and
//! anything else are refused. Entry names never become paths: blobs are written through the blob
//! store under their verified digest, and nothing is registered unless every digest matches.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::reference::{Digest, ModelRef};
use crate::{BlobError, ModelRecord, Registry, RegistryError};

const BLOCK: usize = 512;
/// Largest manifest accepted.
const MAX_MANIFEST: u64 = 1 << 20;

/// A bundle that cannot be imported; nothing was registered.
#[derive(Debug, thiserror::Error)]
#[error("bundle {}: {reason}", path.display())]
pub struct BundleError {
    /// The archive.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// `manifest.json` of a bundle (a file format, hence serde).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    schema: u32,
    model: String,
    format: String,
    architecture: Option<String>,
    parameter_count: Option<u64>,
    quantization: Option<String>,
    context_length: Option<u64>,
    license: Option<String>,
    source: String,
    files: Vec<ManifestFile>,
    /// Where the content came from (a quantization's receipt), when the registry recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provenance: Option<ManifestProvenance>,
}

/// The provenance of the bundled model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestProvenance {
    /// The registry model it was made from, `name:tag`.
    parent: Option<String>,
    /// That model's digest.
    parent_digest: Option<String>,
    /// The receipt (a JSON object whose `output_sha256` is the model's digest).
    receipt: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    path: String,
    digest: String,
    size: u64,
}

/// Whether the file starts like a tar archive (`ustar` magic at offset 257).
pub fn is_bundle(path: &Path) -> bool {
    let mut head = [0u8; 263];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[257..262] == b"ustar"
}

fn header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    if size < 0o77777777777 {
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    } else {
        // GNU base-256 for files of 8 GiB and more.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fn pad(n: u64) -> usize {
    (BLOCK - (n % BLOCK as u64) as usize) % BLOCK
}

impl Registry {
    /// Writes the bundle of one model to `out`.
    pub fn export_bundle(&self, r: &ModelRef, out: &mut dyn Write) -> Result<ModelRecord, RegistryError> {
        let m = self.show(r)?;
        let blob = self.blobs().path(&m.digest);
        // The model's own blob first (its file, or its layout), then each file of a layout once.
        let mut digests = vec![(m.digest, m.size)];
        if let Some(layout) = self.layout(&m)? {
            digests[0].1 = std::fs::metadata(&blob)
                .map_err(|source| RegistryError::Blob(BlobError::Io { op: "stat", path: blob.clone(), source }))?
                .len();
            for f in &layout.files {
                let d: Digest = f.digest.parse().map_err(|_| crate::RegistryError::InvalidLayout {
                    path: blob.clone(),
                    reason: format!("{}: invalid digest", f.path),
                })?;
                if !digests.iter().any(|(x, _)| *x == d) {
                    digests.push((d, f.size));
                }
            }
        }
        let manifest = Manifest {
            schema: 1,
            model: m.reference(),
            format: m.format.clone(),
            architecture: m.architecture.clone(),
            parameter_count: m.parameter_count,
            quantization: m.quantization.clone(),
            context_length: m.context_length,
            license: m.license.clone(),
            source: m.source.clone(),
            provenance: m.provenance.as_ref().map(|p| ManifestProvenance {
                parent: p.parent.clone(),
                parent_digest: p.parent_digest.map(|d| d.to_string()),
                receipt: p.receipt.clone(),
            }),
            files: digests
                .iter()
                .map(|(d, size)| ManifestFile {
                    path: format!("blobs/{}", d.file_name()),
                    digest: d.to_string(),
                    size: *size,
                })
                .collect(),
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Blob(BlobError::Io { op: "export", path, source })
        };
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let write = |out: &mut dyn Write, name: &str, data: &mut dyn Read, size: u64| -> io::Result<()> {
            out.write_all(&header(name, size))?;
            let copied = io::copy(&mut data.take(size), out)?;
            if copied != size {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while exporting"));
            }
            out.write_all(&[0u8; BLOCK][..pad(size)])
        };
        write(out, "manifest.json", &mut json.as_slice(), json.len() as u64).map_err(io(&blob))?;
        for (file, (d, _)) in manifest.files.iter().zip(&digests) {
            let path = self.blobs().path(d);
            let mut f = File::open(&path).map_err(io(&path))?;
            write(out, &file.path, &mut f, file.size).map_err(io(&path))?;
        }
        out.write_all(&[0u8; 2 * BLOCK]).and_then(|()| out.flush()).map_err(io(&blob))?;
        Ok(m)
    }

    /// Imports a bundle written by [`Registry::export_bundle`], as `name` or the manifest's name.
    pub fn import_bundle(&self, path: &Path, name: Option<ModelRef>) -> Result<ModelRecord, RegistryError> {
        let bad = |reason: String| RegistryError::Bundle(BundleError { path: path.to_path_buf(), reason });
        let ioerr = |e: io::Error| bad(format!("cannot read: {e}"));
        let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(ioerr)?);
        let mut manifest: Option<Manifest> = None;
        let mut stored: Vec<(Digest, crate::Stored)> = Vec::new();
        let cleanup = |stored: &[(Digest, crate::Stored)]| {
            for (d, s) in stored {
                if !s.existed {
                    let _ = self.blobs().remove(d);
                }
            }
        };
        let result = (|| {
            loop {
                let mut h = [0u8; BLOCK];
                r.read_exact(&mut h).map_err(|_| bad("truncated archive".into()))?;
                if h.iter().all(|&b| b == 0) {
                    break;
                }
                let (name, size) = parse_header(&h).map_err(|e| bad(e.to_owned()))?;
                if name == "manifest.json" {
                    if manifest.is_some() || size > MAX_MANIFEST {
                        return Err(bad("duplicate or oversized manifest.json".into()));
                    }
                    let mut buf = vec![0u8; size as usize];
                    r.read_exact(&mut buf).map_err(ioerr)?;
                    skip(&mut r, pad(size)).map_err(ioerr)?;
                    let m: Manifest =
                        serde_json::from_slice(&buf).map_err(|e| bad(format!("invalid manifest.json: {e}")))?;
                    let files_ok = match m.format.as_str() {
                        "gguf" => m.files.len() == 1,
                        crate::SAFETENSORS_FORMAT => (2..=crate::layout::MAX_LAYOUT_FILES + 1).contains(&m.files.len()),
                        _ => false,
                    };
                    if m.schema != 1 || !files_ok {
                        return Err(bad(
                            "unsupported manifest (schema 1; one gguf file, or a safetensors layout and its files)"
                                .into(),
                        ));
                    }
                    manifest = Some(m);
                    continue;
                }
                let m = manifest.as_ref().ok_or_else(|| bad("manifest.json must come first".into()))?;
                let digest = name.strip_prefix("blobs/").and_then(Digest::from_file_name).ok_or_else(|| {
                    bad(format!("unexpected entry {name:?}: only manifest.json and blobs/sha256-<hex> are allowed"))
                })?;
                let listed =
                    m.files.iter().find(|f| f.path == name && f.digest == digest.to_string() && f.size == size);
                if listed.is_none() || stored.iter().any(|(d, _)| *d == digest) {
                    return Err(bad(format!(
                        "entry {name:?} is not listed in the manifest with this size, or repeated"
                    )));
                }
                let s = self.blobs().put_reader(&mut (&mut r).take(size), &digest).map_err(|e| match e {
                    BlobError::Corrupt { actual, .. } => bad(format!("{name} hashes to {actual}, not its name")),
                    other => other.into(),
                })?;
                if s.size != size {
                    return Err(bad(format!("{name} is truncated")));
                }
                stored.push((digest, s));
                skip(&mut r, pad(size)).map_err(ioerr)?;
            }
            let m = manifest.ok_or_else(|| bad("no manifest.json".into()))?;
            if let Some(missing) = m.files.iter().find(|f| !stored.iter().any(|(d, _)| d.to_string() == f.digest)) {
                return Err(bad(format!("{} is listed in the manifest but missing", missing.path)));
            }
            let digest: Digest = m.files[0].digest.parse().map_err(|_| bad("invalid digest in the manifest".into()))?;
            let target = match name {
                Some(n) => n,
                None => m.model.parse().map_err(|e: crate::RefError| bad(e.to_string()))?,
            };
            let source =
                format!("bundle:{}", path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
            let provenance = match m.provenance {
                Some(p) => {
                    let parent_digest = p
                        .parent_digest
                        .as_deref()
                        .map(str::parse::<Digest>)
                        .transpose()
                        .map_err(|_| bad("invalid parent digest in the manifest's provenance".into()))?;
                    let p = crate::Provenance {
                        receipt: p.receipt,
                        parent: p.parent,
                        parent_digest,
                        created_at: crate::now(),
                    };
                    p.check_describes(&digest).map_err(bad)?;
                    Some(p)
                }
                None => None,
            };
            let mut record = if m.format == crate::SAFETENSORS_FORMAT {
                self.register_layout_existing(digest, &target, &source, m.license)
            } else {
                self.register_existing(digest, &target, &source, m.license)
            }?;
            if let Some(p) = provenance {
                self.record_provenance(&digest, &p)?;
                record.provenance = Some(p);
            }
            Ok(record)
        })();
        if result.is_err() {
            cleanup(&stored);
        }
        result
    }
}

fn skip(r: &mut impl Read, n: usize) -> io::Result<()> {
    let mut buf = [0u8; BLOCK];
    r.read_exact(&mut buf[..n])
}

/// Name and size of a regular-file entry; anything else is refused.
fn parse_header(h: &[u8; BLOCK]) -> Result<(String, u64), &'static str> {
    let stored: u32 = octal(&h[148..156]).ok_or("bad header checksum")? as u32;
    let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    sum = sum - h[148..156].iter().map(|&b| u32::from(b)).sum::<u32>() + 8 * u32::from(b' ');
    if sum != stored {
        return Err("bad header checksum");
    }
    if !matches!(h[156], b'0' | 0) {
        return Err("only regular files are allowed (no links, directories or devices)");
    }
    if h[345] != 0 {
        return Err("long (prefixed) names are not allowed");
    }
    let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = std::str::from_utf8(&h[..end]).map_err(|_| "entry name is not UTF-8")?.to_owned();
    let size = if h[124] & 0x80 != 0 {
        u64::from_be_bytes(h[128..136].try_into().map_err(|_| "bad size")?)
    } else {
        octal(&h[124..136]).ok_or("bad size")?
    };
    Ok((name, size))
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// Hashes a stream (for tests and tools).
pub fn sha256_of(mut r: impl Read) -> io::Result<Digest> {
    let mut h = Sha256::new();
    io::copy(&mut r, &mut HashWriter(&mut h))?;
    Ok(Digest::from_bytes(h.finalize().into()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
