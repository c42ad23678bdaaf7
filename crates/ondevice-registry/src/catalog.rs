//! The catalog of models that can be pulled by name: a bundled catalog (`catalog.toml`, compiled
//! in) plus catalog files and URLs from `[registry] catalogs`, later sources overriding earlier
//! entries of the same `name:tag`.
//!
//! ```toml
//! [[model]]
//! name = "smollm2:135m"
//! description = "SmolLM2 135M Instruct, Q4_1"
//! license = "apache-2.0"
//! [[model.files]]
//! name = "SmolLM2-135M-Instruct.Q4_1.gguf"
//! size = 98362432
//! sha256 = "b179c952…"
//! urls = ["https://mirror-a/…", "https://mirror-b/…"]   # tried in order
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use reqwest::Url;
use serde::Deserialize;

use crate::fetch::Fetcher;
use crate::reference::{Digest, ModelRef};
use crate::safety::{parse_url, redact_url};

/// The catalog compiled into the binary.
pub const BUNDLED: &str = include_str!("catalog.toml");
/// Largest catalog accepted from a file or URL.
pub const MAX_CATALOG_LEN: u64 = 4 << 20;

/// A catalog that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("catalog {source_name}: {reason}")]
pub struct CatalogError {
    /// The file, URL (redacted) or `bundled`.
    pub source_name: String,
    /// What is wrong, naming the entry.
    pub reason: String,
}

/// Where a catalog comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogSource {
    /// The bundled catalog.
    Bundled,
    /// A TOML file.
    File(PathBuf),
    /// A TOML document over HTTP(S), fetched with the same safety checks as downloads.
    Url(Url),
}

impl std::fmt::Display for CatalogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogSource::Bundled => f.write_str("bundled"),
            CatalogSource::File(p) => write!(f, "{}", p.display()),
            CatalogSource::Url(u) => f.write_str(&redact_url(u)),
        }
    }
}

impl CatalogSource {
    /// `http(s)://…` is a URL, anything else a file path.
    pub fn parse(text: &str) -> Result<CatalogSource, CatalogError> {
        if text.starts_with("http://") || text.starts_with("https://") {
            let url =
                parse_url(text).map_err(|e| CatalogError { source_name: text.to_owned(), reason: e.to_string() })?;
            Ok(CatalogSource::Url(url))
        } else {
            Ok(CatalogSource::File(PathBuf::from(text)))
        }
    }
}

/// One file of a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFile {
    /// File name (informational; blobs are named by digest).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Content digest.
    pub digest: Digest,
    /// Mirrors, in order.
    pub urls: Vec<Url>,
}

/// A model that can be pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// `name:tag`.
    pub name: ModelRef,
    /// One line for people.
    pub description: Option<String>,
    /// License identifier.
    pub license: Option<String>,
    /// The model file (one GGUF file per entry for now).
    pub file: CatalogFile,
    /// Which catalog it came from.
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    model: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    description: Option<String>,
    license: Option<String>,
    #[serde(default = "gguf")]
    format: String,
    files: Vec<RawFile>,
}

fn gguf() -> String {
    "gguf".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    size: u64,
    sha256: String,
    urls: Vec<String>,
}

/// Parses one catalog document; every entry is validated (names, digests, URL schemes).
pub fn parse(text: &str, source: &str) -> Result<Vec<CatalogEntry>, CatalogError> {
    let err = |reason: String| CatalogError { source_name: source.to_owned(), reason };
    let raw: RawCatalog = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::with_capacity(raw.model.len());
    for e in raw.model {
        let name: ModelRef = e.name.parse().map_err(|x: crate::RefError| err(x.to_string()))?;
        if matches!(name, ModelRef::Digest(_)) {
            return Err(err(format!("entry {}: a catalog entry needs a name:tag", e.name)));
        }
        if e.format != "gguf" {
            return Err(err(format!("entry {name}: format {:?} cannot be pulled yet (only gguf)", e.format)));
        }
        let [file] = <[RawFile; 1]>::try_from(e.files)
            .map_err(|_| err(format!("entry {name}: exactly one file per entry is supported for now")))?;
        let hex = file.sha256.strip_prefix("sha256:").unwrap_or(&file.sha256);
        let digest: Digest =
            format!("sha256:{hex}").parse().map_err(|x: crate::RefError| err(format!("entry {name}: {x}")))?;
        if file.urls.is_empty() {
            return Err(err(format!("entry {name}: no urls")));
        }
        let urls = file
            .urls
            .iter()
            .map(|u| parse_url(u).map_err(|x| err(format!("entry {name}: {x}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if file.name.is_empty() || file.name.contains(['/', '\\']) || file.name.starts_with('.') {
            return Err(err(format!("entry {name}: file name {:?} must be a plain file name", file.name)));
        }
        out.push(CatalogEntry {
            name,
            description: e.description,
            license: e.license,
            file: CatalogFile { name: file.name, size: file.size, digest, urls },
            source: source.to_owned(),
        });
    }
    Ok(out)
}

/// The merged catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
    /// Sources that could not be read (the others are still used).
    pub problems: Vec<String>,
}

impl Catalog {
    /// Loads every source in order; a source that fails is reported in `problems` and skipped.
    pub async fn load(sources: &[CatalogSource], fetcher: &Fetcher) -> Catalog {
        let mut catalog = Catalog::default();
        for s in sources {
            let name = s.to_string();
            let text = match s {
                CatalogSource::Bundled => Ok(BUNDLED.to_owned()),
                CatalogSource::File(p) => read_file(p.clone()).await,
                CatalogSource::Url(u) => read_url(u, fetcher).await,
            };
            match text.and_then(|t| parse(&t, &name).map_err(|e| e.reason)) {
                Ok(entries) => catalog.extend(entries),
                Err(reason) => {
                    tracing::warn!(catalog = %name, %reason, "catalog skipped");
                    catalog.problems.push(format!("catalog {name}: {reason}"));
                }
            }
        }
        catalog
    }

    /// Adds entries, replacing those with the same name.
    pub fn extend(&mut self, entries: Vec<CatalogEntry>) {
        for e in entries {
            self.entries.insert(e.name.to_string(), e);
        }
    }

    /// The entry for `name:tag`.
    pub fn get(&self, r: &ModelRef) -> Option<&CatalogEntry> {
        self.entries.get(&r.to_string())
    }

    /// Every entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.values()
    }
}

async fn read_file(path: PathBuf) -> Result<String, String> {
    crate::download::blocking(move || {
        let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
        if meta.len() > MAX_CATALOG_LEN {
            return Err(format!("{} bytes, over the limit of {MAX_CATALOG_LEN}", meta.len()));
        }
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    })
    .await
}

async fn read_url(url: &Url, fetcher: &Fetcher) -> Result<String, String> {
    let mut resp = fetcher.get(url, None).await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(crate::fetch::describe)? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_CATALOG_LEN {
            return Err(format!("over the limit of {MAX_CATALOG_LEN} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| "not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_catalog_parses() {
        let entries = parse(BUNDLED, "bundled").unwrap();
        let smol = entries.iter().find(|e| e.name.to_string() == "smollm2:135m").expect("smollm2 listed");
        assert_eq!(smol.file.size, 98_362_432);
        assert_eq!(smol.file.digest.hex(), "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    }

    #[test]
    fn hostile_entries_are_refused() {
        let entry = |name: &str, sha: &str, url: &str, file: &str| {
            format!(
                "[[model]]\nname = {name:?}\n[[model.files]]\nname = {file:?}\nsize = 1\nsha256 = {sha:?}\nurls = [{url:?}]\n"
            )
        };
        let hex = "a".repeat(64);
        let ok = entry("m:1", &hex, "https://example.com/m.gguf", "m.gguf");
        assert_eq!(parse(&ok, "t").unwrap().len(), 1);
        for (text, what) in [
            (entry("../../etc:x", &hex, "https://e/m", "m"), "invalid model reference"),
            (entry("m", "sha256:../../x", "https://e/m", "m"), "digest"),
            (entry("m", &hex, "file:///etc/passwd", "m"), "scheme"),
            (entry("m", &hex, "https://u:p@e/m", "m"), "credentials"),
            (entry("m", &hex, "https://e/m", "../m"), "plain file name"),
            ("[[model]]\nname = \"m\"\nbogus = 1\nfiles = []\n".to_owned(), "bogus"),
        ] {
            let err = parse(&text, "t").unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}
