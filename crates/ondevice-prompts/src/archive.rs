//! Pack archives for moving packs between machines (`ondevice prompts export|import`): one JSON
//! document holding the pack's canonical form, its digest, and optionally an ed25519 signature.
//!
//! The signed message is `ondevice-prompt-pack/1\0` followed by the pack's digest (`sha256:<hex>`
//! of its canonical bytes), so a signature covers every file. On import the digest is recomputed,
//! a present signature must verify, and when trusted keys are given the signer must be one of them.
//! Keys are files holding 64 hex characters (the 32-byte secret seed, or the public key).

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::PromptError;
use crate::pack::{Pack, hex};

/// The archive format tag.
pub const ARCHIVE_FORMAT: &str = "ondevice-prompt-archive/1";
/// Largest archive accepted, in bytes.
pub const MAX_ARCHIVE_BYTES: usize = 16 << 20;
const CONTEXT: &[u8] = b"ondevice-prompt-pack/1\0";

/// An ed25519 secret key.
pub struct SigningKey(ed25519_dalek::SigningKey);
/// An ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", self.public())
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn unhex64(s: &str) -> Option<[u8; 64]> {
    let s = s.trim();
    if s.len() != 128 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, PromptError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| PromptError::Signature { reason: format!("no randomness: {e}") })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// From 64 hex characters.
    pub fn from_hex(s: &str) -> Result<SigningKey, PromptError> {
        unhex32(s)
            .map(|b| SigningKey(ed25519_dalek::SigningKey::from_bytes(&b)))
            .ok_or_else(|| PromptError::Signature { reason: "a secret key is 64 hex characters".into() })
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<SigningKey, PromptError> {
        let text = std::fs::read_to_string(path).map_err(|source| PromptError::Io {
            op: "cannot read",
            path: path.to_path_buf(),
            source,
        })?;
        SigningKey::from_hex(&text)
    }

    /// The secret as hex (for the key file).
    pub fn to_hex(&self) -> String {
        hex(&self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }
}

impl VerifyingKey {
    /// From 64 hex characters.
    pub fn from_hex(s: &str) -> Result<VerifyingKey, PromptError> {
        let bytes =
            unhex32(s).ok_or_else(|| PromptError::Signature { reason: "a public key is 64 hex characters".into() })?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(VerifyingKey)
            .map_err(|_| PromptError::Signature { reason: "not a valid ed25519 public key".into() })
    }
}

impl std::fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(self.0.as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureDoc {
    public_key: String,
    signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveDoc {
    format: String,
    digest: String,
    pack: PackDoc,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<SignatureDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackDoc {
    format: String,
    files: BTreeMap<String, String>,
}

/// A verified archive's content.
#[derive(Debug, Clone)]
pub struct Archive {
    /// The pack.
    pub pack: Pack,
    /// Who signed it, when it is signed (the signature verified).
    pub signer: Option<VerifyingKey>,
}

fn message(digest: &str) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(digest.as_bytes());
    m
}

/// Writes `pack` as an archive, signed when `key` is given.
pub fn export(pack: &Pack, key: Option<&SigningKey>) -> Vec<u8> {
    let digest = pack.digest();
    let signature = key.map(|k| SignatureDoc {
        public_key: k.public().to_string(),
        signature: hex(&k.0.sign(&message(&digest)).to_bytes()),
    });
    let doc = ArchiveDoc {
        format: ARCHIVE_FORMAT.to_owned(),
        digest,
        pack: PackDoc { format: crate::pack::FORMAT.to_owned(), files: pack.files().clone() },
        signature,
    };
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Reads and checks an archive: format, digest, the pack itself, and the signature. With
/// `trusted` keys, only a signature by one of them is accepted (an unsigned archive is refused).
pub fn import(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Archive, PromptError> {
    if bytes.len() > MAX_ARCHIVE_BYTES {
        return Err(PromptError::invalid(None, format!("the archive is larger than {MAX_ARCHIVE_BYTES} bytes")));
    }
    let doc: ArchiveDoc = serde_json::from_slice(bytes)
        .map_err(|e| PromptError::invalid(None, format!("not a prompt pack archive: {e}")))?;
    if doc.format != ARCHIVE_FORMAT || doc.pack.format != crate::pack::FORMAT {
        return Err(PromptError::invalid(
            None,
            format!("unknown archive format {:?} (expected {ARCHIVE_FORMAT})", doc.format),
        ));
    }
    let pack = Pack::from_files(doc.pack.files)?;
    let digest = pack.digest();
    if digest != doc.digest {
        return Err(PromptError::invalid(
            None,
            format!("the archive says digest {} but its content is {digest}: it was altered", doc.digest),
        ));
    }
    let signer = match doc.signature {
        None if !trusted.is_empty() => {
            return Err(PromptError::Signature {
                reason: "the archive is not signed and trusted keys were given".into(),
            });
        }
        None => None,
        Some(s) => {
            let key = VerifyingKey::from_hex(&s.public_key)?;
            let sig = unhex64(&s.signature)
                .map(|b| Signature::from_bytes(&b))
                .ok_or_else(|| PromptError::Signature { reason: "a signature is 128 hex characters".into() })?;
            key.0.verify(&message(&digest), &sig).map_err(|_| PromptError::Signature {
                reason: format!("the signature by {key} does not match the content: the archive was altered"),
            })?;
            if !trusted.is_empty() && !trusted.contains(&key) {
                return Err(PromptError::Signature {
                    reason: format!("signed by {key}, which is not among the trusted keys"),
                });
            }
            Some(key)
        }
    };
    Ok(Archive { pack, signer })
}
