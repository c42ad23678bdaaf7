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
    models: String,
}

fn options() -> EdgeOptions {
    EdgeOptions {
        listen: "127.0.0.1:7733".parse().unwrap(),
        allowed_hosts: vec!["ondevice.test".to_owned()],
        cors_origins: vec!["http://localhost:3000".to_owned()],
        body_limit: 1024,
        max_concurrent_requests: 8,
        tls: false,
        ui: Default::default(),
    }
}

async fn fixture(opts: EdgeOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).unwrap());
    let verifier = Arc::new(Verifier::new(store.clone(), true).unwrap());
    let (_, admin) = verifier.create_key(Some("admin"), Scopes::admin()).unwrap();
    let (_, read) = verifier.create_key(Some("reader"), Scopes::from_list("read").unwrap()).unwrap();
    let (_, curator) = verifier.create_key(Some("curator"), Scopes::from_list("models").unwrap()).unwrap();
    let registry = Arc::new(ondevice_registry::Registry::new(store.clone(), dir.path()).unwrap());
    let models = Arc::new(ondevice_registry::RegistryModels::new(registry));
    let services = ondevice_server::Services::new(verifier, models, Arc::new(NoWorkers));
    let state = AppState::new(services, opts, CancellationToken::new());
    let (app, _health) = ondevice_server::router(state).await;
    Fixture { _dir: dir, app, admin, read, models: curator }
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
    assert_eq!(body.as_array().unwrap().len(), 3);
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

/// A minimal valid GGUF v3: two metadata strings and one F32 tensor of `n` values.
fn tiny_gguf(n: u64) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes()); // tensors
    out.extend_from_slice(&2u64.to_le_bytes()); // metadata pairs
    for (key, value) in [("general.architecture", "llama"), ("general.name", "tiny")] {
        string(&mut out, key);
        out.extend_from_slice(&8u32.to_le_bytes()); // string
        string(&mut out, value);
    }
    string(&mut out, "w");
    out.extend_from_slice(&1u32.to_le_bytes()); // dimensions
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // F32
    out.extend_from_slice(&0u64.to_le_bytes()); // offset in the data section
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend((0..n * 4).map(|i| i as u8));
    out
}

fn send_json(method: &str, path: &str, key: &str, body: serde_json::Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn models_routes_reach_the_registry_through_the_model_service() {
    let f = fixture(options()).await;
    let files = tempfile::tempdir().unwrap();
    let gguf = files.path().join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf(64)).unwrap();
    let junk = files.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file").unwrap();

    // Writes need `models`; a read key is refused before the registry is touched.
    let import = |key: &str, path: &std::path::Path| {
        send_json("POST", "/api/v1/models/import", key, serde_json::json!({"path": path, "name": "tiny:v1"}))
    };
    let (s, _, body) = send(&f.app, import(&f.read, &gguf)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("permission_denied")));
    let (s, _, body) = send(&f.app, import(&f.models, &junk)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{body}");
    let (s, _, body) = send(&f.app, import(&f.models, &gguf)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["model"], "tiny:v1");
    let digest = body["digest"].as_str().unwrap().to_owned();

    let (s, _, body) = send(&f.app, get("/api/v1/models", Some(&f.read))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    let (s, _, body) = send(&f.app, get(&format!("/api/v1/models/{digest}"), Some(&f.read))).await;
    assert_eq!((s, body["model"].as_str()), (StatusCode::OK, Some("tiny:v1")), "{body}");
    let (s, _, body) = send(&f.app, get("/api/v1/models/nope:latest", Some(&f.read))).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, _, body) = send(&f.app, get("/api/v1/models/..%2Fevil", Some(&f.read))).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

    let pin = send_json("PUT", "/api/v1/models/tiny:v1/pin", &f.models, serde_json::json!({"pinned": true}));
    let (s, _, body) = send(&f.app, pin).await;
    assert_eq!((s, body[0]["pinned"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    let verify = send_json("POST", "/api/v1/models/verify", &f.models, serde_json::json!({}));
    let (s, _, body) = send(&f.app, verify).await;
    assert_eq!((s, body[0]["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");

    // The export streams a tar from the blocking pool.
    let resp = f.app.clone().oneshot(get("/api/v1/models/tiny:v1/export", Some(&f.read))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-tar");
    let tar = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(tar.len() > 64 * 4 && tar.len() % 512 == 0, "{} bytes", tar.len());

    let (s, _, body) =
        send(&f.app, send_json("DELETE", "/api/v1/models/tiny:v1", &f.models, serde_json::json!(null))).await;
    assert_eq!((s, body[0]["model"].as_str()), (StatusCode::OK, Some("tiny:v1")), "{body}");
    let gc = send_json("POST", "/api/v1/models/gc", &f.models, serde_json::json!(null));
    let (s, _, body) = send(&f.app, gc).await;
    assert_eq!((s, body["removed_blobs"][0].as_str()), (StatusCode::OK, Some(digest.as_str())), "{body}");
    let (s, _, body) = send(&f.app, get("/api/v1/models/tiny:v1", Some(&f.read))).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

/// A unary gRPC call through the router (no socket); returns the `grpc-status` of a trailers-only
/// answer (every refusal and error is one), `None` when the call went through.
async fn grpc_status(app: &axum::Router, path: &str, key: Option<&str>, message: &[u8]) -> Option<String> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let mut b = Request::post(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let resp = app.clone().oneshot(b.body(Body::from(frame)).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn grpc_methods_get_their_scope_from_the_table() {
    let f = fixture(options()).await;
    // RemoveModelRequest { name: "nope:latest" }.
    let remove = [&[0x0a, 11][..], b"nope:latest"].concat();
    let path = "/ondevice.v1.ModelsService/RemoveModel";
    assert_eq!(grpc_status(&f.app, path, None, &remove).await.as_deref(), Some("16"), "UNAUTHENTICATED");
    assert_eq!(grpc_status(&f.app, path, Some(&f.read), &remove).await.as_deref(), Some("7"), "PERMISSION_DENIED");
    // With `models` the call reaches the registry, whose NotFound maps to NOT_FOUND.
    assert_eq!(grpc_status(&f.app, path, Some(&f.models), &remove).await.as_deref(), Some("5"), "NOT_FOUND");
    // A read method answers a read key (the empty model list is the message, not a status).
    let list = "/ondevice.v1.ModelsService/ListModels";
    assert_eq!(grpc_status(&f.app, list, Some(&f.read), &[]).await, None);
    // A method the table does not list is never served, whatever the key.
    let unknown = "/ondevice.v1.ModelsService/DropEverything";
    assert_eq!(grpc_status(&f.app, unknown, None, &[]).await.as_deref(), Some("16"));
    assert_eq!(grpc_status(&f.app, unknown, Some(&f.admin), &[]).await.as_deref(), Some("12"), "UNIMPLEMENTED");
}
