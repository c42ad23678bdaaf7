//! The one verifier every surface uses (HTTP layer, WebSocket upgrade, gRPC interceptor).
//!
//! Keys live in a [`KeyStore`] (SQLite in production) and are cached in memory; creation and
//! revocation write through, so a revocation is effective on the next request. Last-used times are
//! kept in memory and written back by [`Verifier::flush_last_used`] at most once a minute per key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::scope::{Scope, Scopes};
use crate::token::{CredentialError, KeyId, Presented, SecretHash, Token};

/// Name of the key whose token is written to the bootstrap token file.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap";
const TOUCH_EVERY_S: i64 = 60;

/// A stored API key (the secret only as its hash).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Public id.
    pub id: KeyId,
    /// Human name.
    pub name: String,
    /// Granted scopes.
    pub scopes: Scopes,
    /// SHA-256 of the secret.
    pub hash: SecretHash,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last accepted use.
    pub last_used_at: Option<i64>,
    /// Unix seconds of revocation.
    pub revoked_at: Option<i64>,
}

/// A persistence failure of the key store, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("key store: {0}")]
pub struct StoreFailure(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Persistence of keys. Implemented by the SQLite store; every call is short and synchronous.
pub trait KeyStore: Send + Sync {
    /// Every key, revoked ones included.
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreFailure>;
    /// Adds a new key.
    fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreFailure>;
    /// Marks a key revoked at `at`.
    fn revoke_key(&self, id: KeyId, at: i64) -> Result<(), StoreFailure>;
    /// Records last-used times.
    fn touch_keys(&self, used: &[(KeyId, i64)]) -> Result<(), StoreFailure>;
}

/// Why a request was not allowed. [`AuthError::is_forbidden`] tells 403 from 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key was presented.
    #[error("missing api key: send \"Authorization: Bearer <key>\"")]
    Missing,
    /// The presented value is not a well-formed key.
    #[error("invalid api key: {0}")]
    Malformed(#[from] CredentialError),
    /// No key with this id exists, or the secret does not match.
    #[error("invalid api key")]
    Invalid,
    /// The key was revoked.
    #[error("api key {0} has been revoked")]
    Revoked(KeyId),
    /// The key is valid but lacks the scope.
    #[error("api key lacks the {required} scope")]
    Forbidden {
        /// The scope the operation needs.
        required: Scope,
    },
    /// No key with this id (key management).
    #[error("no api key with id {0}")]
    NotFound(String),
    /// A key name that is empty, too long or has odd characters.
    #[error("invalid key name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    /// A key must have at least one scope.
    #[error("a key needs at least one scope (admin, models, infer, read)")]
    NoScope,
    /// Revoking this key would leave no active admin key, locking everyone out of key management.
    #[error(
        "api key {0} is the last active admin key: create another admin key first (`ondevice keys create --name NAME --scope admin`), then revoke this one"
    )]
    LastAdmin(KeyId),
    /// Persistence failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
    /// The bootstrap token file could not be written or read.
    #[error("bootstrap token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl AuthError {
    /// 403 rather than 401.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Forbidden { .. })
    }

    /// A short label for metrics: `missing`, `malformed`, `invalid`, `revoked`, `forbidden`, ...
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Invalid => "invalid",
            AuthError::Revoked(_) => "revoked",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::NotFound(_) => "not_found",
            AuthError::BadName(_) | AuthError::NoScope => "bad_request",
            AuthError::LastAdmin(_) => "conflict",
            AuthError::Store(_) | AuthError::TokenFile { .. } => "internal",
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's id; `None` when auth is disabled.
    pub key_id: Option<KeyId>,
    /// The key's name (`anonymous` when auth is disabled).
    pub name: String,
    /// The key's scopes.
    pub scopes: Scopes,
}

/// A key as listed to an admin (no hash).
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Public id.
    pub id: KeyId,
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Scopes,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
}

/// What [`Verifier::ensure_bootstrap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// A new token was written (first start, or the file was deleted to rotate it).
    Created,
    /// The existing file holds a valid key.
    Reused,
}

struct Entry {
    record: KeyRecord,
    touched: bool,
}

/// Verifies credentials against the key cache. Cheap to share behind an `Arc`.
pub struct Verifier {
    store: Arc<dyn KeyStore>,
    keys: RwLock<HashMap<KeyId, Entry>>,
    enabled: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Verifier {
    /// Loads every key from the store. With `enabled = false` every request is allowed as admin.
    pub fn new(store: Arc<dyn KeyStore>, enabled: bool) -> Result<Verifier, AuthError> {
        let keys = store.load_keys()?.into_iter().map(|record| (record.id, Entry { record, touched: false })).collect();
        Ok(Verifier { store, keys: RwLock::new(keys), enabled })
    }

    /// Whether keys are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Authenticates whatever credential the request presented and checks `required`.
    pub fn authorize(&self, presented: &Presented<'_>, required: Scope) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal { key_id: None, name: "anonymous".to_owned(), scopes: Scopes::admin() });
        }
        let credential = presented.credential()?.ok_or(AuthError::Missing)?;
        let principal = self.verify(credential)?;
        if principal.scopes.satisfies(required) { Ok(principal) } else { Err(AuthError::Forbidden { required }) }
    }

    /// Authenticates a key string (no scope check).
    pub fn verify(&self, credential: &str) -> Result<Principal, AuthError> {
        let token = Token::parse(credential)?;
        let hash = token.secret_hash();
        let now = now_unix();
        let principal = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let entry = keys.get(&token.id()).ok_or(AuthError::Invalid)?;
            let r = &entry.record;
            if !r.hash.matches(&hash) {
                return Err(AuthError::Invalid);
            }
            if r.revoked_at.is_some() {
                return Err(AuthError::Revoked(r.id));
            }
            let principal = Principal { key_id: Some(r.id), name: r.name.clone(), scopes: r.scopes };
            if r.last_used_at.is_some_and(|t| now - t < TOUCH_EVERY_S) {
                return Ok(principal);
            }
            principal
        };
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = keys.get_mut(&token.id()) {
            e.record.last_used_at = Some(now);
            e.touched = true;
        }
        Ok(principal)
    }

    /// The principal of a key by id, for credentials bound to a key (console sessions): an
    /// unknown or revoked key is refused, so revoking a key ends what was bound to it at once.
    /// With auth disabled every request is admin.
    pub fn principal(&self, id: Option<KeyId>, required: Scope) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal { key_id: None, name: "anonymous".to_owned(), scopes: Scopes::admin() });
        }
        let id = id.ok_or(AuthError::Invalid)?;
        let now = now_unix();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let entry = keys.get_mut(&id).ok_or(AuthError::Invalid)?;
        let r = &mut entry.record;
        if r.revoked_at.is_some() {
            return Err(AuthError::Revoked(r.id));
        }
        if !r.scopes.satisfies(required) {
            return Err(AuthError::Forbidden { required });
        }
        if r.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY_S) {
            r.last_used_at = Some(now);
            entry.touched = true;
        }
        Ok(Principal { key_id: Some(r.id), name: r.name.clone(), scopes: r.scopes })
    }

    /// Creates a key; returns its record and the key string (shown once). Without a name the
    /// key is named `key-<id>`.
    pub fn create_key(&self, name: Option<&str>, scopes: Scopes) -> Result<(KeyInfo, String), AuthError> {
        let token = Token::generate()?;
        let name = name.map_or_else(|| format!("key-{}", token.id()), str::to_owned);
        let name = name.as_str();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_name {
            return Err(AuthError::BadName(name.to_owned()));
        }
        if scopes.is_empty() {
            return Err(AuthError::NoScope);
        }
        let record = KeyRecord {
            id: token.id(),
            name: name.to_owned(),
            scopes,
            hash: token.secret_hash(),
            created_at: now_unix(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_key(&record)?;
        let info = info(&record);
        self.keys.write().unwrap_or_else(|e| e.into_inner()).insert(record.id, Entry { record, touched: false });
        Ok((info, token.expose()))
    }

    /// Every key, sorted by creation time.
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<KeyInfo> = keys.values().map(|e| info(&e.record)).collect();
        out.sort_by_key(|k| (k.created_at, k.id));
        out
    }

    /// Revokes a key by id; effective for the next request on every surface. The last active
    /// admin key cannot be revoked ([`AuthError::LastAdmin`]): without one, nobody could manage
    /// keys until the daemon's bootstrap token file were deleted and the daemon restarted.
    pub fn revoke(&self, id: &str) -> Result<KeyInfo, AuthError> {
        let key_id: KeyId = id.parse().map_err(|_| AuthError::NotFound(id.to_owned()))?;
        let now = now_unix();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let active_admin = |r: &KeyRecord| r.revoked_at.is_none() && r.scopes.holds(Scope::Admin);
        let target = keys.get(&key_id).ok_or_else(|| AuthError::NotFound(id.to_owned()))?;
        if active_admin(&target.record) && !keys.values().any(|e| e.record.id != key_id && active_admin(&e.record)) {
            return Err(AuthError::LastAdmin(key_id));
        }
        let entry = keys.get_mut(&key_id).ok_or_else(|| AuthError::NotFound(id.to_owned()))?;
        if entry.record.revoked_at.is_none() {
            self.store.revoke_key(key_id, now)?;
            entry.record.revoked_at = Some(now);
        }
        Ok(info(&entry.record))
    }

    /// Writes pending last-used times to the store.
    pub fn flush_last_used(&self) -> Result<usize, AuthError> {
        let used: Vec<(KeyId, i64)> = {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            keys.values_mut()
                .filter(|e| e.touched)
                .filter_map(|e| {
                    e.touched = false;
                    e.record.last_used_at.map(|t| (e.record.id, t))
                })
                .collect()
        };
        if !used.is_empty() {
            self.store.touch_keys(&used)?;
        }
        Ok(used.len())
    }

    /// Makes sure `path` holds a valid admin key (mode 0600). Deleting the file and restarting
    /// rotates the bootstrap key: the old one is revoked.
    pub fn ensure_bootstrap(&self, path: &Path) -> Result<Bootstrap, AuthError> {
        let file_err = |source| AuthError::TokenFile { path: path.display().to_string(), source };
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(token) = Token::parse(&text) {
                let valid = self
                    .keys
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&token.id())
                    .is_some_and(|e| e.record.revoked_at.is_none() && e.record.hash.matches(&token.secret_hash()));
                if valid {
                    restrict_permissions(path).map_err(file_err)?;
                    return Ok(Bootstrap::Reused);
                }
            }
            tracing::warn!(path = %path.display(), "bootstrap token file is invalid or revoked; writing a new one");
        }
        let old: Vec<String> = self
            .list_keys()
            .into_iter()
            .filter(|k| k.name == BOOTSTRAP_KEY_NAME && k.revoked_at.is_none())
            .map(|k| k.id.to_string())
            .collect();
        // The new key first: revoking the old one before would briefly leave no admin key, which
        // `revoke` refuses.
        let (_, secret) = self.create_key(Some(BOOTSTRAP_KEY_NAME), Scopes::admin())?;
        write_private(path, format!("{secret}\n").as_bytes()).map_err(file_err)?;
        for id in old {
            self.revoke(&id)?;
        }
        Ok(Bootstrap::Created)
    }
}

fn info(r: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: r.id,
        name: r.name.clone(),
        scopes: r.scopes,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        revoked_at: r.revoked_at,
    }
}

/// Writes a file readable only by its owner: temp file created with mode 0600, fsync, rename. On
/// Windows there are no modes: the file gets the ACL it inherits from its directory (for the
/// default home, in the user's profile, only that user, SYSTEM and administrators).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token"),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    restrict_permissions(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn restrict_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode != 0o600 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "tightening permissions to 0600");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
