//! The router as a function: requests through `oneshot`, without a socket, against a real
//! SQLite key store in a temp dir. End-to-end tests of the real binary live in `crates/ondevice`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use ondevice_auth::{Scopes, Verifier};
use ondevice_server::{AppState, EdgeOptions, NoWorkers};
use ondevice_store::Store;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
    admin: String,
    read: String,
}

fn options() -> EdgeOptions {
    EdgeOptions {
        listen: "127.0.0.1:7733".parse().unwrap(),
        allowed_hosts: vec!["ondevice.test".to_owned()],
        cors_origins: vec!["http://localhost:3000".to_owned()],
        body_limit: 1024,
        max_concurrent_requests: 8,
        tls: false,
    }
}

async fn fixture(opts: EdgeOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).unwrap());
    let verifier = Arc::new(Verifier::new(store.clone(), true).unwrap());
    let (_, admin) = verifier.create_key(Some("admin"), Scopes::admin()).unwrap();
    let (_, read) = verifier.create_key(Some("reader"), Scopes::from_list("read").unwrap()).unwrap();
    let registry = Arc::new(ondevice_registry::Registry::new(store.clone(), dir.path()).unwrap());
    let state = AppState::new(verifier, registry, opts, Arc::new(NoWorkers), CancellationToken::new());
    let (app, _health) = ondevice_server::router(state).await;
    Fixture { _dir: dir, app, admin, read }
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header(header::HOST, "127.0.0.1:7733");
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn committed_openapi_is_fresh() {
    let f = fixture(options()).await;
    let (status, _, doc) = send(&f.app, get("/openapi.json", None)).await;
    assert_eq!(status, StatusCode::OK);
    let want = format!("{}\n", serde_json::to_string_pretty(&doc).unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    if std::env::var_os("ONDEVICE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "openapi.json is stale: run `ONDEVICE_BLESS=1 cargo test -p ondevice-server --test router` and commit it"
    );
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn every_non_public_operation_declares_a_scope() {
    let f = fixture(options()).await;
    let (_, _, doc) = send(&f.app, get("/openapi.json", None)).await;
    let public = ["/healthz", "/readyz", "/openapi.json"];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let scopes = op["security"][0]["bearer"].as_array();
            if public.contains(&path.as_str()) {
                assert!(scopes.is_none(), "{method} {path} is public but declares security");
            } else {
                let s = scopes.unwrap_or_else(|| panic!("{method} {path} declares no scope"));
                assert_eq!(s.len(), 1, "{method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn unknown_routes_are_denied_before_not_found() {
    let f = fixture(options()).await;
    let (s, h, body) = send(&f.app, get("/nope", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(h.get(header::WWW_AUTHENTICATE).is_some());
    let (s, _, body) = send(&f.app, get("/nope", Some(&f.read))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn scope_rules_apply_to_key_management() {
    let f = fixture(options()).await;
    let (s, _, body) = send(&f.app, get("/api/v1/keys", Some(&f.read))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["message"], "api key lacks the admin scope");
    let (s, _, body) = send(&f.app, get("/api/v1/keys", Some(&f.admin))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 2);
    // x-api-key works like the bearer header.
    let req = Request::get("/api/v1/status")
        .header(header::HOST, "localhost")
        .header("x-api-key", &f.read)
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = send(&f.app, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["auth_enabled"], true);
}

#[tokio::test]
async fn bad_bodies_get_the_error_envelope() {
    let f = fixture(options()).await;
    let post = |body: String, len: bool| {
        let mut b = Request::post("/api/v1/keys")
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
            .header(header::CONTENT_TYPE, "application/json");
        if len {
            b = b.header(header::CONTENT_LENGTH, body.len());
        }
        b.body(Body::from(body)).unwrap()
    };
    let big = format!("{{\"name\": \"{}\", \"scopes\": [\"read\"]}}", "x".repeat(2000));
    let (s, _, body) = send(&f.app, post(big.clone(), true)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Without Content-Length the limit is enforced while reading.
    let (s, _, body) = send(&f.app, post(big, false)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (s, _, body) = send(&f.app, post("{\"scopes\": [\"root\"]}".into(), true)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown scope"));
    let (s, _, body) = send(&f.app, post("{not json".into(), true)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request");
    let (s, _, body) = send(&f.app, post("{\"scopes\": [\"read\"], \"name\": \"ok\"}".into(), true)).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(body["key"].as_str().unwrap().starts_with("odk_"));
}

#[tokio::test]
async fn foreign_host_headers_are_refused() {
    let f = fixture(options()).await;
    for (host, want) in [
        ("evil.example:7733", StatusCode::MISDIRECTED_REQUEST),
        ("localhost:7733", StatusCode::OK),
        ("ondevice.test", StatusCode::OK),
        ("127.0.0.1", StatusCode::OK),
        ("10.1.2.3:7733", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let req = Request::get("/healthz").header(header::HOST, host).body(Body::empty()).unwrap();
        let (s, _, body) = send(&f.app, req).await;
        assert_eq!(s, want, "{host}: {body}");
    }
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let f = fixture(options()).await;
    let preflight = |origin: &str| {
        Request::options("/api/v1/status")
            .header(header::HOST, "localhost")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .unwrap()
    };
    let (_, h, _) = send(&f.app, preflight("http://localhost:3000")).await;
    assert_eq!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(), "http://localhost:3000");
    let (_, h, _) = send(&f.app, preflight("http://evil.example")).await;
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn overload_answers_503_with_retry_after() {
    let mut opts = options();
    opts.max_concurrent_requests = 0;
    let f = fixture(opts).await;
    let (s, h, body) = send(&f.app, get("/healthz", None)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.get(header::RETRY_AFTER).unwrap(), "1");
    assert_eq!(body["error"]["code"], "overloaded");
}

#[tokio::test]
async fn metrics_count_routes_and_auth_failures() {
    let f = fixture(options()).await;
    send(&f.app, get("/api/v1/status", None)).await;
    send(&f.app, get("/api/v1/status", Some(&f.read))).await;
    let resp = f.app.clone().oneshot(get("/metrics", Some(&f.read))).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains(r#"ondevice_http_requests_total{route="/api/v1/status",method="GET",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ondevice_http_requests_total{route="/api/v1/status",method="GET",status="401"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"ondevice_auth_failures_total{surface="http",reason="missing"} 1"#), "{text}");
    assert!(text.contains("ondevice_http_request_duration_seconds_bucket"), "{text}");
}
