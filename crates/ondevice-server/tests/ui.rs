//! The web console's edge through the router as a function (no socket), against a real SQLite
//! key store in a temp dir: the embedded files and their headers, and sessions (sign-in by key
//! or login link, cookie attributes, CSRF and cross-site refusals, logout, revocation, scopes,
//! `[ui] enabled = false`). The real daemon and `ondevice ui` are tested in
//! `crates/ondevice/tests/e2e/ui_auth.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use ondevice_auth::{Scopes, Verifier};
use ondevice_server::{AppState, EdgeOptions, NoWorkers, UiOptions};
use ondevice_store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:7733";
const ORIGIN: &str = "http://127.0.0.1:7733";

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
    admin: String,
    admin_id: String,
    read: String,
    read_id: String,
}

fn options() -> EdgeOptions {
    EdgeOptions {
        listen: HOST.parse().unwrap(),
        allowed_hosts: Vec::new(),
        cors_origins: Vec::new(),
        body_limit: 64 * 1024,
        max_concurrent_requests: 16,
        tls: false,
        ui: UiOptions::default(),
    }
}

async fn fixture(opts: EdgeOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).unwrap());
    let verifier = Arc::new(Verifier::new(store.clone(), true).unwrap());
    let (admin_info, admin) = verifier.create_key(Some("admin"), Scopes::admin()).unwrap();
    let (read_info, read) = verifier.create_key(Some("reader"), Scopes::from_list("read").unwrap()).unwrap();
    let registry = Arc::new(ondevice_registry::Registry::new(store.clone(), dir.path()).unwrap());
    let models = Arc::new(ondevice_registry::RegistryModels::new(registry));
    let services = ondevice_server::Services::new(verifier, models, Arc::new(NoWorkers));
    let state = AppState::new(services, opts, CancellationToken::new());
    let (app, _health) = ondevice_server::router(state).await;
    Fixture { _dir: dir, app, admin, admin_id: admin_info.id.to_string(), read, read_id: read_info.id.to_string() }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer { status, headers, body }
}

/// A request builder to this daemon (`Host` set).
fn req(method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(path).header(header::HOST, HOST)
}

/// A browser session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    view: Value,
}

async fn sign_in(app: &axum::Router, body: Value) -> Result<Session, Answer> {
    let r = req(Method::POST, "/api/v1/ui/session")
        .header(header::ORIGIN, ORIGIN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let a = send(app, r).await;
    if a.status != StatusCode::OK {
        return Err(a);
    }
    let set = a.header("set-cookie").to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("ondevice_session="), "{set}");
    let view = a.json();
    Ok(Session { cookie, csrf: view["csrf_token"].as_str().unwrap().to_owned(), view })
}

/// A request from the console's page: cookie, same origin, CSRF token when `csrf`.
fn from_page(method: Method, path: &str, s: &Session, csrf: bool) -> axum::http::request::Builder {
    let mut b = req(method, path).header(header::COOKIE, &s.cookie).header(header::ORIGIN, ORIGIN);
    if csrf {
        b = b.header("x-csrf-token", &s.csrf);
    }
    b
}

#[tokio::test]
async fn console_files_are_served_with_strict_headers() {
    let f = fixture(options()).await;
    let a = send(&f.app, req(Method::GET, "/ui").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(a.header("location"), "/ui/");
    assert!(a.header("content-security-policy").contains("frame-ancestors 'none'"));

    let a = send(&f.app, req(Method::GET, "/ui/").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&a.body).contains("<html"), "index.html is served at /ui/");
    assert_eq!(a.header("content-security-policy"), ondevice_server::ui::CONTENT_SECURITY_POLICY);
    assert!(a.header("content-security-policy").starts_with("default-src 'none'; script-src 'self';"));
    assert_eq!(a.header("x-content-type-options"), "nosniff");
    assert_eq!(a.header("referrer-policy"), "no-referrer");
    assert_eq!(a.header("x-frame-options"), "DENY");
    assert_eq!(a.header("cache-control"), "no-cache");

    // A revalidation with the current ETag is 304.
    let etag = a.header("etag").to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    let r = req(Method::GET, "/ui/").header(header::IF_NONE_MATCH, &etag).body(Body::empty()).unwrap();
    let a = send(&f.app, r).await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    assert!(a.body.is_empty());

    let a = send(&f.app, req(Method::GET, "/ui/app.js").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(a.header("x-frame-options"), "DENY");

    for missing in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml", "/ui/pages/", "/ui/lib"] {
        let a = send(&f.app, req(Method::GET, missing).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(a.code(), "not_found", "{missing}: JSON envelope");
        assert_eq!(a.header("content-type"), "application/json", "{missing}");
        assert!(!a.header("content-security-policy").is_empty(), "{missing}: headers on errors too");
    }

    // The Host guard still applies.
    let r = Request::get("/ui/").header(header::HOST, "evil.example").body(Body::empty()).unwrap();
    let a = send(&f.app, r).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::MISDIRECTED_REQUEST, "host_not_allowed"));
}

#[tokio::test]
async fn a_key_becomes_a_session_cookie() {
    let f = fixture(options()).await;
    let r = req(Method::POST, "/api/v1/ui/session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"key": f.read}).to_string()))
        .unwrap();
    let a = send(&f.app, r).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
    let set = a.header("set-cookie");
    let attrs: Vec<&str> = set.split("; ").collect();
    assert!(attrs[0].starts_with("ondevice_session=") && attrs[0].len() > 40, "{set}");
    for want in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
        assert!(attrs.contains(&want), "{want} missing from {set}");
    }
    assert!(!set.contains("Secure"), "no Secure flag over plain HTTP: {set}");
    assert!(!set.contains(&f.read), "the cookie is not the key");
    let view = a.json();
    assert_eq!(view["key_id"], f.read_id);
    assert_eq!(view["key_name"], "reader");
    assert_eq!(view["scopes"], json!(["read"]));
    assert_eq!(view["csrf_token"].as_str().unwrap().len(), 64);
    assert!(view["expires_at"].as_str().unwrap().ends_with('Z'));

    // Wrong keys and garbage are 401 in the envelope.
    for body in [
        json!({"key": "odk_000000000000_0000000000000000000000000000000000000000000000000000000000000000"}),
        json!({"key": "hunter2"}),
        json!({}),
        json!({"login_token": "nope"}),
    ] {
        let e = sign_in(&f.app, body.clone()).await.err().unwrap();
        assert_eq!((e.status, e.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"), "{body}");
    }
    let e = sign_in(&f.app, json!({"key": f.read, "login_token": "x"})).await.err().unwrap();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    // The key may also come as a bearer header.
    let r = req(Method::POST, "/api/v1/ui/session")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .body(Body::empty())
        .unwrap();
    let a = send(&f.app, r).await;
    assert_eq!((a.status, a.json()["key_id"].as_str()), (StatusCode::OK, Some(f.admin_id.as_str())));
    // A body that is not an object is refused even when the header carries a good key (serde
    // alone would read the struct from an array).
    for body in ["[null, null]", "[]", "\"odk\"", "7"] {
        let r = req(Method::POST, "/api/v1/ui/session")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let a = send(&f.app, r).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
    }
}

#[tokio::test]
async fn the_cookie_authenticates_reads_and_csrf_guards_writes() {
    let f = fixture(options()).await;
    let s = sign_in(&f.app, json!({"key": f.admin})).await.ok().unwrap();

    // Reads with the cookie alone.
    let a = send(&f.app, from_page(Method::GET, "/api/v1/status", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(&f.app, from_page(Method::GET, "/api/v1/ui/session", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["csrf_token"], s.view["csrf_token"]);
    assert!(a.headers.get("set-cookie").is_none(), "GET does not set a new cookie");

    let create = |b: axum::http::request::Builder| {
        b.header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"name": "from-console", "scopes": ["read"]}).to_string()))
            .unwrap()
    };
    // A write without the CSRF token, or with a wrong one: 403 csrf_failed.
    let a = send(&f.app, create(from_page(Method::POST, "/api/v1/keys", &s, false))).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"));
    let wrong = from_page(Method::POST, "/api/v1/keys", &s, false).header("x-csrf-token", "0".repeat(64));
    let a = send(&f.app, create(wrong)).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"));
    // With it: done.
    let a = send(&f.app, create(from_page(Method::POST, "/api/v1/keys", &s, true))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.json());

    // Cross-site, even with the right token: 403.
    let evil = req(Method::POST, "/api/v1/keys")
        .header(header::COOKIE, &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .header(header::ORIGIN, "http://evil.example");
    let a = send(&f.app, create(evil)).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"));
    let other_port = req(Method::POST, "/api/v1/keys")
        .header(header::COOKIE, &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .header(header::ORIGIN, "http://127.0.0.1:9999");
    let a = send(&f.app, create(other_port)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "another port is another origin");
    let fetch_site = req(Method::POST, "/api/v1/keys")
        .header(header::COOKIE, &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .header("sec-fetch-site", "cross-site");
    let a = send(&f.app, create(fetch_site)).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"));

    // Bearer requests are unchanged: no CSRF token, any Origin.
    let bearer = req(Method::POST, "/api/v1/keys")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .header(header::ORIGIN, "http://evil.example");
    let a = send(&f.app, create(bearer)).await;
    assert_eq!(a.status, StatusCode::CREATED);
    // A bearer key wins over a cookie: a wrong key is 401 even with a valid session.
    let both = req(Method::GET, "/api/v1/status")
        .header(header::COOKIE, &s.cookie)
        .header(header::AUTHORIZATION, "Bearer odk_nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f.app, both).await.status, StatusCode::UNAUTHORIZED);
    // gRPC never accepts the cookie.
    let grpc = req(Method::POST, "/ondevice.v1.StatusService/GetStatus")
        .header(header::COOKIE, &s.cookie)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Body::from(vec![0u8, 0, 0, 0, 0]))
        .unwrap();
    let a = send(&f.app, grpc).await;
    assert_eq!(a.header("grpc-status"), "16", "gRPC with a cookie only is unauthenticated");
}

/// Every operation of the OpenAPI document that changes state (any method but GET, HEAD and
/// OPTIONS), called with the admin session's cookie from the console's own origin but without the
/// CSRF token, is refused before its handler runs (403 `csrf_failed`); with the token but from
/// another origin too. Signing in (`POST /api/v1/ui/session`) needs no session and is checked
/// for cross-site requests in `a_cross_site_form_post_is_refused`.
#[tokio::test]
async fn every_state_changing_operation_needs_the_csrf_token() {
    let f = fixture(options()).await;
    let s = sign_in(&f.app, json!({"key": f.admin})).await.ok().unwrap();
    let doc = send(&f.app, req(Method::GET, "/openapi.json").body(Body::empty()).unwrap()).await.json();
    let mut checked = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_none() || (method == "post" && path == "/api/v1/ui/session") {
                continue;
            }
            // Path parameters take a plain value: the refusal comes before any lookup.
            let concrete: String =
                path.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/");
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let body = || Body::from(json!({}).to_string());
            let r = from_page(m.clone(), &concrete, &s, false).header(header::CONTENT_TYPE, "application/json");
            let a = send(&f.app, r.body(body()).unwrap()).await;
            assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"), "{method} {path}");
            let r = req(m, &concrete)
                .header(header::COOKIE, &s.cookie)
                .header("x-csrf-token", &s.csrf)
                .header(header::ORIGIN, "http://evil.example")
                .header(header::CONTENT_TYPE, "application/json");
            let a = send(&f.app, r.body(body()).unwrap()).await;
            assert_eq!(
                (a.status, a.code().as_str()),
                (StatusCode::FORBIDDEN, "csrf_failed"),
                "{method} {path} cross-site"
            );
            checked.push(format!("{method} {path}"));
        }
    }
    for op in
        ["post /api/v1/keys", "delete /api/v1/ui/session", "post /v1/chat/completions", "post /api/v1/models/pull"]
    {
        assert!(checked.iter().any(|c| c == op), "{op} was not checked: {checked:?}");
    }
    // The session still works: nothing above ended it.
    let a = send(&f.app, from_page(Method::GET, "/api/v1/ui/session", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
}

/// A session ends after `[ui] session_idle` without a request (and at `session_ttl`): the next
/// request with its cookie is 401, and the cookie's `Max-Age` is the lifetime. (Lifetimes of a
/// second stand in for the configured minutes; the clock rules are unit-tested in
/// `ondevice_auth::session`.)
#[tokio::test]
async fn an_idle_session_expires() {
    let limits = ondevice_auth::SessionLimits {
        ttl: std::time::Duration::from_secs(60),
        idle: std::time::Duration::from_secs(1),
        ..ondevice_auth::SessionLimits::default()
    };
    let f = fixture(EdgeOptions { ui: UiOptions { enabled: true, limits }, ..options() }).await;
    let r = req(Method::POST, "/api/v1/ui/session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"key": f.read}).to_string()))
        .unwrap();
    let a = send(&f.app, r).await;
    assert!(a.header("set-cookie").contains("Max-Age=60;") || a.header("set-cookie").ends_with("Max-Age=60"));
    let s = sign_in(&f.app, json!({"key": f.read})).await.ok().unwrap();
    let a = send(&f.app, from_page(Method::GET, "/api/v1/status", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let a = send(&f.app, from_page(Method::GET, "/api/v1/status", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated"),
        "idle for longer than the limit"
    );
}

#[tokio::test]
async fn a_cross_site_form_post_is_refused() {
    let f = fixture(options()).await;
    let s = sign_in(&f.app, json!({"key": f.admin})).await.ok().unwrap();
    // What a form on another site makes the browser send (had SameSite not already withheld
    // the cookie): form encoding, the cookie, a foreign Origin, no CSRF header.
    let form = |path: &str, body: &str| {
        req(Method::POST, path)
            .header(header::COOKIE, &s.cookie)
            .header(header::ORIGIN, "http://evil.example")
            .header("sec-fetch-site", "cross-site")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let a = send(&f.app, form("/api/v1/keys", "name=pwned&scopes=admin")).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"));
    let a = send(&f.app, form("/api/v1/ui/session", &format!("key={}", f.admin))).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"), "login CSRF");
    let a = send(&f.app, form("/api/v1/models/gc", "")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Nothing was created.
    let a = send(&f.app, from_page(Method::GET, "/api/v1/keys", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.json().as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn scopes_of_the_key_apply_through_the_cookie() {
    let f = fixture(options()).await;
    let s = sign_in(&f.app, json!({"key": f.read})).await.ok().unwrap();
    let a = send(&f.app, from_page(Method::GET, "/api/v1/keys", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "permission_denied"));
    let a = send(&f.app, from_page(Method::POST, "/api/v1/models/gc", &s, true).body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "permission_denied"));
    let a = send(&f.app, from_page(Method::GET, "/api/v1/models", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn logout_and_revocation_end_the_session() {
    let f = fixture(options()).await;
    let s = sign_in(&f.app, json!({"key": f.read})).await.ok().unwrap();
    // Logout is a write: the CSRF token is needed.
    let a = send(&f.app, from_page(Method::DELETE, "/api/v1/ui/session", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(&f.app, from_page(Method::DELETE, "/api/v1/ui/session", &s, true).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.header("set-cookie").contains("Max-Age=0"), "{}", a.header("set-cookie"));
    let a = send(&f.app, from_page(Method::GET, "/api/v1/status", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"));

    // Revoking the key ends its session at once.
    let s = sign_in(&f.app, json!({"key": f.read})).await.ok().unwrap();
    let a = send(&f.app, from_page(Method::GET, "/api/v1/status", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    let revoke = req(Method::DELETE, &format!("/api/v1/keys/{}", f.read_id))
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f.app, revoke).await.status, StatusCode::OK);
    let a = send(&f.app, from_page(Method::GET, "/api/v1/status", &s, false).body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    let e = sign_in(&f.app, json!({"key": f.read})).await.err().unwrap();
    assert_eq!(e.status, StatusCode::UNAUTHORIZED, "a revoked key cannot sign in");
}

#[tokio::test]
async fn login_links_are_single_use() {
    let f = fixture(options()).await;
    let make = req(Method::POST, "/api/v1/ui/login-links")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.read))
        .body(Body::empty())
        .unwrap();
    let a = send(&f.app, make).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
    let link = a.json();
    let token = link["token"].as_str().unwrap().to_owned();
    assert_eq!(link["url"], format!("http://{HOST}/ui/#login={token}"));
    let s = sign_in(&f.app, json!({"login_token": token})).await.ok().unwrap();
    assert_eq!(s.view["key_id"], f.read_id);
    assert_eq!(s.view["scopes"], json!(["read"]));
    let e = sign_in(&f.app, json!({"login_token": token})).await.err().unwrap();
    assert_eq!((e.status, e.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"), "used twice");
    // A session cannot mint links for itself.
    let a =
        send(&f.app, from_page(Method::POST, "/api/v1/ui/login-links", &s, true).body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "permission_denied"));
    // Without any credential: 401.
    let a = send(&f.app, req(Method::POST, "/api/v1/ui/login-links").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn websocket_upgrades_by_cookie_need_the_console_origin() {
    let f = fixture(options()).await;
    let s = sign_in(&f.app, json!({"key": f.read})).await.ok().unwrap();
    let upgrade = |origin: Option<&str>| {
        let mut b = req(Method::GET, "/api/v1/ws")
            .header(header::COOKIE, &s.cookie)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(Body::empty()).unwrap()
    };
    for origin in [None, Some("http://evil.example"), Some("null")] {
        let a = send(&f.app, upgrade(origin)).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "csrf_failed"), "Origin {origin:?}");
    }
    // Same origin passes the guard (the handshake itself needs a real socket: e2e ui_auth::).
    let a = send(&f.app, upgrade(Some(ORIGIN))).await;
    assert!(![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&a.status), "{}", a.status);
}

#[tokio::test]
async fn the_secure_flag_is_set_under_tls() {
    let f = fixture(EdgeOptions { tls: true, ..options() }).await;
    let r = req(Method::POST, "/api/v1/ui/session")
        .header(header::ORIGIN, format!("https://{HOST}"))
        .body(Body::from(json!({"key": f.read}).to_string()))
        .unwrap();
    let a = send(&f.app, r).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("set-cookie").ends_with("; Secure"), "{}", a.header("set-cookie"));
    // Under TLS an http:// origin is another origin.
    let r = req(Method::POST, "/api/v1/ui/session")
        .header(header::ORIGIN, ORIGIN)
        .body(Body::from(json!({"key": f.read}).to_string()))
        .unwrap();
    assert_eq!(send(&f.app, r).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_disabled_console_answers_404() {
    let opts = EdgeOptions { ui: UiOptions { enabled: false, ..UiOptions::default() }, ..options() };
    let f = fixture(opts).await;
    for path in ["/ui/", "/ui/app.js"] {
        let a = send(&f.app, req(Method::GET, path).body(Body::empty()).unwrap()).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let e = sign_in(&f.app, json!({"key": f.admin})).await.err().unwrap();
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    let make = req(Method::POST, "/api/v1/ui/login-links")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f.app, make).await.status, StatusCode::NOT_FOUND);
    // The API itself is unaffected.
    let status = req(Method::GET, "/api/v1/status")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f.app, status).await.status, StatusCode::OK);
}

#[tokio::test]
async fn failed_sign_ins_are_counted() {
    let f = fixture(options()).await;
    for _ in 0..2 {
        sign_in(&f.app, json!({"login_token": "nope"})).await.err().unwrap();
    }
    let s = sign_in(&f.app, json!({"key": f.admin})).await.ok().unwrap();
    send(&f.app, from_page(Method::POST, "/api/v1/models/gc", &s, false).body(Body::empty()).unwrap()).await;
    let r = req(Method::GET, "/metrics").header(header::AUTHORIZATION, format!("Bearer {}", f.admin));
    let text = String::from_utf8(send(&f.app, r.body(Body::empty()).unwrap()).await.body).unwrap();
    let line = |reason: &str| {
        text.lines()
            .find(|l| l.starts_with("ondevice_auth_failures_total") && l.contains(&format!("reason=\"{reason}\"")))
            .unwrap_or_else(|| panic!("no {reason} line in\n{text}"))
            .to_owned()
    };
    assert!(line("login_link").ends_with(" 2"), "{}", line("login_link"));
    assert!(line("csrf").ends_with(" 1"), "{}", line("csrf"));
    assert!(!text.contains(&f.admin), "no secret in metrics");
}
