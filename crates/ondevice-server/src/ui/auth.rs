//! Authentication by the console's session cookie, and what makes a cookie safe to accept.
//!
//! A request that presents no key in a header (`Authorization`, `x-api-key`, the WebSocket
//! subprotocol) may present the `ondevice_session` cookie instead; gRPC never does. The session
//! names its key, and the key is asked for again on every request (revoked: the session ends;
//! scopes: the key's). Because a browser attaches cookies by itself, a cookie-authenticated
//! request must also show it comes from the console: for any method but GET/HEAD/OPTIONS the
//! session's CSRF token in `X-CSRF-Token` (compared in constant time) and no cross-site
//! `Origin`/`Sec-Fetch-Site`; for a WebSocket upgrade a same-origin `Origin`. Refusals are 403
//! `csrf_failed`.

use axum::http::{HeaderMap, Method, Uri, header};
use ondevice_auth::{AuthError, Presented, Principal, Scope, SessionInfo};

use crate::error::ApiError;
use crate::middleware::is_grpc;
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = ondevice_auth::browser::SESSION_COOKIE;
/// The header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Marks a request authenticated by its session cookie (in the request extensions).
#[derive(Debug, Clone)]
pub struct CookieAuth(pub SessionInfo);

/// The session token among the request's cookies.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    ondevice_auth::browser::session_cookie(headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()))
}

/// Authentication by the session cookie, for a request that relies on one; `None` when it does
/// not (a key in a header always wins, gRPC never uses cookies, no cookie was sent, or auth is
/// disabled and the cookie names no session).
pub(crate) fn by_cookie(
    state: &AppState,
    headers: &HeaderMap,
    presented: &Presented<'_>,
    scope: Scope,
    surface: &'static str,
) -> Option<Result<(Principal, SessionInfo), ApiError>> {
    if is_grpc(headers) || !matches!(presented.credential(), Ok(None)) {
        return None;
    }
    let token = cookie_token(headers)?;
    let Some(session) = state.sessions().get(token) else {
        if !state.verifier().enabled() {
            return None;
        }
        state.metrics().auth_failure(surface, "session");
        return Some(Err(ApiError::Unauthenticated(
            "the console session has expired or ended: sign in again (POST /api/v1/ui/session)".to_owned(),
        )));
    };
    Some(match state.verifier().principal(session.key_id, scope) {
        Ok(p) => Ok((p, session)),
        Err(e) => {
            if matches!(e, AuthError::Revoked(_) | AuthError::Invalid) {
                state.sessions().end(token);
            }
            state.metrics().auth_failure(surface, e.reason());
            Err(e.into())
        }
    })
}

/// The checks a cookie-authenticated request passes besides the session itself: same-origin for
/// a WebSocket upgrade; for state-changing methods, not cross-site and the CSRF token.
pub(crate) fn check_request(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    session: &SessionInfo,
) -> Result<(), ApiError> {
    let upgrade = headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        if same_origin(state, uri, headers) != Some(true) {
            return Err(ApiError::CsrfFailed(
                "a WebSocket signed in by the console's cookie must come from the console: its Origin must be this daemon"
                    .to_owned(),
            ));
        }
        return Ok(());
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    refuse_cross_site(state, uri, headers)?;
    let presented = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !session.csrf_matches(presented) {
        return Err(ApiError::CsrfFailed(
            "missing or wrong X-CSRF-Token: send the csrf_token of the console session (GET /api/v1/ui/session)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Refuses a request made by another site: an `Origin` that is not this daemon as the request
/// reached it, or `Sec-Fetch-Site: cross-site`.
pub(crate) fn refuse_cross_site(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let fetch_site_cross =
        headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if fetch_site_cross || same_origin(state, uri, headers) == Some(false) {
        return Err(ApiError::CsrfFailed(
            "cross-site request refused: the console's session only works from the console's own pages".to_owned(),
        ));
    }
    Ok(())
}

/// The host (with port) the request was sent to: `Host`, or the HTTP/2 authority.
pub(crate) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Whether `Origin` is this daemon as the request reached it (scheme by TLS, host and port as
/// in `Host`); `None` without an `Origin` header.
fn same_origin(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(header::ORIGIN)?;
    Some(ondevice_auth::browser::same_origin(origin.as_bytes(), state.inner.options.tls, request_host(uri, headers)))
}
