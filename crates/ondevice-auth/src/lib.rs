//! Authentication and authorization of ondevice: the API key format, scopes, and the
//! [`Verifier`] that the HTTP layer, the WebSocket upgrade and the gRPC interceptor all share.
//!
//! The crate knows nothing about HTTP or SQLite: the edge hands it a [`Presented`] credential and
//! a required [`Scope`]; persistence is behind the small [`KeyStore`] trait. Browser sessions
//! bound to a key (the web console's cookie) are [`Sessions`].

#![warn(missing_docs)]

pub mod browser;
mod scope;
mod session;
mod token;
mod verifier;

pub use scope::{Scope, Scopes, UnknownScope};
pub use session::{NewLink, NewSession, SessionInfo, SessionLimits, Sessions};
pub use token::{CredentialError, KeyId, Presented, SecretHash, TOKEN_LEN, TOKEN_PREFIX, Token, WS_BEARER_PREFIX};
pub use verifier::{
    AuthError, BOOTSTRAP_KEY_NAME, Bootstrap, KeyInfo, KeyRecord, KeyStore, Principal, StoreFailure, Verifier,
    now_unix, write_private,
};

#[cfg(test)]
mod tests;
