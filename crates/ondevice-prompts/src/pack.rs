//! The pack format: a directory with `pack.toml` (the manifest), template files it names and
//! `tests/*.toml` (example variables with the messages they must render to).
//!
//! A pack's content is its set of files ([`Pack::files`]); its canonical form is one JSON document
//! with the files sorted by path ([`Pack::canonical_bytes`]), whose SHA-256 is the pack's digest.
//! Everything read here is untrusted: sizes, counts, paths and names are checked before use, and
//! the manifest is strict TOML (unknown keys are errors).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::PromptError;

/// The manifest's file name.
pub const MANIFEST: &str = "pack.toml";
/// The format tag of a pack's canonical JSON form.
pub const FORMAT: &str = "ondevice-prompt-pack/1";
/// Largest file in a pack, in bytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Largest pack (all files), in bytes.
pub const MAX_PACK_BYTES: usize = 4 << 20;
/// Most files in a pack.
pub const MAX_FILES: usize = 256;
/// Most messages in a pack.
pub const MAX_MESSAGES: usize = 128;
/// Most variables in a pack.
pub const MAX_VARIABLES: usize = 256;
/// Longest pack name, in bytes.
pub const MAX_NAME: usize = 64;

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user (or a few-shot example's question).
    User,
    /// The assistant (a few-shot example's answer).
    Assistant,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A variable's declared type, checked when a request supplies it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    /// Text (the default).
    #[default]
    String,
    /// An integer or a float.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A list (for example documents for `join_documents`).
    List,
    /// A table.
    Object,
    /// Anything.
    Any,
}

/// How a string variable may shrink to fit a token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Keep the beginning, cut the end.
    Head,
    /// Keep the end, cut the beginning.
    Tail,
    /// Keep the beginning and the end, cut the middle.
    Middle,
    /// Keep the sentences most relevant to the query, in their original order.
    Extractive,
}

/// One declared variable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// A request must supply it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Used when a request does not supply it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// Its type.
    #[serde(default, rename = "type")]
    pub ty: VarType,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How it shrinks to fit a budget; absent: it never shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<Policy>,
    /// Order of shrinking: lower priorities shrink first.
    #[serde(default)]
    pub priority: i32,
    /// For `extractive`: the variable holding the query the sentences are ranked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// One message template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// Who speaks.
    pub role: Role,
    /// The template inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Or a template file in the pack (relative path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Hints about the models the pack is written for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHints {
    /// Models it was tested with.
    #[serde(default)]
    pub recommended: Vec<String>,
    /// The embedding model used by `extractive` compression (lexical ranking without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<String>,
}

/// The default token budget of a render that names a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Most prompt tokens.
    pub tokens: usize,
}

/// `pack.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Lowercase letters, digits, `.`, `_` and `-`, starting with a letter or digit.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// One line.
    #[serde(default)]
    pub description: String,
    /// Labels the publish moves to this version (default: `production`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Declared variables.
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    /// Messages, in order (system, few-shot examples, user).
    pub messages: Vec<MessageSpec>,
    /// Model hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelHints>,
    /// Default budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// A pack test: `tests/NAME.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackTest {
    /// Variables for the render.
    #[serde(default)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// The messages it must render to, exactly.
    #[serde(default)]
    pub messages: Vec<ExpectedMessage>,
    /// Or: the render must fail with an error containing this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One expected message of a [`PackTest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedMessage {
    /// Who speaks.
    pub role: Role,
    /// Exactly what is said.
    pub content: String,
}

/// A pack: its files and its parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    manifest: Manifest,
    files: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canonical {
    format: String,
    files: BTreeMap<String, String>,
}

/// Checks a pack name.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a pack name has 1 to {MAX_NAME} characters"));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_lowercase() && !first.is_ascii_digit() {
        return Err("a pack name starts with a lowercase letter or a digit".into());
    }
    if !name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')) {
        return Err("a pack name holds only lowercase letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// Checks a label name (`production`, `staging`, ...): it must not look like a version.
pub fn validate_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 32
        && label.as_bytes()[0].is_ascii_lowercase()
        && label.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid label {label:?}: 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter"))
    }
}

fn validate_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 256 || p.contains('\\') || p.contains('\0') {
        return Err(format!("invalid file path {p:?}"));
    }
    let path = Path::new(p);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("file path {p:?} must be relative, inside the pack, without '..'"));
    }
    Ok(())
}

impl Pack {
    /// Parses and checks a pack from its files (path → text).
    pub fn from_files(files: BTreeMap<String, String>) -> Result<Pack, PromptError> {
        if files.len() > MAX_FILES {
            return Err(PromptError::invalid(None, format!("more than {MAX_FILES} files")));
        }
        let mut total = 0usize;
        for (p, text) in &files {
            validate_rel_path(p).map_err(|r| PromptError::invalid(None, r))?;
            if text.len() > MAX_FILE_BYTES {
                return Err(PromptError::invalid(Some(Path::new(p)), format!("larger than {MAX_FILE_BYTES} bytes")));
            }
            total += text.len();
        }
        if total > MAX_PACK_BYTES {
            return Err(PromptError::invalid(None, format!("larger than {MAX_PACK_BYTES} bytes in all")));
        }
        let text = files.get(MANIFEST).ok_or_else(|| {
            PromptError::invalid(None, format!("no {MANIFEST}: create one with `ondevice prompts new`"))
        })?;
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| PromptError::invalid(Some(Path::new(MANIFEST)), e.to_string().trim_end().to_owned()))?;
        let bad = |reason: String| PromptError::invalid(Some(Path::new(MANIFEST)), reason);
        validate_name(&manifest.name).map_err(bad)?;
        for l in &manifest.labels {
            validate_label(l).map_err(bad)?;
        }
        if manifest.messages.is_empty() {
            return Err(bad("a pack has at least one [[messages]] entry".into()));
        }
        if manifest.messages.len() > MAX_MESSAGES {
            return Err(bad(format!("more than {MAX_MESSAGES} messages")));
        }
        if manifest.variables.len() > MAX_VARIABLES {
            return Err(bad(format!("more than {MAX_VARIABLES} variables")));
        }
        for name in manifest.variables.keys() {
            let ident = name.len() <= 64
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                return Err(bad(format!("variable name {name:?} is not an identifier (letters, digits, '_')")));
            }
        }
        for (name, v) in &manifest.variables {
            if v.compress.is_some() && !matches!(v.ty, VarType::String) {
                return Err(bad(format!("variable {name:?}: only string variables can be compressed")));
            }
            if let Some(q) = &v.query {
                if !manifest.variables.contains_key(q) {
                    return Err(bad(format!("variable {name:?}: its query variable {q:?} is not declared")));
                }
            }
        }
        for (i, m) in manifest.messages.iter().enumerate() {
            match (&m.template, &m.file) {
                (Some(_), None) => {}
                (None, Some(f)) => {
                    validate_rel_path(f).map_err(bad)?;
                    if !files.contains_key(f) {
                        return Err(bad(format!("messages[{i}] names file {f:?}, which is not in the pack")));
                    }
                }
                _ => return Err(bad(format!("messages[{i}] needs exactly one of `template` or `file`"))),
            }
        }
        for (p, text) in &files {
            if let Some(rest) = p.strip_prefix("tests/") {
                if rest.ends_with(".toml") {
                    toml::from_str::<PackTest>(text)
                        .map_err(|e| PromptError::invalid(Some(Path::new(p)), e.to_string().trim_end().to_owned()))?;
                }
            }
        }
        Ok(Pack { manifest, files })
    }

    /// Reads a pack directory: `pack.toml`, the template files it names and `tests/*.toml`.
    /// Symbolic links are refused.
    pub fn load_dir(dir: &Path) -> Result<Pack, PromptError> {
        let mut files = BTreeMap::new();
        let read = |rel: &str| -> Result<String, PromptError> {
            let path = dir.join(rel);
            let meta = std::fs::symlink_metadata(&path).map_err(|source| PromptError::Io {
                op: "cannot read",
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(PromptError::invalid(Some(&path), "not a regular file (symbolic links are refused)"));
            }
            if meta.len() > MAX_FILE_BYTES as u64 {
                return Err(PromptError::invalid(Some(&path), format!("larger than {MAX_FILE_BYTES} bytes")));
            }
            let bytes = std::fs::read(&path).map_err(|source| PromptError::Io {
                op: "cannot read",
                path: path.clone(),
                source,
            })?;
            String::from_utf8(bytes).map_err(|_| PromptError::invalid(Some(&path), "not UTF-8 text"))
        };
        let manifest_text = read(MANIFEST)?;
        let manifest: Manifest = toml::from_str(&manifest_text)
            .map_err(|e| PromptError::invalid(Some(&dir.join(MANIFEST)), e.to_string().trim_end().to_owned()))?;
        files.insert(MANIFEST.to_owned(), manifest_text);
        for m in &manifest.messages {
            if let Some(f) = &m.file {
                validate_rel_path(f).map_err(|r| PromptError::invalid(Some(&dir.join(MANIFEST)), r))?;
                files.insert(f.clone(), read(f)?);
            }
        }
        let tests = dir.join("tests");
        if tests.is_dir() {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&tests).map_err(|source| PromptError::Io {
                op: "cannot list",
                path: tests.clone(),
                source,
            })? {
                let entry =
                    entry.map_err(|source| PromptError::Io { op: "cannot list", path: tests.clone(), source })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".toml") && !name.starts_with('.') {
                    names.push(name);
                }
                if names.len() > MAX_FILES {
                    return Err(PromptError::invalid(Some(&tests), format!("more than {MAX_FILES} files")));
                }
            }
            names.sort();
            for n in names {
                let rel = format!("tests/{n}");
                files.insert(rel.clone(), read(&rel)?);
            }
        }
        Pack::from_files(files)
    }

    /// Parses a pack from its canonical JSON form (a blob or an archive's content).
    pub fn from_canonical(bytes: &[u8]) -> Result<Pack, PromptError> {
        if bytes.len() > MAX_PACK_BYTES * 2 {
            return Err(PromptError::invalid(None, "the pack is too large"));
        }
        let c: Canonical =
            serde_json::from_slice(bytes).map_err(|e| PromptError::invalid(None, format!("not a prompt pack: {e}")))?;
        if c.format != FORMAT {
            return Err(PromptError::invalid(None, format!("unknown pack format {:?} (expected {FORMAT})", c.format)));
        }
        Pack::from_files(c.files)
    }

    /// The canonical form: `{"format", "files"}` as compact JSON with files sorted by path.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct View<'a> {
            format: &'a str,
            files: &'a BTreeMap<String, String>,
        }
        serde_json::to_vec(&View { format: FORMAT, files: &self.files }).unwrap_or_default()
    }

    /// `sha256:<hex>` of [`Pack::canonical_bytes`].
    pub fn digest(&self) -> String {
        let d = Sha256::digest(self.canonical_bytes());
        format!("sha256:{}", hex(&d))
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The version.
    pub fn version(&self) -> &semver::Version {
        &self.manifest.version
    }

    /// Every file, path → text.
    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// The template source of message `i`.
    pub fn template(&self, i: usize) -> Option<&str> {
        let m = self.manifest.messages.get(i)?;
        match (&m.template, &m.file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => self.files.get(f).map(String::as_str),
            (None, None) => None,
        }
    }

    /// The pack's tests, by name (file stem), in name order.
    pub fn tests(&self) -> Vec<(String, PackTest)> {
        self.files
            .iter()
            .filter_map(|(p, text)| {
                let stem = p.strip_prefix("tests/")?.strip_suffix(".toml")?;
                Some((stem.to_owned(), toml::from_str(text).ok()?))
            })
            .collect()
    }

    /// Writes the pack's files under `dir` (which must not exist yet or be empty).
    pub fn write_dir(&self, dir: &Path) -> Result<(), PromptError> {
        for (rel, text) in &self.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| PromptError::Io {
                    op: "cannot create",
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::fs::write(&path, text).map_err(|source| PromptError::Io {
                op: "cannot write",
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a new pack named `name`: a system and a user template, one test.
pub fn scaffold(name: &str) -> Result<Pack, PromptError> {
    validate_name(name)
        .map_err(|r| PromptError::InvalidReference { reference: name.chars().take(100).collect(), reason: r })?;
    let manifest = format!(
        r#"name = "{name}"
version = "0.1.0"
description = "Summarize a text"

[variables.text]
required = true
description = "The text to summarize"
compress = "extractive"
query = "style"

[variables.style]
default = "brief"

[[messages]]
role = "system"
template = "You summarize in a {{{{ style }}}} style."

[[messages]]
role = "user"
file = "templates/user.j2"
"#
    );
    let mut files = BTreeMap::new();
    files.insert(MANIFEST.to_owned(), manifest);
    files.insert("templates/user.j2".to_owned(), "Summarize this text:\n\n{{ text }}".to_owned());
    files.insert(
        "tests/basic.toml".to_owned(),
        r#"[variables]
text = "The cat sat on the mat."

[[messages]]
role = "system"
content = "You summarize in a brief style."

[[messages]]
role = "user"
content = "Summarize this text:\n\nThe cat sat on the mat."
"#
        .to_owned(),
    );
    Pack::from_files(files)
}
