//! Browser sessions bound to an API key, and one-time login links that yield them.
//!
//! A session is an opaque random token (256 bits from the operating system, sent as a cookie)
//! with a CSRF token beside it. Both live only in memory, keyed by the SHA-256 of the token so a
//! lookup's timing says nothing about the token itself; the CSRF token is compared in constant
//! time. A session holds no scopes: it names its key, and every use asks the [`crate::Verifier`]
//! again, so revoking the key ends the session on its next request. Sessions end at an absolute
//! lifetime, after an idle time, on logout, or when the cap is reached (the oldest goes).
//!
//! A login link token is single-use and short-lived; redeeming it removes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::token::{CredentialError, KeyId};
use crate::verifier::now_unix;

const TOKEN_BYTES: usize = 32;
/// Login links not yet redeemed kept at once; issuing beyond it drops the oldest.
const MAX_LINKS: usize = 256;

/// Lifetimes and the cap of [`Sessions`].
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Longest life of a session from its creation.
    pub ttl: Duration,
    /// A session unused this long ends.
    pub idle: Duration,
    /// Sessions kept at once; creating one more ends the oldest.
    pub max_sessions: usize,
    /// Life of a login link.
    pub link_ttl: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            ttl: Duration::from_secs(12 * 3600),
            idle: Duration::from_secs(2 * 3600),
            max_sessions: 64,
            link_ttl: Duration::from_secs(120),
        }
    }
}

/// A live session as the edge sees it (never the session token).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The key the session stands for; `None` when auth is disabled.
    pub key_id: Option<KeyId>,
    /// The CSRF token state-changing requests must echo.
    pub csrf_token: String,
    /// Unix seconds when the session ends at the latest.
    pub expires_at: i64,
}

impl SessionInfo {
    /// Whether `presented` is this session's CSRF token (constant-time).
    pub fn csrf_matches(&self, presented: &[u8]) -> bool {
        let expected = self.csrf_token.as_bytes();
        expected.len() == presented.len() && bool::from(expected.ct_eq(presented))
    }
}

/// A session just created: its token (for the cookie, shown once) and its details.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The opaque session token (the cookie's value).
    pub token: String,
    /// The session.
    pub info: SessionInfo,
    /// Seconds until its absolute end (the cookie's `Max-Age`).
    pub max_age: u64,
}

/// A login link's token just issued.
#[derive(Debug, Clone)]
pub struct NewLink {
    /// The single-use token.
    pub token: String,
    /// Unix seconds when it stops working.
    pub expires_at: i64,
}

struct Session {
    info: SessionInfo,
    created: Instant,
    last_seen: Instant,
}

struct Link {
    key_id: Option<KeyId>,
    created: Instant,
}

#[derive(Default)]
struct State {
    sessions: HashMap<[u8; 32], Session>,
    links: HashMap<[u8; 32], Link>,
}

/// The sessions and login links of one daemon, in memory.
pub struct Sessions {
    limits: SessionLimits,
    state: Mutex<State>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn random_token() -> Result<String, CredentialError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| CredentialError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ondevice-session-v1\0");
    h.update(token.as_bytes());
    h.finalize().into()
}

impl Sessions {
    /// An empty store with these limits.
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions { limits, state: Mutex::new(State::default()) }
    }

    /// The limits in force.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for `key_id`; at the cap, the oldest session ends.
    pub fn create(&self, key_id: Option<KeyId>) -> Result<NewSession, CredentialError> {
        self.create_at(key_id, Instant::now())
    }

    fn create_at(&self, key_id: Option<KeyId>, now: Instant) -> Result<NewSession, CredentialError> {
        let token = random_token()?;
        let info = SessionInfo {
            key_id,
            csrf_token: random_token()?,
            expires_at: now_unix().saturating_add(self.limits.ttl.as_secs() as i64),
        };
        let mut state = self.lock();
        let limits = self.limits;
        state.sessions.retain(|_, s| live(s, now, limits));
        while state.sessions.len() >= limits.max_sessions.max(1) {
            let oldest = state.sessions.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => state.sessions.remove(&k),
                None => break,
            };
        }
        state.sessions.insert(digest(&token), Session { info: info.clone(), created: now, last_seen: now });
        Ok(NewSession { token, info, max_age: limits.ttl.as_secs() })
    }

    /// The live session of `token`, marking it used; an expired one is removed.
    pub fn get(&self, token: &str) -> Option<SessionInfo> {
        self.get_at(token, Instant::now())
    }

    fn get_at(&self, token: &str, now: Instant) -> Option<SessionInfo> {
        let key = digest(token);
        let mut state = self.lock();
        let session = state.sessions.get_mut(&key)?;
        if !live(session, now, self.limits) {
            state.sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.info.clone())
    }

    /// Ends the session of `token`; whether there was one.
    pub fn end(&self, token: &str) -> bool {
        self.lock().sessions.remove(&digest(token)).is_some()
    }

    /// Ends every session of a key (its revocation).
    pub fn end_key(&self, key_id: KeyId) -> usize {
        let mut state = self.lock();
        let before = state.sessions.len();
        state.sessions.retain(|_, s| s.info.key_id != Some(key_id));
        before - state.sessions.len()
    }

    /// Sessions alive now.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock().sessions.values().filter(|s| live(s, now, self.limits)).count()
    }

    /// Whether no session is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Issues a single-use login link token for `key_id`.
    pub fn issue_link(&self, key_id: Option<KeyId>) -> Result<NewLink, CredentialError> {
        self.issue_link_at(key_id, Instant::now())
    }

    fn issue_link_at(&self, key_id: Option<KeyId>, now: Instant) -> Result<NewLink, CredentialError> {
        let token = random_token()?;
        let ttl = self.limits.link_ttl;
        let mut state = self.lock();
        state.links.retain(|_, l| now.saturating_duration_since(l.created) < ttl);
        while state.links.len() >= MAX_LINKS {
            let oldest = state.links.iter().min_by_key(|(_, l)| l.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => state.links.remove(&k),
                None => break,
            };
        }
        state.links.insert(digest(&token), Link { key_id, created: now });
        Ok(NewLink { token, expires_at: now_unix().saturating_add(ttl.as_secs() as i64) })
    }

    /// Redeems a login link token: the key it was issued for, once; `None` when it is unknown,
    /// used or expired.
    pub fn redeem_link(&self, token: &str) -> Option<Option<KeyId>> {
        self.redeem_link_at(token, Instant::now())
    }

    fn redeem_link_at(&self, token: &str, now: Instant) -> Option<Option<KeyId>> {
        let link = self.lock().links.remove(&digest(token))?;
        (now.saturating_duration_since(link.created) < self.limits.link_ttl).then_some(link.key_id)
    }
}

fn live(s: &Session, now: Instant, limits: SessionLimits) -> bool {
    now.saturating_duration_since(s.created) < limits.ttl && now.saturating_duration_since(s.last_seen) < limits.idle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            ttl: Duration::from_secs(3600),
            idle: Duration::from_secs(600),
            max_sessions: 3,
            link_ttl: Duration::from_secs(120),
        }
    }

    fn key(n: u8) -> Option<KeyId> {
        Some(format!("{n:012x}").parse().unwrap())
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_end() {
        let s = Sessions::new(limits());
        let t0 = Instant::now();
        let a = s.create_at(key(1), t0).unwrap();
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token, a.info.csrf_token);
        assert_eq!(a.max_age, 3600);
        // Used every 9 minutes, it outlives the idle time...
        let mut t = t0;
        for _ in 0..6 {
            t += Duration::from_secs(540);
            assert!(s.get_at(&a.token, t).is_some(), "alive at {:?}", t - t0);
        }
        // ...but not its absolute lifetime.
        t += Duration::from_secs(540);
        assert!(s.get_at(&a.token, t).is_none());
        assert!(s.get_at(&a.token, t0).is_none(), "an expired session is removed");
        // Idle too long.
        let b = s.create_at(key(1), t0).unwrap();
        assert!(s.get_at(&b.token, t0 + Duration::from_secs(601)).is_none());
    }

    #[test]
    fn the_oldest_session_goes_at_the_cap() {
        let s = Sessions::new(limits());
        let t0 = Instant::now();
        let tokens: Vec<String> =
            (0..4).map(|i| s.create_at(key(1), t0 + Duration::from_secs(i)).unwrap().token).collect();
        let t = t0 + Duration::from_secs(5);
        assert!(s.get_at(&tokens[0], t).is_none(), "the oldest was evicted");
        for tok in &tokens[1..] {
            assert!(s.get_at(tok, t).is_some());
        }
    }

    #[test]
    fn logout_revocation_and_csrf() {
        let s = Sessions::new(limits());
        let a = s.create(key(1)).unwrap();
        let b = s.create(key(2)).unwrap();
        let info = s.get(&a.token).unwrap();
        assert!(info.csrf_matches(a.info.csrf_token.as_bytes()));
        assert!(!info.csrf_matches(b.info.csrf_token.as_bytes()));
        assert!(!info.csrf_matches(b""));
        assert!(!info.csrf_matches(&a.info.csrf_token.as_bytes()[1..]));
        assert!(s.get("not-a-token").is_none());
        assert_eq!(s.end_key(key(1).unwrap()), 1);
        assert!(s.get(&a.token).is_none());
        assert!(s.end(&b.token));
        assert!(!s.end(&b.token));
        assert!(s.is_empty());
    }

    #[test]
    fn login_links_are_single_use_and_expire() {
        let s = Sessions::new(limits());
        let t0 = Instant::now();
        let link = s.issue_link_at(key(7), t0).unwrap();
        assert_eq!(s.redeem_link_at(&link.token, t0 + Duration::from_secs(1)), Some(key(7)));
        assert_eq!(s.redeem_link_at(&link.token, t0 + Duration::from_secs(2)), None, "used twice");
        let late = s.issue_link_at(key(7), t0).unwrap();
        assert_eq!(s.redeem_link_at(&late.token, t0 + Duration::from_secs(120)), None, "expired");
        assert_eq!(s.redeem_link_at("", t0), None);
    }
}
