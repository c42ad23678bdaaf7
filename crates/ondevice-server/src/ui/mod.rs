//! The web console: its files served at `/ui/` from the binary, and its browser sessions.
//!
//! Every file under `crates/ondevice-server/ui/` is embedded at build time (adding a page needs no
//! list edited here); `build.rs` makes cargo rebuild when a file there is added or changed. The
//! files hold no data, so they are served without a key; the Host allowlist (outer layer) still
//! applies, and every answer carries a strict Content-Security-Policy and its companions. With
//! `[ui] enabled = false` they answer 404.
//!
//! Sessions (cookie + CSRF token in place of a bearer key) are in [`session`] (the routes) and
//! [`auth`] (the checks the authentication layer makes for a request that relies on a cookie).

pub mod auth;
pub mod session;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

/// Settings of the console resolved at start (`[ui]`).
#[derive(Debug, Clone, Copy)]
pub struct UiOptions {
    /// Serve `/ui/` and `/api/v1/ui/*` (else they answer 404).
    pub enabled: bool,
    /// Session lifetimes and cap.
    pub limits: ondevice_auth::SessionLimits,
}

impl Default for UiOptions {
    fn default() -> Self {
        UiOptions { enabled: true, limits: ondevice_auth::SessionLimits::default() }
    }
}

impl From<&ondevice_config::ui::UiSettings> for UiOptions {
    fn from(s: &ondevice_config::ui::UiSettings) -> Self {
        UiOptions {
            enabled: s.enabled,
            limits: ondevice_auth::SessionLimits {
                ttl: s.session_ttl(),
                idle: s.session_idle(),
                max_sessions: s.max_sessions as usize,
                ..ondevice_auth::SessionLimits::default()
            },
        }
    }
}

/// The console's files, embedded. A missing directory embeds nothing (every path is then 404).
#[derive(rust_embed::RustEmbed)]
#[folder = "ui/"]
#[allow_missing = true]
struct Assets;

/// The policy of every `/ui/` answer: scripts, styles, images and connections only from this
/// origin, no inline script or style, no framing, no plugins, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The routes of the console's files: `/ui` (redirect), `/ui/` and `/ui/{*path}`. They are not
/// API operations, so they are not in the OpenAPI document.
pub(crate) fn assets() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
        .route_layer(axum::middleware::from_fn(headers))
}

async fn index(State(state): State<AppState>, req_headers: HeaderMap) -> Response {
    serve(&state, "index.html", &req_headers)
}

async fn file(State(state): State<AppState>, Path(path): Path<String>, req_headers: HeaderMap) -> Response {
    serve(&state, &path, &req_headers)
}

/// One embedded file with its content type and an `ETag` (its SHA-256), or 404 in the error
/// envelope. `If-None-Match` with the current tag answers 304.
fn serve(state: &AppState, path: &str, req_headers: &HeaderMap) -> Response {
    let not_found = || ApiError::NotFound(format!("no console file /ui/{path}")).into_response();
    if !state.inner.options.ui.enabled {
        return ApiError::NotFound("the web console is disabled ([ui] enabled = false)".to_owned()).into_response();
    }
    let Some(content_type) = content_type(path) else {
        return not_found();
    };
    let Some(file) = Assets::get(path) else {
        return not_found();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let fresh = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { file.data.into_owned().into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// The content type of a console file by its extension; `None` for kinds the console does not
/// serve (answered 404, like a missing file).
fn content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match ext.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The security headers of every `/ui/` answer (files, redirect and errors alike).
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("app.js"), Some("text/javascript; charset=utf-8"));
        assert_eq!(content_type("pages/chat.js"), Some("text/javascript; charset=utf-8"));
        assert_eq!(content_type("app.CSS"), Some("text/css; charset=utf-8"));
        assert_eq!(content_type("index.html"), Some("text/html; charset=utf-8"));
        assert_eq!(content_type("logo.svg"), Some("image/svg+xml"));
        assert_eq!(content_type("favicon.ico"), Some("image/x-icon"));
        assert_eq!(content_type("README"), None);
        assert_eq!(content_type("notes.md"), None);
    }

    #[test]
    fn options_follow_the_config() {
        let settings = ondevice_config::ui::UiSettings {
            enabled: false,
            session_ttl: "30m".to_owned(),
            session_idle: "5m".to_owned(),
            max_sessions: 3,
        };
        let o = UiOptions::from(&settings);
        assert!(!o.enabled);
        assert_eq!(o.limits.ttl, std::time::Duration::from_secs(1800));
        assert_eq!(o.limits.idle, std::time::Duration::from_secs(300));
        assert_eq!(o.limits.max_sessions, 3);
    }

    /// Every embedded file, as text (the console has no binary files).
    fn embedded() -> Vec<(String, String)> {
        let files: Vec<(String, String)> = Assets::iter()
            .map(|p| {
                let data = Assets::get(&p).expect("listed file").data;
                (p.to_string(), String::from_utf8(data.into_owned()).unwrap_or_else(|_| panic!("{p} is not UTF-8")))
            })
            .collect();
        assert!(files.iter().any(|(p, _)| p == "index.html") && files.len() > 5, "the console is embedded");
        files
    }

    /// What the Content-Security-Policy would block, caught before a browser does: the pages load
    /// only their own files (no inline script, style or event handler, nothing from another
    /// origin), and no script turns text into markup or code.
    #[test]
    fn the_console_has_no_inline_code_and_loads_nothing_from_elsewhere() {
        for (path, text) in embedded() {
            let lower = text.to_ascii_lowercase();
            if path.ends_with(".html") {
                for tag in lower.split("<script").skip(1) {
                    let open = tag.split('>').next().unwrap_or_default();
                    let body = tag.split_once('>').map(|(_, b)| b).unwrap_or_default();
                    assert!(open.contains("src=\"/ui/"), "{path}: a script not loaded from /ui/: <script{open}>");
                    assert!(body.trim_start().starts_with("</script>"), "{path}: an inline script");
                }
                assert!(!lower.contains("<style"), "{path}: an inline stylesheet");
                assert!(!lower.contains(" style="), "{path}: an inline style attribute");
                for attr in
                    [" onclick=", " onload=", " onerror=", " onsubmit=", " oninput=", " onchange=", "javascript:"]
                {
                    assert!(!lower.contains(attr), "{path}: an inline event handler ({attr})");
                }
                for link in lower.split(" href=\"").skip(1).chain(lower.split(" src=\"").skip(1)) {
                    assert!(
                        link.starts_with("/ui/") || link.starts_with('#'),
                        "{path}: a link elsewhere: {}",
                        link.chars().take(60).collect::<String>()
                    );
                }
            }
            if path.ends_with(".js") {
                for bad in [
                    "innerhtml",
                    "outerhtml",
                    "insertadjacenthtml",
                    "document.write",
                    "new function(",
                    "import(\"http",
                    "from \"http",
                    "from \"//",
                ] {
                    assert!(!lower.contains(bad), "{path}: {bad}");
                }
                let evals = lower.match_indices("eval(").filter(|(i, _)| {
                    !lower[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$')
                });
                assert_eq!(evals.count(), 0, "{path}: eval");
                for line in text.lines().filter(|l| l.starts_with("import ")) {
                    assert!(
                        line.contains("from \"./") || line.contains("from \"../"),
                        "{path}: imports from elsewhere: {line}"
                    );
                }
            }
            if path.ends_with(".css") {
                assert!(
                    !lower.contains("@import") && !lower.contains("url(http"),
                    "{path}: loads a stylesheet or font from elsewhere"
                );
            }
        }
    }
}
