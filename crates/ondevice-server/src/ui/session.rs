//! `/api/v1/ui/session` and `/api/v1/ui/login-links`: an API key (or a one-time login link
//! made with one) exchanged for the console's session cookie, the session shown, and logout.
//!
//! The cookie is `ondevice_session=<opaque>; Path=/; HttpOnly; SameSite=Strict; Max-Age=<ttl>`,
//! plus `Secure` under TLS. Keys are 256-bit random and link tokens too, so guessing either is
//! pointless; failed sign-ins count in `ondevice_auth_failures_total` and nothing secret is logged.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ondevice_auth::{AuthError, Presented, Principal, Scope, SessionInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{COOKIE, CookieAuth, refuse_cross_site, request_host};
use crate::error::{ApiError, OptionalJson};
use crate::state::AppState;

/// Body of `POST /api/v1/ui/session`: a key or a login link's token (or neither, with the key
/// in the `Authorization` header).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// An API key (`odk_...`); the session gets its scopes.
    pub key: Option<String>,
    /// The token of a login link from `POST /api/v1/ui/login-links` (`ondevice ui`); single-use,
    /// valid for 120 s.
    pub login_token: Option<String>,
}

/// A console session (never its cookie).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Send this as `X-CSRF-Token` with every request other than GET, HEAD and OPTIONS.
    pub csrf_token: String,
    /// The id of the key the session stands for (empty when auth is disabled).
    pub key_id: String,
    /// The key's name.
    pub key_name: String,
    /// The key's scopes: `admin`, `models`, `infer`, `read`.
    pub scopes: Vec<String>,
    /// RFC 3339 time at which the session ends at the latest.
    pub expires_at: String,
}

/// A one-time login link for the console.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginLink {
    /// Open this in a browser: `http://HOST:PORT/ui/#login=TOKEN` (the token stays in the
    /// fragment, so it is never sent in a request line or a `Referer`).
    pub url: String,
    /// The single-use token (`login_token` of `POST /api/v1/ui/session`).
    pub token: String,
    /// RFC 3339 time after which the link no longer works.
    pub expires_at: String,
}

fn rfc3339(t: i64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string()
}

fn view(p: &Principal, s: &SessionInfo) -> SessionView {
    SessionView {
        csrf_token: s.csrf_token.clone(),
        key_id: p.key_id.map(|k| k.to_string()).unwrap_or_default(),
        key_name: p.name.clone(),
        scopes: p.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        expires_at: rfc3339(s.expires_at),
    }
}

fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.inner.options.ui.enabled {
        Ok(())
    } else {
        Err(ApiError::NotFound("the web console is disabled ([ui] enabled = false)".to_owned()))
    }
}

/// The `Set-Cookie` value for `token` (an empty token with `Max-Age=0` clears it).
fn cookie(state: &AppState, token: &str, max_age: u64) -> HeaderValue {
    let secure = if state.inner.options.tls { "; Secure" } else { "" };
    let value = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("ondevice_session=; Max-Age=0"))
}

fn refused(state: &AppState, e: AuthError) -> ApiError {
    state.metrics().auth_failure("http", e.reason());
    e.into()
}

/// Signs in to the console: exchanges an API key (in the body, or as `Authorization: Bearer`)
/// or a login link's token for a session cookie with that key's scopes. Refused from another
/// site (403 `csrf_failed`).
#[utoipa::path(post, path = "/api/v1/ui/session", tag = "ui",
    security(("bearer" = ["read"])),
    request_body(content = Option<LoginRequest>, description = "A key or a login token; may be empty when the key is in the `Authorization` header"),
    responses(
        (status = 200, description = "Signed in; the session cookie is in `Set-Cookie`", body = SessionView,
            headers(("Set-Cookie" = String, description = "`ondevice_session=...; Path=/; HttpOnly; SameSite=Strict; Max-Age=...`"))),
        (status = 401, description = "Wrong key, or a login token that is unknown, used or expired", body = crate::error::ErrorBody),
        (status = 403, description = "A cross-site request (`csrf_failed`)", body = crate::error::ErrorBody),
        (status = 404, description = "The console is disabled", body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<OptionalJson<LoginRequest>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    // Before the body is looked at: a form posted from another site gets 403, not 400.
    refuse_cross_site(&state, &uri, &headers)?;
    let body = body?.0.unwrap_or_default();
    let verifier = state.verifier();
    let principal = match (body.key, body.login_token) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest("send either key or login_token, not both".to_owned()));
        }
        (Some(key), None) => {
            let presented = Presented { x_api_key: Some(key.as_bytes()), ..Default::default() };
            verifier.authorize(&presented, Scope::Read).map_err(|e| refused(&state, e))?
        }
        (None, Some(token)) => {
            let Some(key_id) = state.sessions().redeem_link(token.trim()) else {
                state.metrics().auth_failure("http", "login_link");
                return Err(ApiError::Unauthenticated(
                    "this login link is unknown, used or expired: run `ondevice ui` for a new one".to_owned(),
                ));
            };
            verifier.principal(key_id, Scope::Read).map_err(|e| refused(&state, e))?
        }
        (None, None) => {
            let presented = Presented {
                authorization: headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
                x_api_key: headers.get("x-api-key").map(|v| v.as_bytes()),
                websocket_protocol: None,
            };
            verifier.authorize(&presented, Scope::Read).map_err(|e| refused(&state, e))?
        }
    };
    let new = state.sessions().create(principal.key_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(key_id = ?principal.key_id.map(|k| k.to_string()), name = %principal.name, "console session started");
    let mut resp = Json(view(&principal, &new.info)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&state, &new.token, new.max_age));
    Ok(resp)
}

/// The console session of the request's cookie: who it is and its CSRF token. A request
/// signed with a key and no session cookie gets 404.
#[utoipa::path(get, path = "/api/v1/ui/session", tag = "ui",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, description = "No valid session (sign in)", body = crate::error::ErrorBody),
        (status = 404, description = "No session cookie (the request used a key), or the console is disabled", body = crate::error::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    session: Option<Extension<CookieAuth>>,
) -> Result<Json<SessionView>, ApiError> {
    enabled(&state)?;
    match session {
        Some(Extension(CookieAuth(s))) => Ok(Json(view(&principal, &s))),
        None => Err(ApiError::NotFound(
            "no console session: this request was signed with a key; sign in with POST /api/v1/ui/session".to_owned(),
        )),
    }
}

/// Signs out: ends the session of the request's cookie and clears the cookie. A
/// cookie-authenticated request needs its `X-CSRF-Token`, as every state-changing one.
#[utoipa::path(delete, path = "/api/v1/ui/session", tag = "ui",
    security(("bearer" = ["read"])),
    responses(
        (status = 204, description = "Signed out; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "`ondevice_session=; ...; Max-Age=0`"))),
        (status = 404, description = "The console is disabled", body = crate::error::ErrorBody)))]
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    enabled(&state)?;
    if let Some(token) = super::auth::cookie_token(&headers) {
        if state.sessions().end(token) {
            tracing::info!("console session ended");
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&state, "", 0));
    Ok(resp)
}

/// Makes a one-time login link for the console with the calling key's scopes (what `ondevice
/// ui` prints). Needs a key, not a console session. The link works once, for 120 s.
#[utoipa::path(post, path = "/api/v1/ui/login-links", tag = "ui",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The link", body = LoginLink),
        (status = 403, description = "Asked from a console session instead of with a key", body = crate::error::ErrorBody),
        (status = 404, description = "The console is disabled", body = crate::error::ErrorBody)))]
pub async fn login_link(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Extension(principal): Extension<Principal>,
    session: Option<Extension<CookieAuth>>,
) -> Result<Json<LoginLink>, ApiError> {
    enabled(&state)?;
    if session.is_some() {
        return Err(ApiError::PermissionDenied(
            "login links are made with an api key (`ondevice ui`), not from a console session".to_owned(),
        ));
    }
    let link = state.sessions().issue_link(principal.key_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    let listen = state.inner.options.listen.to_string();
    let host = request_host(&uri, &headers).unwrap_or(&listen);
    let scheme = if state.inner.options.tls { "https" } else { "http" };
    tracing::info!(key_id = ?principal.key_id.map(|k| k.to_string()), "console login link issued");
    Ok(Json(LoginLink {
        url: format!("{scheme}://{host}/ui/#login={}", link.token),
        token: link.token,
        expires_at: rfc3339(link.expires_at),
    }))
}
