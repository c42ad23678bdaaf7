//! Multi-file models: Hugging Face safetensors directories.
//!
//! Every file of the directory is a blob like any other (deduplicated, hard-linked when
//! possible). A *layout* — JSON listing each file's relative path, digest and size, sorted by path
//! — is stored as one more blob, and the model row points at the layout: the model's digest names
//! its whole content, and two imports of the same directory give the same digest.
//!
//! Paths in a layout are untrusted when they come from a bundle: each is checked to be a plain
//! relative path (no `..`, no root, no backslash or drive, no control characters) before anything
//! is written, and [`Registry::materialize`] only ever creates entries under the directory it is
//! given.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ondevice_gguf::HfModelDir;
use serde::{Deserialize, Serialize};

use crate::reference::{DEFAULT_TAG, sanitize_name};
use crate::{BlobError, Digest, ImportMode, ModelRecord, ModelRef, RefError, Registry, RegistryError, Stored};

/// `format` of a model stored as a layout of safetensors and companion files.
pub const SAFETENSORS_FORMAT: &str = "safetensors";
/// Most files one layout may list.
pub const MAX_LAYOUT_FILES: usize = 4096;
/// Deepest sub-directory nesting an import walks.
pub const MAX_LAYOUT_DEPTH: usize = 8;
/// Longest relative path in a layout, in bytes.
pub const MAX_LAYOUT_PATH: usize = 512;
/// Largest layout blob read back (a layout of [`MAX_LAYOUT_FILES`] entries is far smaller).
pub(crate) const MAX_LAYOUT_BYTES: u64 = 4 << 20;

/// The files of a multi-file model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Always 1.
    pub schema: u32,
    /// Every file, sorted by path.
    pub files: Vec<LayoutFile>,
}

/// One file of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    /// Relative path with `/` separators, e.g. `1_Pooling/config.json`.
    pub path: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Layout {
    /// Parses and checks a layout: schema 1, at most [`MAX_LAYOUT_FILES`] files, each path a
    /// plain relative path listed once (sorted), each digest valid.
    pub fn parse(bytes: &[u8]) -> Result<Layout, String> {
        let layout: Layout = serde_json::from_slice(bytes).map_err(|e| format!("invalid layout json: {e}"))?;
        if layout.schema != 1 {
            return Err(format!("unsupported layout schema {}", layout.schema));
        }
        if layout.files.is_empty() || layout.files.len() > MAX_LAYOUT_FILES {
            return Err(format!("a layout lists 1 to {MAX_LAYOUT_FILES} files, not {}", layout.files.len()));
        }
        let mut previous: Option<&str> = None;
        for f in &layout.files {
            check_path(&f.path)?;
            if previous.is_some_and(|p| p >= f.path.as_str()) {
                return Err(format!("layout paths must be sorted and unique (at {:?})", f.path));
            }
            previous = Some(&f.path);
            f.digest.parse::<Digest>().map_err(|e| format!("{}: {e}", f.path))?;
        }
        Ok(layout)
    }

    /// The canonical bytes of this layout (what its digest is computed over).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The digests of the files, each once.
    pub fn digests(&self) -> Vec<Digest> {
        let set: BTreeSet<Digest> = self.files.iter().filter_map(|f| f.digest.parse().ok()).collect();
        set.into_iter().collect()
    }

    /// Total bytes of the files.
    pub fn size(&self) -> u64 {
        self.files.iter().fold(0u64, |acc, f| acc.saturating_add(f.size))
    }
}

/// Checks that `p` is a plain relative path: `/`-separated normal components only.
fn check_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("layout path {p:?} {why}"));
    if p.is_empty() || p.len() > MAX_LAYOUT_PATH {
        return bad("is empty or too long");
    }
    if p.chars().any(|c| c.is_control() || c == '\\' || c == ':') {
        return bad("holds a control character, a backslash or a colon");
    }
    let parts: Vec<&str> = p.split('/').collect();
    if parts.len() > MAX_LAYOUT_DEPTH + 1 {
        return bad("is nested too deeply");
    }
    if parts.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return bad("is not a plain relative path");
    }
    Ok(())
}

/// The regular files under `dir` (symlinks followed, hidden entries such as `.git` skipped),
/// as (relative path, absolute path), sorted.
fn collect_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidLayout { path: dir.to_path_buf(), reason };
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RegistryError::Blob(BlobError::Io { op, path, source })
    };
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((abs, rel, depth)) = stack.pop() {
        for entry in fs::read_dir(&abs).map_err(io("read directory", &abs))? {
            let entry = entry.map_err(io("read directory", &abs))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(invalid(format!("{} has a name that is not UTF-8", entry.path().display())));
            };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let child = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
            let meta = fs::metadata(&path).map_err(io("stat", &path))?;
            if meta.is_dir() {
                if depth + 1 > MAX_LAYOUT_DEPTH {
                    return Err(invalid(format!("{} is nested deeper than {MAX_LAYOUT_DEPTH}", path.display())));
                }
                stack.push((path, child, depth + 1));
            } else if meta.is_file() {
                check_path(&child).map_err(invalid)?;
                out.push((child, path));
                if out.len() > MAX_LAYOUT_FILES {
                    return Err(invalid(format!("more than {MAX_LAYOUT_FILES} files")));
                }
            } else {
                return Err(invalid(format!("{} is not a regular file or directory", path.display())));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `license:` from the YAML front matter of a model card (`README.md`), if there is one.
fn card_license(dir: &Path) -> Option<String> {
    let mut text = String::new();
    fs::File::open(dir.join("README.md")).ok()?.take(64 << 10).read_to_string(&mut text).ok()?;
    let body = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n"))?;
    for line in body.lines() {
        let line = line.trim_end();
        if line == "---" {
            break;
        }
        if let Some(v) = line.strip_prefix("license:") {
            let v = v.trim().trim_matches(['"', '\'']);
            if !v.is_empty() && v.len() <= 64 {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// What the registry records of a directory model besides its files.
struct Described {
    architecture: Option<String>,
    parameters: u64,
    /// The dtypes, such as `F32` or `BF16+F32`.
    dtypes: Option<String>,
    context_length: Option<u64>,
    source: String,
    license: Option<String>,
}

/// Registry fields of an HF directory: architecture, parameters, dtypes, context length.
fn describe(hf: &HfModelDir, source: String, license: Option<String>) -> Described {
    let dtypes: Vec<&str> = hf.dtypes().into_iter().map(|d| d.name()).collect();
    Described {
        architecture: hf.architecture().or(hf.model_type()).map(str::to_owned),
        parameters: hf.parameter_count(),
        dtypes: (!dtypes.is_empty()).then(|| dtypes.join("+")),
        context_length: hf.context_length(),
        source,
        license,
    }
}

impl Registry {
    /// Imports a Hugging Face safetensors directory (`config.json` plus `*.safetensors`, sharded
    /// or not) as `name` (default: the directory's name). Every header is validated first: an
    /// invalid or hostile directory writes nothing. Each file becomes a blob (a copy-on-write clone
    /// or a copy; see [`Registry::import_hf_dir_with`]) and the model points at their layout.
    pub fn import_hf_dir(&self, dir: &Path, name: Option<ModelRef>) -> Result<ModelRecord, RegistryError> {
        self.import_hf_dir_with(dir, name, ImportMode::default())
    }

    /// [`Registry::import_hf_dir`], each file stored as `mode` says.
    pub fn import_hf_dir_with(
        &self,
        dir: &Path,
        name: Option<ModelRef>,
        mode: ImportMode,
    ) -> Result<ModelRecord, RegistryError> {
        let hf = HfModelDir::open(dir)
            .map_err(|source| RegistryError::InvalidModelDir { path: dir.to_path_buf(), reason: source.to_string() })?;
        let files = collect_files(dir)?;
        let dir_name = fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let (name, tag) = match name {
            Some(ModelRef::Named { name, tag }) => (name, tag),
            Some(r @ ModelRef::Digest(_)) => {
                return Err(RefError { input: r.to_string(), reason: "import needs a name, not a digest" }.into());
            }
            None => (sanitize_name(&dir_name), DEFAULT_TAG.to_owned()),
        };

        let _guard = self.lock();
        let mut stored: Vec<Stored> = Vec::new();
        let result = (|| {
            let mut entries = Vec::with_capacity(files.len());
            for (rel, abs) in &files {
                let s = self.blobs().import_file(abs, mode)?;
                stored.push(s);
                entries.push(LayoutFile { path: rel.clone(), digest: s.digest.to_string(), size: s.size });
            }
            let layout = Layout { schema: 1, files: entries };
            let described = describe(&hf, format!("import:{dir_name}/"), card_license(dir));
            self.commit_layout(&layout, &name, &tag, described, &mut stored)
        })();
        if result.is_err() {
            self.forget_new(&stored);
        }
        let record = result?;
        tracing::info!(model = %record.reference(), files = files.len(), "imported safetensors directory");
        Ok(record)
    }

    /// Stores the layout blob and writes the blob and model rows.
    fn commit_layout(
        &self,
        layout: &Layout,
        name: &str,
        tag: &str,
        d: Described,
        stored: &mut Vec<Stored>,
    ) -> Result<ModelRecord, RegistryError> {
        let bytes = layout.to_bytes();
        let digest = crate::bundle::sha256_of(bytes.as_slice()).map_err(|source| BlobError::Io {
            op: "hash",
            path: PathBuf::from("layout"),
            source,
        })?;
        let s = self.blobs().put_reader(&mut bytes.as_slice(), &digest)?;
        stored.push(s);
        let record = ModelRecord {
            name: name.to_owned(),
            tag: tag.to_owned(),
            digest,
            format: SAFETENSORS_FORMAT.into(),
            architecture: d.architecture,
            parameter_count: Some(d.parameters),
            quantization: d.dtypes,
            context_length: d.context_length,
            size: layout.size().saturating_add(s.size),
            source: d.source,
            license: d.license,
            created_at: crate::now(),
            last_used_at: None,
            pinned: false,
            provenance: None,
        };
        self.write_rows(record, stored)
    }

    /// The layout of a multi-file model; `None` for a single-file (GGUF) model.
    pub fn layout(&self, m: &ModelRecord) -> Result<Option<Layout>, RegistryError> {
        if m.format != SAFETENSORS_FORMAT {
            return Ok(None);
        }
        self.read_layout(&m.digest).map(Some).map_err(|reason| RegistryError::InvalidLayout {
            path: self.blobs().path(&m.digest),
            reason: format!("model {}: {reason}", m.reference()),
        })
    }

    pub(crate) fn read_layout(&self, digest: &Digest) -> Result<Layout, String> {
        let path = self.blobs().path(digest);
        let f = fs::File::open(&path).map_err(|e| format!("cannot open the layout: {e}"))?;
        let mut bytes = Vec::new();
        f.take(MAX_LAYOUT_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read the layout: {e}"))?;
        if bytes.len() as u64 > MAX_LAYOUT_BYTES {
            return Err("the layout is too large".into());
        }
        Layout::parse(&bytes)
    }

    /// Recreates a multi-file model's directory under `dest` (which must not exist): hard links
    /// to the blobs when possible, else copies. Used to hand the files to tools that read a
    /// directory (converters, quantizers) and to validate a layout restored from a bundle.
    pub fn materialize(&self, m: &ModelRecord, dest: &Path) -> Result<(), RegistryError> {
        let layout = self.layout(m)?.ok_or_else(|| RegistryError::InvalidLayout {
            path: dest.to_path_buf(),
            reason: format!("{} is a single {} file, not a directory model", m.reference(), m.format),
        })?;
        self.materialize_layout(&layout, dest)
    }

    pub(crate) fn materialize_layout(&self, layout: &Layout, dest: &Path) -> Result<(), RegistryError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Blob(BlobError::Io { op, path, source })
        };
        fs::create_dir(dest).map_err(io("create directory", dest))?;
        for f in &layout.files {
            // `Layout::parse` checked every path: plain relative components only.
            let target = f.path.split('/').fold(dest.to_path_buf(), |p, c| p.join(c));
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io("create directory", parent))?;
            }
            let digest: Digest = f.digest.parse().map_err(|_| RegistryError::InvalidLayout {
                path: dest.to_path_buf(),
                reason: format!("{}: invalid digest", f.path),
            })?;
            let blob = self.blobs().path(&digest);
            if fs::hard_link(&blob, &target).is_err() {
                fs::copy(&blob, &target).map_err(io("copy", &blob))?;
            }
        }
        Ok(())
    }

    /// Registers `name` for a layout whose blobs are all in the store (a restored bundle): the
    /// layout is re-validated by materializing it in a scratch directory and reading its headers.
    pub(crate) fn register_layout_existing(
        &self,
        layout_digest: Digest,
        name: &ModelRef,
        source: &str,
        license: Option<String>,
    ) -> Result<ModelRecord, RegistryError> {
        let ModelRef::Named { name, tag } = name else {
            return Err(
                RefError { input: name.to_string(), reason: "a bundle import needs a name, not a digest" }.into()
            );
        };
        let invalid = |reason: String| RegistryError::InvalidLayout { path: self.blobs().path(&layout_digest), reason };
        let layout = self.read_layout(&layout_digest).map_err(invalid)?;
        for f in &layout.files {
            let d: Digest = f.digest.parse().map_err(|_| invalid(format!("{}: invalid digest", f.path)))?;
            let size = fs::metadata(self.blobs().path(&d)).map(|m| m.len()).ok();
            if size != Some(f.size) {
                return Err(invalid(format!("{} ({}) is missing or has the wrong size", f.path, f.digest)));
            }
        }
        let scratch = self.partials_dir().join(format!(".layout-{}", layout_digest.file_name()));
        let _ = fs::remove_dir_all(&scratch);
        let described = self.materialize_layout(&layout, &scratch).and_then(|()| {
            HfModelDir::open(&scratch)
                .map(|hf| describe(&hf, source.to_owned(), license))
                .map_err(|e| invalid(format!("not a valid safetensors directory: {e}")))
        });
        let _ = fs::remove_dir_all(&scratch);
        let described = described?;
        let _guard = self.lock();
        // The blobs are already in the store (and stay there if this fails: gc collects them).
        let mut stored: Vec<Stored> = layout
            .files
            .iter()
            .filter_map(|f| {
                Some(Stored {
                    digest: f.digest.parse().ok()?,
                    size: f.size,
                    linked: false,
                    cloned: false,
                    existed: true,
                })
            })
            .collect();
        let record = self.commit_layout(&layout, name, tag, described, &mut stored)?;
        Ok(record)
    }
}
