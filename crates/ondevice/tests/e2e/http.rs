//! HTTP surface of the real daemon: every operation of its own `/openapi.json` walked through
//! the auth matrix (no key, unknown key, garbage key, missing scope, exact scope), the Host
//! allowlist, the body limit and the Prometheus metrics.

use reqwest::header::{CONNECTION, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Daemon, GARBAGE_KEY, Key, UNKNOWN_KEY};

/// The only operations allowed without a key (INTERFACE.md, Auth).
const PUBLIC: [&str; 3] = ["GET /healthz", "GET /readyz", "GET /openapi.json"];
const SCOPES: [&str; 4] = ["admin", "models", "infer", "read"];
/// A worker for the operations that take a worker name.
const COVERAGE_CONFIG: &str = r#"
[workers.sleeper]
command = ["sleep", "300"]
restart = "never"
sandbox = { mode = "off" }

[registry]
allow_hosts = ["127.0.0.1"]
retries = 0
"#;

/// One operation of the OpenAPI document.
struct Operation {
    /// `METHOD /path/{param}`, the key of the fixture table.
    name: String,
    method: Method,
    path: String,
    /// The scope of its `bearer` security requirement; `None` for public operations.
    scope: Option<String>,
    /// It answers 101: a WebSocket endpoint, called with an upgrade handshake.
    websocket: bool,
    has_body: bool,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Ok(m) = method.to_uppercase().parse::<Method>() else { continue };
            if !["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                continue;
            }
            let name = format!("{m} {path}");
            let scope = op.get("security").and_then(Value::as_array).filter(|s| !s.is_empty()).map(|reqs| {
                assert_eq!(reqs.len(), 1, "{name}: expected one security requirement, got {reqs:?}");
                let scopes = reqs[0]["bearer"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: security requirement without the bearer scheme: {reqs:?}"));
                assert_eq!(scopes.len(), 1, "{name}: expected exactly one scope, got {scopes:?}");
                let scope = scopes[0].as_str().expect("scope name").to_owned();
                assert!(SCOPES.contains(&scope.as_str()), "{name}: unknown scope {scope:?}");
                scope
            });
            ops.push(Operation {
                name,
                method: m,
                path: path.clone(),
                scope,
                websocket: op["responses"].get("101").is_some(),
                has_body: op.get("requestBody").is_some(),
            });
        }
    }
    ops
}

/// The concrete path and body of one operation.
struct Fixture {
    path: String,
    body: Option<Value>,
    /// The answer to an authorized call when it is not a success: inference operations reach
    /// the orchestrator, which answers 404 `model_not_found` when no test model is available.
    expect: Option<(StatusCode, &'static str)>,
    /// The authorized call reaches the handler, whose answer depends on state the test does not
    /// set up (a resource that does not exist, a route that answers 501 by design): anything but
    /// 401/403 and unplanned 5xx.
    handled: bool,
}

/// The body of an inference operation, naming the test model (imported on first use) when
/// `ONDEVICE_TEST_MODELS_DIR` provides it, else a model the daemon does not know.
async fn inference_fixture(daemon: &Daemon, path: &str) -> Fixture {
    let model = match crate::common::test_model(&format!("inference fixture for {path}")) {
        Some(file) => Some(crate::common::import_model_api(daemon, &file, "smollm2:latest").await),
        None => None,
    };
    let expect = if model.is_some() { None } else { Some((StatusCode::NOT_FOUND, "model_not_found")) };
    let model = model.unwrap_or_else(|| "coverage-missing:latest".to_owned());
    let chat = json!([{"role": "user", "content": "Say hi."}]);
    let body = match path {
        "/v1/chat/completions" => json!({"model": model, "messages": chat, "max_tokens": 4, "temperature": 0}),
        "/v1/completions" => json!({"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}),
        "/v1/embeddings" | "/api/embed" => json!({"model": model, "input": "hello"}),
        "/api/embeddings" => json!({"model": model, "prompt": "hello"}),
        "/api/chat" => json!({"model": model, "messages": chat, "stream": false, "options": {"num_predict": 4}}),
        "/api/generate" => json!({"model": model, "prompt": "Hello", "stream": false, "options": {"num_predict": 4}}),
        "/api/v1/runtimes/load" => json!({"model": model}),
        // Unloading a model that is not loaded (or not known) succeeds.
        "/api/v1/runtimes/unload" => {
            return Fixture {
                path: path.to_owned(),
                body: Some(json!({"model": model})),
                expect: None,
                handled: false,
            };
        }
        other => panic!("no inference fixture for {other}"),
    };
    Fixture { path: path.to_owned(), body: Some(body), expect, handled: false }
}

/// Path parameters and request bodies, keyed by `METHOD path`. An operation with a path
/// parameter, a request body or a write method must have an entry, so a new route cannot skip
/// coverage. Called once per operation; only the last (authorized) request reaches the handler.
async fn fixture(daemon: &Daemon, op: &Operation) -> Fixture {
    let plain = |body: Option<Value>| Fixture { path: op.path.clone(), body, expect: None, handled: false };
    // Routes whose authorized answer depends on state the test does not create.
    let handled =
        |path: &str, body: Option<Value>| Fixture { path: path.to_owned(), body, expect: None, handled: true };
    let digest = format!("sha256:{}", "0".repeat(64));
    match op.name.as_str() {
        "POST /api/v1/keys" => plain(Some(json!({"name": "coverage", "scopes": ["read"]}))),
        "DELETE /api/v1/keys/{id}" => {
            let victim = daemon.key(&["read"]).await;
            Fixture { path: format!("/api/v1/keys/{}", victim.id), body: None, expect: None, handled: false }
        }
        "POST /api/v1/models/import" => {
            let file = daemon.home().root().join("coverage-import.gguf");
            crate::common::write_small_gguf(&file, 1);
            plain(Some(json!({"path": file, "name": "coverage:import"})))
        }
        "GET /api/v1/models/{name}"
        | "DELETE /api/v1/models/{name}"
        | "GET /api/v1/models/{name}/export"
        | "PUT /api/v1/models/{name}/pin" => {
            let suffix = op.path.rsplit_once('}').map_or("", |(_, s)| s);
            let name = match (suffix, op.method == Method::GET) {
                ("/export", _) => "coverage:export",
                ("/pin", _) => "coverage:pin",
                (_, true) => "coverage:show",
                (_, false) => "coverage:delete",
            };
            let file = daemon.home().root().join(format!("{}.gguf", name.replace(':', "-")));
            crate::common::write_small_gguf(&file, 2);
            let resp = daemon
                .request(Method::POST, "/api/v1/models/import", Some(daemon.admin_key()))
                .json(&json!({"path": file, "name": name}))
                .send()
                .await
                .expect("import");
            assert_eq!(resp.status(), StatusCode::CREATED, "fixture import of {name}");
            Fixture {
                path: format!("/api/v1/models/{}{suffix}", name.replace(':', "%3A")),
                body: (suffix == "/pin").then(|| json!({"pinned": true})),
                expect: None,
                handled: false,
            }
        }
        "POST /api/v1/models/pull" => {
            // Accepted at once; the download itself fails later (nothing listens on port 1).
            plain(Some(json!({"model": "http://127.0.0.1:1/coverage.gguf", "name": "coverage:pull"})))
        }
        // A source that does not exist: 404 once authorized (the job itself is e2e quantize::).
        "POST /api/v1/quantize" => handled(&op.path, Some(json!({"source": "coverage-nosuch", "type": "Q8_0"}))),
        "GET /api/v1/jobs/{id}" | "GET /api/v1/jobs/{id}/events" | "DELETE /api/v1/jobs/{id}" => {
            job_fixture(daemon, op).await
        }
        "POST /api/v1/models/verify" => plain(Some(json!({}))),
        "POST /api/v1/models/gc" => plain(None),
        "POST /v1/chat/completions"
        | "POST /v1/completions"
        | "POST /v1/embeddings"
        | "POST /api/chat"
        | "POST /api/generate"
        | "POST /api/embed"
        | "POST /api/embeddings"
        | "POST /api/v1/runtimes/load"
        | "POST /api/v1/runtimes/unload" => inference_fixture(daemon, &op.path).await,
        "POST /api/blobs/{digest}" | "HEAD /api/blobs/{digest}" => handled(&format!("/api/blobs/{digest}"), None),
        "POST /api/copy" => {
            handled(&op.path, Some(json!({"source": "coverage-nosuch", "destination": "coverage:copy"})))
        }
        "POST /api/create" | "POST /api/push" | "DELETE /api/delete" | "POST /api/show" => {
            handled(&op.path, Some(json!({"model": "coverage-nosuch"})))
        }
        "POST /api/pull" => handled(&op.path, Some(json!({"model": "coverage-nosuch", "stream": false}))),
        "GET /v1/models/{model}" | "DELETE /v1/models/{model}" => handled("/v1/models/coverage-nosuch", None),
        "POST /api/v1/collections" => handled(&op.path, Some(json!({"name": "coverage", "model": "coverage-nosuch"}))),
        "GET /api/v1/collections/{name}" | "DELETE /api/v1/collections/{name}" => {
            handled("/api/v1/collections/coverage-nosuch", None)
        }
        "POST /api/v1/collections/{name}/documents" => handled(
            "/api/v1/collections/coverage-nosuch/documents",
            Some(json!({"documents": [{"id": "a", "text": "x"}]})),
        ),
        "POST /api/v1/collections/{name}/documents/delete" => {
            handled("/api/v1/collections/coverage-nosuch/documents/delete", Some(json!({"ids": ["a"]})))
        }
        "POST /api/v1/collections/{name}/index" => {
            handled("/api/v1/collections/coverage-nosuch/index", Some(json!({"paths": ["/nonexistent"]})))
        }
        "POST /api/v1/collections/{name}/model" => {
            handled("/api/v1/collections/coverage-nosuch/model", Some(json!({"model": "coverage-nosuch"})))
        }
        "POST /api/v1/collections/{name}/query" => {
            handled("/api/v1/collections/coverage-nosuch/query", Some(json!({"query": "x"})))
        }
        "POST /api/v1/diagnostics/bundle" => handled(&op.path, None),
        "GET /api/v1/diagnostics/bundles/{id}" => handled("/api/v1/diagnostics/bundles/coverage-nosuch", None),
        "POST /api/v1/prompts" => handled(&op.path, Some(json!({"files": {"pack.toml": "not = [valid"}}))),
        "POST /api/v1/prompts/{name}/rollback" => {
            handled("/api/v1/prompts/coverage-nosuch/rollback", Some(json!({"version": "1.0.0"})))
        }
        "DELETE /api/v1/prompts/{name}/versions/{version}" => {
            handled("/api/v1/prompts/coverage-nosuch/versions/1.0.0", None)
        }
        "GET /api/v1/prompts/{reference}" => handled("/api/v1/prompts/coverage-nosuch", None),
        "GET /api/v1/prompts/{reference}/diff" => handled("/api/v1/prompts/coverage-nosuch/diff", None),
        "GET /api/v1/prompts/{reference}/export" => handled("/api/v1/prompts/coverage-nosuch/export", None),
        "POST /api/v1/prompts/{reference}/render" => {
            handled("/api/v1/prompts/coverage-nosuch/render", Some(json!({"variables": {}})))
        }
        "POST /api/v1/prompts/{reference}/test" => handled("/api/v1/prompts/coverage-nosuch/test", None),
        // Signing in to the console with the bearer key (the body may also carry a key or a
        // login token: `ui_auth::`); a login link for the key.
        "POST /api/v1/ui/session" | "POST /api/v1/ui/login-links" => plain(None),
        // A key without a session cookie: 404 "no console session" once authorized.
        "GET /api/v1/ui/session" => handled(&op.path, None),
        "POST /api/v1/workers/{name}/restart" => {
            Fixture { path: "/api/v1/workers/sleeper/restart".to_owned(), body: None, expect: None, handled: false }
        }
        _ => {
            let writes = [Method::POST, Method::PUT, Method::PATCH].contains(&op.method);
            assert!(
                !op.path.contains('{') && !op.has_body && !writes,
                "{}: no request fixture: add its path parameters and body to `fixture` in tests/e2e/http.rs",
                op.name
            );
            plain(None)
        }
    }
}

/// A job for the job routes: a finished one to show and stream (its event stream ends), a
/// running one to cancel (its server accepts the connection and never answers).
async fn job_fixture(daemon: &Daemon, op: &Operation) -> Fixture {
    let running = op.method == Method::DELETE;
    let url = if running {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hang.gguf", silent.local_addr().expect("addr"));
        // Kept open (and never accepted) for the rest of the test process.
        Box::leak(Box::new(silent));
        url
    } else {
        "http://127.0.0.1:1/refused.gguf".to_owned()
    };
    let name = if running { "coverage-job:cancel".to_owned() } else { format!("coverage-job:p{}", op.path.len()) };
    let resp = daemon
        .request(Method::POST, "/api/v1/models/pull", Some(daemon.admin_key()))
        .json(&json!({"model": url, "name": name}))
        .send()
        .await
        .expect("pull");
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "fixture pull");
    let job: Value = resp.json().await.expect("job");
    let id = job["id"].as_str().expect("job id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, j) = daemon.get(&format!("/api/v1/jobs/{id}"), Some(daemon.admin_key())).await;
        let terminal = ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or(""));
        if (running && j["state"] == "running") || (!running && terminal) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fixture job never got there: {j}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let suffix = if op.path.ends_with("/events") { "/events" } else { "" };
    Fixture { path: format!("/api/v1/jobs/{id}{suffix}"), body: None, expect: None, handled: false }
}

/// Sends the operation with an optional `Authorization: Bearer` credential; WebSocket
/// operations are sent as an upgrade handshake.
async fn call(daemon: &Daemon, op: &Operation, fx: &Fixture, key: Option<&str>) -> reqwest::Response {
    let mut req = daemon.request(op.method.clone(), &fx.path, key);
    if let Some(body) = &fx.body {
        req = req.json(body);
    }
    if op.websocket {
        req = req
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
    }
    req.send().await.unwrap_or_else(|e| panic!("{}: {e}", op.name))
}

/// Asserts an error answer: status, JSON envelope with `code`, and a challenge on 401.
async fn expect_error(resp: reqwest::Response, want: StatusCode, code: &str, what: &str) {
    let status = resp.status();
    let challenge = resp.headers().get(WWW_AUTHENTICATE).cloned();
    // A HEAD answer has no body: its status (and challenge) is all there is to check.
    if what.starts_with("HEAD ") {
        assert_eq!(status, want, "{what}");
        if want == StatusCode::UNAUTHORIZED {
            assert!(challenge.is_some(), "{what}: 401 without WWW-Authenticate");
        }
        return;
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, want, "{what}: body {body}");
    assert_eq!(body["error"]["code"], code, "{what}: error envelope {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: message in {body}");
    if want == StatusCode::UNAUTHORIZED {
        assert!(challenge.is_some(), "{what}: 401 without WWW-Authenticate");
    }
}

/// A key that authenticates but does not satisfy `scope`, and the answer it must get. Every
/// scope implies `read`, so no valid key lacks `read`: for `read` operations a revoked key is
/// used instead, which must be refused with 401.
async fn insufficient_key(daemon: &Daemon, scope: &str) -> (Key, StatusCode, &'static str) {
    if scope == "read" {
        let key = daemon.key(&["read"]).await;
        daemon.revoke(&key.id).await;
        return (key, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    // Admin implies every scope, so it is never part of a key that must lack one.
    let others: Vec<&str> = SCOPES.iter().copied().filter(|s| *s != scope && *s != "admin").collect();
    (daemon.key(&others).await, StatusCode::FORBIDDEN, "permission_denied")
}

#[tokio::test]
async fn every_openapi_operation_enforces_its_security() {
    let daemon = Daemon::with_config(COVERAGE_CONFIG);
    let (status, doc) = daemon.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let ops = operations(&doc);
    let mut public: Vec<&str> = ops.iter().filter(|o| o.scope.is_none()).map(|o| o.name.as_str()).collect();
    public.sort_unstable();
    let mut expected = PUBLIC.to_vec();
    expected.sort_unstable();
    assert_eq!(public, expected, "exactly these operations may be public");
    assert!(ops.len() > PUBLIC.len() + 4, "suspiciously few operations: {}", ops.len());

    for op in &ops {
        let fx = fixture(&daemon, op).await;
        let name = op.name.as_str();
        let Some(scope) = &op.scope else {
            for key in [None, Some(GARBAGE_KEY)] {
                let resp = call(&daemon, op, &fx, key).await;
                assert!(resp.status().is_success(), "{name} is public but answered {} with {key:?}", resp.status());
            }
            continue;
        };
        let denied = StatusCode::UNAUTHORIZED;
        expect_error(call(&daemon, op, &fx, None).await, denied, "unauthenticated", &format!("{name} without a key"))
            .await;
        expect_error(
            call(&daemon, op, &fx, Some(UNKNOWN_KEY)).await,
            denied,
            "unauthenticated",
            &format!("{name} with an unknown key"),
        )
        .await;
        expect_error(
            call(&daemon, op, &fx, Some(GARBAGE_KEY)).await,
            denied,
            "unauthenticated",
            &format!("{name} with a garbage key"),
        )
        .await;
        let resp = daemon
            .http()
            .request(op.method.clone(), daemon.url(&fx.path))
            .header("x-api-key", UNKNOWN_KEY)
            .send()
            .await
            .expect("send");
        expect_error(resp, denied, "unauthenticated", &format!("{name} with an unknown x-api-key")).await;
        let (weak, want, code) = insufficient_key(&daemon, scope).await;
        expect_error(
            call(&daemon, op, &fx, Some(&weak.secret)).await,
            want,
            code,
            &format!("{name} without the {scope} scope"),
        )
        .await;

        let exact = daemon.key(&[scope]).await;
        let resp = call(&daemon, op, &fx, Some(&exact.secret)).await;
        let status = resp.status();
        if op.websocket {
            assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS, "{name} with a {scope} key");
        } else if fx.handled {
            let body = resp.text().await.unwrap_or_default();
            let refused = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status);
            let broken = status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED;
            assert!(!refused && !broken, "{name} with a {scope} key answered {status}: {body}");
        } else if let Some((want, code)) = fx.expect {
            expect_error(resp, want, code, &format!("{name} with a {scope} key")).await;
        } else {
            let body = resp.text().await.unwrap_or_default();
            assert!(status.is_success(), "{name} with a {scope} key answered {status}: {body}");
        }
    }

    // Unknown paths are default-deny: 401 without a key, then 404.
    let (status, body) = daemon.get("/api/v1/no-such-route", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));
    let (status, body) = daemon.get("/api/v1/no-such-route", Some(daemon.admin_key())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

/// Status and error code of `GET path` with this `Host` header and the admin key.
async fn with_host(daemon: &Daemon, path: &str, host: &str) -> (StatusCode, Option<String>) {
    let resp =
        daemon.request(Method::GET, path, Some(daemon.admin_key())).header(HOST, host).send().await.expect("send");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn host_header_must_name_this_daemon() {
    let daemon = Daemon::with_config("[server]\nallowed_hosts = [\"ondevice.test\"]\n");
    let port = daemon.addr().port();
    let refused = Some("host_not_allowed".to_owned());
    for path in ["/api/v1/status", "/healthz", "/api/v1/no-such-route"] {
        for host in
            ["evil.example".to_owned(), format!("evil.example:{port}"), format!("localhost.evil.example:{port}")]
        {
            let got = with_host(&daemon, path, &host).await;
            assert_eq!(got, (StatusCode::MISDIRECTED_REQUEST, refused.clone()), "GET {path} with Host {host}");
        }
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "ondevice.test".to_owned(),
        format!("ondevice.test:{port}"),
    ] {
        assert_eq!(with_host(&daemon, "/api/v1/status", &host).await, (StatusCode::OK, None), "Host {host}");
    }

    // A daemon without the configured name refuses it.
    let plain = Daemon::start(crate::common::Home::new());
    let got = with_host(&plain, "/api/v1/status", "ondevice.test").await;
    assert_eq!(got, (StatusCode::MISDIRECTED_REQUEST, refused));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let daemon = Daemon::with_config("[server]\nbody_limit = \"2KiB\"\n");
    let big = json!({"name": "big", "scopes": ["read"], "pad": "x".repeat(4096)});
    let resp =
        daemon.request(Method::POST, "/api/v1/keys", Some(daemon.admin_key())).json(&big).send().await.expect("send");
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "4 KiB body with Content-Length").await;

    // Without Content-Length (chunked), the limit still holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.to_string().into_bytes().chunks(512).map(|c| Ok(c.to_vec())).collect();
    let resp = daemon
        .request(Method::POST, "/api/v1/keys", Some(daemon.admin_key()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .expect("send");
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "4 KiB chunked body").await;

    // A small body under the same limit is served.
    let resp = daemon
        .request(Method::POST, "/api/v1/keys", Some(daemon.admin_key()))
        .json(&json!({"name": "small", "scopes": ["read"]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
}

/// Value of the sample whose line starts with `metric{` and holds every label.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_auth_failures() {
    let daemon = Daemon::start(crate::common::Home::new());
    let read = daemon.key(&["read"]).await;
    assert_eq!(daemon.get("/api/v1/status", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(daemon.get("/api/v1/status", Some(UNKNOWN_KEY)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(daemon.get("/api/v1/status", Some(&read.secret)).await.0, StatusCode::OK);
    // One import that succeeds and one the registry refuses (no such file) reach the registry counters.
    let file = daemon.home().root().join("metrics-import.gguf");
    crate::common::write_small_gguf(&file, 1);
    let missing = daemon.home().root().join("no-such-model.gguf");
    for (path, ok) in [(&file, true), (&missing, false)] {
        let resp = daemon
            .request(Method::POST, "/api/v1/models/import", Some(daemon.admin_key()))
            .json(&json!({"path": path, "name": "metrics:import"}))
            .send()
            .await
            .expect("import");
        assert_eq!(resp.status().is_success(), ok, "import of {}: {}", path.display(), resp.status());
    }

    let resp = daemon.request(Method::GET, "/metrics", Some(&read.secret)).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("metrics text");
    let requests = "ondevice_http_requests_total";
    let route = r#"route="/api/v1/status""#;
    let refused = sample(&text, requests, &[route, r#"method="GET""#, r#"status="401""#]);
    assert_eq!(refused, Some(2.0), "two refused requests on the status route:\n{text}");
    let served = sample(&text, requests, &[route, r#"status="200""#]);
    assert_eq!(served, Some(1.0), "one served request on the status route:\n{text}");
    let failures = "ondevice_auth_failures_total";
    assert_eq!(sample(&text, failures, &[r#"surface="http""#, r#"reason="missing""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, failures, &[r#"surface="http""#, r#"reason="invalid""#]), Some(1.0), "{text}");
    assert!(text.contains("ondevice_http_request_duration_seconds"), "latency histogram:\n{text}");
    let ops = "ondevice_registry_operations_total";
    assert_eq!(sample(&text, ops, &[r#"op="import""#, r#"outcome="ok""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, ops, &[r#"op="import""#, r#"outcome="error""#]), Some(1.0), "{text}");
    assert_eq!(sample(&text, ops, &[r#"op="gc""#, r#"outcome="ok""#]), Some(0.0), "{text}");
    let count = sample(&text, "ondevice_registry_operation_seconds_count", &[r#"op="import""#]);
    assert_eq!(count, Some(2.0), "{text}");
}
