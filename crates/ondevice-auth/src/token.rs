//! The API key format: `odk_<12 hex id>_<64 hex secret>`. The id is public and names the key;
//! the secret is 256 random bits, stored only as a SHA-256 hash and compared in constant time.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every ondevice API key, so leaked keys are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "odk_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
/// Length of a well-formed key string.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + ID_BYTES * 2 + 1 + SECRET_BYTES * 2;

/// Why a presented credential could not even be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// It does not start with `odk_`.
    #[error("api key must start with \"odk_\"")]
    Prefix,
    /// Wrong total length.
    #[error("api key has the wrong length: expected {TOKEN_LEN} characters")]
    Length,
    /// Not `odk_<id>_<secret>` in lowercase hex.
    #[error("api key is malformed: expected odk_<12 hex digits>_<64 hex digits>")]
    Shape,
    /// The authorization header is not `Bearer <key>`.
    #[error("authorization header must be \"Bearer <api key>\"")]
    Scheme,
    /// The operating system's random source failed.
    #[error("cannot read random bytes from the operating system")]
    Random,
}

/// The public identifier of a key (the part between `odk_` and the secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; ID_BYTES]);

impl KeyId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; ID_BYTES];
        unhex(s, &mut id).ok_or(CredentialError::Shape)?;
        Ok(KeyId(id))
    }
}

/// A full API key: id plus secret. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Token {
    id: KeyId,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({TOKEN_PREFIX}{}_<redacted>)", self.id)
    }
}

impl Token {
    /// A new random key.
    pub fn generate() -> Result<Token, CredentialError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id).map_err(|_| CredentialError::Random)?;
        getrandom::fill(&mut secret).map_err(|_| CredentialError::Random)?;
        Ok(Token { id: KeyId(id), secret })
    }

    /// Parses `odk_<id>_<secret>`; surrounding whitespace is ignored (token files end in a newline).
    pub fn parse(s: &str) -> Result<Token, CredentialError> {
        let s = s.trim();
        let rest = s.strip_prefix(TOKEN_PREFIX).ok_or(CredentialError::Prefix)?;
        if s.len() != TOKEN_LEN {
            return Err(CredentialError::Length);
        }
        if !s.is_ascii() {
            // Also keeps the byte-index splits below on character boundaries.
            return Err(CredentialError::Shape);
        }
        let (id_hex, rest) = rest.split_at(ID_BYTES * 2);
        let secret_hex = rest.strip_prefix('_').ok_or(CredentialError::Shape)?;
        let id: KeyId = id_hex.parse()?;
        let mut secret = [0u8; SECRET_BYTES];
        unhex(secret_hex, &mut secret).ok_or(CredentialError::Shape)?;
        Ok(Token { id, secret })
    }

    /// The public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The hash stored in the database for this key's secret.
    pub fn secret_hash(&self) -> SecretHash {
        let mut h = Sha256::new();
        h.update(b"ondevice-api-key-v1\0");
        h.update(self.secret);
        SecretHash(h.finalize().into())
    }

    /// The key as the user types it. Show it once, never log it.
    pub fn expose(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, hex(&self.secret))
    }
}

/// SHA-256 of a key's secret (domain-separated). Comparison is constant-time.
#[derive(Clone, Copy)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Constant-time equality.
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// Where a credential may arrive from, already split out of a request by the edge layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// `Authorization` header (HTTP) or `authorization` metadata (gRPC).
    pub authorization: Option<&'a [u8]>,
    /// `x-api-key` header.
    pub x_api_key: Option<&'a [u8]>,
    /// `Sec-WebSocket-Protocol` header, a comma-separated list that may hold `ondevice.bearer.KEY`.
    pub websocket_protocol: Option<&'a [u8]>,
}

/// Subprotocol prefix that carries a key in a WebSocket handshake (browsers cannot set headers).
pub const WS_BEARER_PREFIX: &str = "ondevice.bearer.";

impl<'a> Presented<'a> {
    /// The single key string presented, `Ok(None)` when none was presented at all.
    pub fn credential(&self) -> Result<Option<&'a str>, CredentialError> {
        if let Some(raw) = self.authorization {
            let v = std::str::from_utf8(raw).map_err(|_| CredentialError::Scheme)?.trim();
            let (scheme, key) = v.split_once(' ').ok_or(CredentialError::Scheme)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(CredentialError::Scheme);
            }
            return Ok(Some(key.trim()));
        }
        if let Some(raw) = self.x_api_key {
            let v = std::str::from_utf8(raw).map_err(|_| CredentialError::Shape)?;
            return Ok(Some(v.trim()));
        }
        if let Some(raw) = self.websocket_protocol {
            let v = std::str::from_utf8(raw).map_err(|_| CredentialError::Shape)?;
            if let Some(key) = v.split(',').map(str::trim).find_map(|p| p.strip_prefix(WS_BEARER_PREFIX)) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_round_trip_and_hash_stably() {
        let t = Token::generate().unwrap();
        let s = t.expose();
        assert_eq!(s.len(), TOKEN_LEN);
        let back = Token::parse(&format!("  {s}\n")).unwrap();
        assert_eq!(back.id(), t.id());
        assert!(back.secret_hash().matches(&t.secret_hash()));
        let other = Token::generate().unwrap();
        assert!(!other.secret_hash().matches(&t.secret_hash()));
        assert!(!format!("{t:?}").contains(&s[20..]), "debug output leaks the secret");
    }

    #[test]
    fn malformed_tokens_are_typed_errors() {
        let good = Token::generate().unwrap().expose();
        let cases: Vec<(String, CredentialError)> = vec![
            ("".into(), CredentialError::Prefix),
            ("sk-abc".into(), CredentialError::Prefix),
            ("odk_short".into(), CredentialError::Length),
            (good.replace('_', "-").replacen("odk-", "odk_", 1), CredentialError::Shape),
            (good.to_uppercase().replacen("ODK_", "odk_", 1), CredentialError::Shape),
            (format!("{good}0"), CredentialError::Length),
            (format!("{}é", &good[..good.len() - 2]), CredentialError::Shape),
            // Found by the credential fuzz target: a multi-byte character across the id boundary.
            (format!("odk_{}é_{}", &good[4..15], &good[18..]), CredentialError::Shape),
        ];
        for (input, want) in cases {
            assert_eq!(Token::parse(&input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn presented_credentials() {
        let p = Presented { authorization: Some(b"Bearer odk_x"), ..Default::default() };
        assert_eq!(p.credential().unwrap(), Some("odk_x"));
        let p = Presented { authorization: Some(b"bearer   odk_y "), ..Default::default() };
        assert_eq!(p.credential().unwrap(), Some("odk_y"));
        let p = Presented { authorization: Some(b"Basic dXNlcjpwYXNz"), ..Default::default() };
        assert_eq!(p.credential().unwrap_err(), CredentialError::Scheme);
        let p = Presented { x_api_key: Some(b"odk_z"), ..Default::default() };
        assert_eq!(p.credential().unwrap(), Some("odk_z"));
        let p = Presented { websocket_protocol: Some(b"ondevice.v1, ondevice.bearer.odk_w"), ..Default::default() };
        assert_eq!(p.credential().unwrap(), Some("odk_w"));
        let p = Presented { websocket_protocol: Some(b"ondevice.v1"), ..Default::default() };
        assert_eq!(p.credential().unwrap(), None);
        assert_eq!(Presented::default().credential().unwrap(), None);
    }
}
