//! Secret references in config (`api_key = "env:NAME"` or `"file:/path"`) and the resolved [`Secret`],
//! whose `Debug` and `Display` never show the value. Literal keys in the config file are refused: a
//! config file is shown, copied and committed far more often than an environment or a key file.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a secret comes from: an environment variable or a file. Written `"env:NAME"` or `"file:PATH"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// The value of this environment variable.
    Env(String),
    /// The content of this file, without a trailing newline.
    File(PathBuf),
}

/// A secret reference could not be parsed or resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The text is not `env:NAME` or `file:PATH` (a literal key, most likely).
    #[error("secrets must be references, not literal values: write \"env:VARIABLE\" or \"file:/path/to/key\"")]
    NotAReference,
    /// `env:` without a valid variable name.
    #[error("{0:?} is not an environment variable name: write \"env:NAME\" with letters, digits and _")]
    BadVariable(String),
    /// `file:` without a path.
    #[error("\"file:\" needs a path: write \"file:/path/to/key\"")]
    EmptyPath,
    /// The variable is unset or empty.
    #[error("environment variable {0} is not set or empty: export it before starting ondevice")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("secret file {} is empty", .0.display())]
    EmptyFile(PathBuf),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:PATH`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        if let Some(name) = text.strip_prefix("env:") {
            let ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(SecretError::BadVariable(name.to_owned()));
            }
            Ok(SecretRef::Env(name.to_owned()))
        } else if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SecretError::EmptyPath);
            }
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            Err(SecretError::NotAReference)
        }
    }

    /// Whether `text` looks like a reference (`env:` or `file:` prefix), valid or not.
    pub fn is_reference(text: &str) -> bool {
        text.starts_with("env:") || text.starts_with("file:")
    }

    /// Reads the secret from the process environment or the file.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                _ => Err(SecretError::MissingEnv(name.clone())),
            },
            SecretRef::File(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SecretError::File { path: path.clone(), source })?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(SecretError::EmptyFile(path.clone()));
                }
                Ok(Secret(value.to_owned()))
            }
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SecretRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for SecretRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$",
            "description": "A secret reference: \"env:VARIABLE\" or \"file:/path/to/key\"; literal secrets are refused."
        })
    }
}

/// A resolved secret. `Debug` and `Display` print `<redacted>`; use [`Secret::expose`] where the value
/// must go on the wire (and nowhere else).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (tests, flags).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The clear value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::redact::REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_refuses_literals() {
        assert_eq!(SecretRef::parse("env:OPENAI_KEY").unwrap(), SecretRef::Env("OPENAI_KEY".into()));
        assert_eq!(SecretRef::parse("file:/run/key").unwrap(), SecretRef::File("/run/key".into()));
        assert!(matches!(SecretRef::parse("sk-live-123"), Err(SecretError::NotAReference)));
        assert!(matches!(SecretRef::parse("env:1BAD"), Err(SecretError::BadVariable(_))));
        assert!(matches!(SecretRef::parse("env:"), Err(SecretError::BadVariable(_))));
        assert!(matches!(SecretRef::parse("file:"), Err(SecretError::EmptyPath)));
        assert_eq!(SecretRef::parse("env:A_B").unwrap().to_string(), "env:A_B");
    }

    #[test]
    fn resolves_files_and_hides_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = SecretRef::File(path.clone()).resolve().unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert!(!format!("{secret:?} {secret}").contains("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(SecretRef::File(path).resolve(), Err(SecretError::EmptyFile(_))));
        let missing = SecretRef::Env("ONDEVICE_TEST_SURELY_UNSET_VARIABLE".into()).resolve().unwrap_err();
        assert!(missing.to_string().contains("ONDEVICE_TEST_SURELY_UNSET_VARIABLE"), "{missing}");
    }
}
