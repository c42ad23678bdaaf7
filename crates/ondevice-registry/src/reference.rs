//! Model references (`name:tag` or `sha256:<hex>`) and digests, validated strictly.
//!
//! Names and digests end up in file paths and SQL rows, so nothing that could climb out of
//! `blobs/` gets through: this is the class of Ollama CVE-2024-37032, where a digest such as
//! `sha256:../../etc/passwd` became a path. A [`Digest`] is exactly `sha256:` + 64 lowercase
//! hex digits and is the only way to name a blob file.

use std::fmt;
use std::str::FromStr;

/// Longest model name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Longest tag accepted.
pub const MAX_TAG_LEN: usize = 64;
/// The tag used when a reference has none.
pub const DEFAULT_TAG: &str = "latest";

/// A string that is not a valid model reference or digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model reference {input:?}: {reason}")]
pub struct RefError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn bad(input: &str, reason: &'static str) -> RefError {
    // Cap what is echoed back: the input may be huge or hostile.
    let input: String = input.chars().take(200).collect();
    RefError { input, reason }
}

/// A SHA-256 content digest, displayed as `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Wraps raw hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The blob's file name in `blobs/`: `sha256-<hex>`.
    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }

    /// Parses a blob file name (`sha256-<hex>`), as strictly as [`Digest::from_str`].
    pub fn from_file_name(name: &str) -> Option<Self> {
        name.strip_prefix("sha256-").and_then(|hex| parse_hex(hex).ok())
    }
}

fn parse_hex(hex: &str) -> Result<Digest, &'static str> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err("a digest is sha256: followed by exactly 64 hex digits");
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err("a digest has only lowercase hex digits (0-9, a-f)"),
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(Digest(out))
}

impl FromStr for Digest {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, RefError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| bad(s, "a digest starts with sha256:"))?;
        parse_hex(hex).map_err(|reason| bad(s, reason))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// A reference to a model: by `name:tag`, or by the digest of its blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelRef {
    /// `name:tag`; both validated.
    Named {
        /// Lowercase ASCII alphanumerics and `._-/`.
        name: String,
        /// ASCII alphanumerics and `._-`.
        tag: String,
    },
    /// `sha256:<hex>`.
    Digest(Digest),
}

impl ModelRef {
    /// A validated `name:tag`.
    pub fn named(name: &str, tag: &str) -> Result<Self, RefError> {
        validate_name(name)?;
        validate_tag(tag)?;
        Ok(ModelRef::Named { name: name.to_owned(), tag: tag.to_owned() })
    }

    /// `name:latest` with the name made from free text by [`sanitize_name`].
    pub fn sanitized(text: &str) -> Self {
        ModelRef::Named { name: sanitize_name(text), tag: DEFAULT_TAG.to_owned() }
    }
}

/// A valid model name made from free text (a GGUF's `general.name`, a file stem): lowercased,
/// runs of other characters turned into one `-`, trimmed and shortened; `model` if nothing is left.
pub fn sanitize_name(text: &str) -> String {
    let mut name = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' { c } else { '-' };
        let sep = matches!(c, '.' | '_' | '-');
        if sep && (name.is_empty() || name.ends_with(['.', '_', '-'])) {
            continue;
        }
        if name.len() >= MAX_NAME_LEN {
            break;
        }
        name.push(c);
    }
    let name = name.trim_end_matches(['.', '_', '-']);
    if name.is_empty() { "model".to_owned() } else { name.to_owned() }
}

impl FromStr for ModelRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, RefError> {
        if s.starts_with("sha256:") {
            return s.parse().map(ModelRef::Digest);
        }
        let (name, tag) = s.split_once(':').unwrap_or((s, DEFAULT_TAG));
        validate_name(name).map_err(|e| bad(s, e.reason))?;
        validate_tag(tag).map_err(|e| bad(s, e.reason))?;
        Ok(ModelRef::Named { name: name.to_owned(), tag: tag.to_owned() })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Named { name, tag } => write!(f, "{name}:{tag}"),
            ModelRef::Digest(d) => d.fmt(f),
        }
    }
}

fn validate_name(name: &str) -> Result<(), RefError> {
    if name.is_empty() {
        return Err(bad(name, "the name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(name, "the name is longer than 128 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        return Err(bad(name, "a name has only lowercase letters, digits and . _ - /"));
    }
    if name.contains("..") {
        return Err(bad(name, "a name must not contain .."));
    }
    for segment in name.split('/') {
        match segment.bytes().next() {
            None => return Err(bad(name, "a name has no empty segments (leading, trailing or double /)")),
            Some(b) if !b.is_ascii_alphanumeric() => {
                return Err(bad(name, "each segment of a name starts with a letter or digit"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), RefError> {
    if tag.is_empty() {
        return Err(bad(tag, "the tag is empty"));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(bad(tag, "the tag is longer than 64 characters"));
    }
    if !tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(bad(tag, "a tag has only letters, digits and . _ -"));
    }
    if !tag.as_bytes()[0].is_ascii_alphanumeric() || tag.contains("..") {
        return Err(bad(tag, "a tag starts with a letter or digit and has no .."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    #[test]
    fn valid_references() {
        let cases: &[(&str, &str)] = &[
            ("smollm2", "smollm2:latest"),
            ("smollm2:135m", "smollm2:135m"),
            ("library/smollm2:Q4_K_M", "library/smollm2:Q4_K_M"),
            ("a.b_c-d/e1:v1.2-rc_3", "a.b_c-d/e1:v1.2-rc_3"),
            ("0", "0:latest"),
        ];
        for (input, shown) in cases {
            let r: ModelRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *shown);
        }
        let d: ModelRef = format!("sha256:{HEX}").parse().unwrap();
        assert!(matches!(d, ModelRef::Digest(x) if x.hex() == HEX));
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
    }

    #[test]
    fn hostile_references_are_refused() {
        let long_name = "a".repeat(129);
        let long_tag = format!("a:{}", "b".repeat(65));
        let cases: Vec<String> = [
            "",
            ":latest",
            "../etc/passwd",
            "a/../../b",
            "..",
            "a..b",
            "/abs",
            "-flag",
            ".hidden",
            "a//b",
            "a/",
            "a/.b",
            "a/-b",
            "UPPER",
            "a b",
            "a\\b",
            "a\0b",
            "a\nb",
            "caf\u{e9}",
            "a:",
            "a:b:c",
            "a:../x",
            "a:-x",
            "a:.x",
            "a:b/c",
            "a:b c",
            "sha256:",
            "sha256:abc",
            "sha256:../../../../etc/passwd",
            "sha256:B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53",
            "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db5",
            "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db533",
            "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db5g",
            "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110d/53",
        ]
        .into_iter()
        .map(String::from)
        .chain([long_name, long_tag])
        .collect();
        for input in &cases {
            let err = input.parse::<ModelRef>().expect_err(input);
            assert!(err.to_string().starts_with("invalid model reference"), "{err}");
        }
        // Exactly at the limits is fine.
        format!("{}:{}", "a".repeat(128), "b".repeat(64)).parse::<ModelRef>().unwrap();
    }

    #[test]
    fn digests_round_trip_through_file_names() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.file_name(), format!("sha256-{HEX}"));
        assert_eq!(Digest::from_file_name(&d.file_name()), Some(d));
        for bad in ["sha256-", "sha256-../x", &format!("sha256-{HEX}.partial"), &format!("sha512-{HEX}")] {
            assert_eq!(Digest::from_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn free_text_is_sanitized_into_a_valid_name() {
        let cases = [
            ("SmolLM2 135M Instruct", "smollm2-135m-instruct"),
            ("SmolLM2-135M-Instruct.Q4_1", "smollm2-135m-instruct.q4_1"),
            ("../../etc/passwd", "etc-passwd"),
            ("--..__", "model"),
            ("", "model"),
            ("Ünïcödé", "n-c-d"),
        ];
        for (text, want) in cases {
            let r = ModelRef::sanitized(text);
            assert_eq!(r.to_string(), format!("{want}:latest"), "{text}");
            r.to_string().parse::<ModelRef>().unwrap();
        }
        let long = ModelRef::sanitized(&"x".repeat(500));
        long.to_string().parse::<ModelRef>().unwrap();
    }
}
