//! Tower/axum layers of the HTTP surface: metrics, Host allowlist (DNS rebinding), load
//! shedding, body limit, and the authentication layer shared by HTTP routes and the WebSocket
//! upgrade (a key, or the web console's session cookie: `ui/auth.rs`). The gRPC interceptor in `grpc.rs` calls the same [`ondevice_auth::Verifier`].

use std::net::IpAddr;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ondevice_auth::{Presented, Principal, Scope};

use crate::error::{ApiError, BodyLimit};
use crate::state::AppState;

/// Outermost layer: counts every request by matched route, method and status.
pub(crate) async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_owned(),
        None if is_grpc(req.headers()) => grpc_route(req.uri().path()),
        None => "unmatched".to_owned(),
    };
    let resp = next.run(req).await;
    state.metrics().observe_request(&route, &method, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// gRPC paths are `/package.Service/Method`; keep the service only to bound label cardinality.
fn grpc_route(path: &str) -> String {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let known = service.starts_with("ondevice.v1.") || service.starts_with("grpc.");
    if known && service.len() <= 64 { format!("/{service}/*") } else { "unmatched".to_owned() }
}

/// Whether a request is gRPC (by content type).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Refuses requests whose `Host` (or HTTP/2 `:authority`) names a host this daemon does not
/// answer to. IP literals and `localhost` are always accepted: DNS rebinding needs a name.
pub(crate) async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    if let Some(host) = host {
        if !host_allowed(&host, state.inner.options.listen.ip(), &state.inner.options.allowed_hosts) {
            return reject(&req, ApiError::HostNotAllowed(host));
        }
    }
    next.run(req).await
}

/// Whether `host` (with optional port) is acceptable: `localhost`, a loopback IP, the listen IP
/// (any IP when listening on all interfaces), or a configured name.
pub fn host_allowed(host: &str, listen: IpAddr, allowed: &[String]) -> bool {
    let name = strip_port(host).to_ascii_lowercase();
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if ip.is_loopback() || ip == listen || listen.is_unspecified() {
            return true;
        }
    } else if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    allowed.iter().any(|a| strip_port(a).eq_ignore_ascii_case(&name))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Sheds load beyond `server.max_concurrent_requests` with 503 and `Retry-After`.
pub(crate) async fn limit_concurrency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Ok(permit) = state.inner.permits.clone().try_acquire_owned() else {
        return reject(&req, ApiError::Overloaded { retry_after_s: 1 });
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

// Every body the edge can be configured to take fits the worker protocol's limit, so a request
// the edge accepted is never refused by an engine worker's socket.
const _: () = assert!(ondevice_config::MAX_BODY_LIMIT == ondevice_runtime::wire::MAX_PUBLIC_BODY as u64);

/// Oversized bodies up to this many bytes over the limit are drained before answering 413.
const DRAIN_MAX: u64 = 8 << 20;

/// Answers 413 up front when `Content-Length` exceeds the limit, and tells extractors the limit.
pub(crate) async fn limit_body(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let limit = state.inner.options.body_limit;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        let resp = reject(&req, ApiError::PayloadTooLarge { limit });
        // Read (and drop) a moderately oversized body so the client, still sending it, gets
        // the 413 instead of a reset connection; a huge one is not worth the bandwidth.
        if n <= limit.saturating_add(DRAIN_MAX) {
            let _ = axum::body::to_bytes(req.into_body(), usize::try_from(n).unwrap_or(usize::MAX)).await;
        }
        return resp;
    }
    if declared.is_none() && !is_grpc(req.headers()) && req.headers().contains_key(header::TRANSFER_ENCODING) {
        // A chunked body: read it here, so that an oversized one is drained (up to a bound) and
        // answered 413 cleanly instead of being cut off mid-stream by the extractor.
        let (parts, body) = req.into_parts();
        let cap = usize::try_from(limit.saturating_add(DRAIN_MAX)).unwrap_or(usize::MAX);
        let bytes = axum::body::to_bytes(body, cap).await.ok().filter(|b| b.len() as u64 <= limit);
        let Some(bytes) = bytes else {
            return ApiError::PayloadTooLarge { limit }.into_response();
        };
        req = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    req.extensions_mut().insert(BodyLimit(limit));
    next.run(req).await
}

/// Answers an error in the request's own protocol: gRPC status for gRPC, JSON otherwise.
pub(crate) fn reject(req: &Request, err: ApiError) -> Response {
    if is_grpc(req.headers()) {
        return err.to_status().into_http::<axum::body::Body>().into_response();
    }
    err.into_response()
}

/// The scope a group of routes requires; used as the state of [`require_scope`].
#[derive(Clone)]
pub(crate) struct Guard {
    pub state: AppState,
    pub scope: Scope,
}

/// Authenticates the request (header, `x-api-key`, WebSocket subprotocol, or the console's
/// session cookie with its CSRF checks) and checks the group's scope; the [`Principal`] is put in
/// the request extensions.
pub(crate) async fn require_scope(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let surface = surface(req.headers());
    match authenticate_as(&guard.state, req.headers(), guard.scope, surface) {
        Ok((p, session)) => {
            if let Some(session) = session {
                let checked =
                    crate::ui::auth::check_request(&guard.state, req.method(), req.uri(), req.headers(), &session);
                if let Err(e) = checked {
                    guard.state.metrics().auth_failure(surface, "csrf");
                    return reject(&req, e);
                }
                req.extensions_mut().insert(crate::ui::auth::CookieAuth(session));
            }
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => reject(&req, e),
    }
}

fn surface(headers: &HeaderMap) -> &'static str {
    if headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        "websocket"
    } else if is_grpc(headers) {
        "grpc"
    } else {
        "http"
    }
}

/// The shared check: credential from the headers, verified for `scope`, failures counted.
pub(crate) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    surface: &'static str,
) -> Result<Principal, ApiError> {
    authenticate_as(state, headers, scope, surface).map(|(p, _)| p)
}

/// [`authenticate`], also telling whether the console's session cookie was the credential (then
/// the caller makes the CSRF checks of `ui::auth::check_request`).
pub(crate) fn authenticate_as(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    surface: &'static str,
) -> Result<(Principal, Option<ondevice_auth::SessionInfo>), ApiError> {
    let presented = Presented {
        authorization: headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        x_api_key: headers.get("x-api-key").map(|v| v.as_bytes()),
        websocket_protocol: headers.get(header::SEC_WEBSOCKET_PROTOCOL).map(|v| v.as_bytes()),
    };
    if let Some(by_cookie) = crate::ui::auth::by_cookie(state, headers, &presented, scope, surface) {
        return by_cookie.map(|(p, s)| (p, Some(s)));
    }
    let principal = state.verifier().authorize(&presented, scope).map_err(|e| {
        state.metrics().auth_failure(surface, e.reason());
        ApiError::from(e)
    })?;
    Ok((principal, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let allowed = vec!["ondevice.lan".to_owned()];
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for ok in [
            "127.0.0.1:7733",
            "127.0.0.2",
            "localhost",
            "LOCALHOST:1",
            "[::1]:7733",
            "::1",
            "ondevice.lan:7733",
            "ondevice.lan",
            "app.localhost:3000",
        ] {
            assert!(host_allowed(ok, lo, &allowed), "{ok} should be allowed");
        }
        for bad in [
            "evil.example:7733",
            "evil.example",
            "localhost.evil.example",
            "ondevice.lan.evil:1",
            "",
            "192.168.1.5:7733",
        ] {
            assert!(!host_allowed(bad, lo, &allowed), "{bad} should be refused");
        }
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        assert!(host_allowed("192.168.1.5:7733", lan, &allowed));
        assert!(!host_allowed("10.0.0.1:7733", lan, &allowed));
        assert!(host_allowed("10.0.0.1:7733", "0.0.0.0".parse().unwrap(), &allowed));
    }

    #[test]
    fn grpc_routes_are_bounded() {
        assert_eq!(grpc_route("/ondevice.v1.StatusService/GetStatus"), "/ondevice.v1.StatusService/*");
        assert_eq!(grpc_route("/random/thing"), "unmatched");
    }
}
