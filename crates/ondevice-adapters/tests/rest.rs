//! Kind `rest` against an in-test server with a made-up API shape that exists only in the config below:
//! the adapter learns the request template, headers and response pointers from `[runtimes.NAME]`.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use ondevice_config::Secret;
use ondevice_runtime::{
    ChatMessage, EmbedRequest, Event, FinishReason, GenerateRequest, ModelSpec, Prompt, Role, RuntimeError, Sampling,
    Usage,
};
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;

async fn infer(State(seen): State<Seen>, headers: HeaderMap, Json(b): Json<Value>) -> Response {
    seen.lock().unwrap().push(("/v2/infer".into(), headers.clone(), b.clone()));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk-rest-1") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"fault": "bad key"}))).into_response();
    }
    if b["input"] == "overload" {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "9")], "busy").into_response();
    }
    let lines = [
        json!({"delta": {"text": "Bon"}, "finished": false}),
        json!({"delta": {"text": "jour"}, "finished": false}),
        json!({"delta": {"text": "!"}, "finished": true, "why": "max_new", "usage": {"in": 11, "out": "3"}}),
    ];
    let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    Body::from(body).into_response()
}

async fn once(State(seen): State<Seen>, headers: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    seen.lock().unwrap().push(("/v2/once".into(), headers, b));
    Json(json!({"result": {"output": "Paris"}, "meta": {"tokens_in": 7}}))
}

async fn events(State(seen): State<Seen>, headers: HeaderMap, Json(b): Json<Value>) -> Response {
    seen.lock().unwrap().push(("/v2/sse".into(), headers, b));
    let body =
        "event: token\ndata: {\"t\":\"a\"}\n\n: ping\n\ndata: {\"t\":\"b\"}\n\ndata: {\"err\":\"model crashed\"}\n\n";
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn embed(State(seen): State<Seen>, headers: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    seen.lock().unwrap().push(("/v2/embed".into(), headers, b.clone()));
    let n = b["texts"].as_array().map_or(0, Vec::len);
    Json(json!({"out": {"vectors": (0..n).map(|i| json!([i, 2])).collect::<Vec<_>>()}}))
}

async fn serve(seen: Seen) -> String {
    let app = axum::Router::new()
        .route("/v2/infer", post(infer))
        .route("/v2/once", post(once))
        .route("/v2/sse", post(events))
        .route("/v2/embed", post(embed))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn config(url: &str, tenant_file: &std::path::Path, generate: &str) -> ondevice_config::runtimes::RuntimeConfig {
    let text = format!(
        r#"
[runtimes.my-rest]
kind = "rest"
base_url = "{url}"
api_key = "env:UNUSED_HERE"
models = ["tiny"]
{generate}
[runtimes.my-rest.embed]
path = "/v2/embed"
body = {{ texts = "{{{{input}}}}" }}
vectors = "/out/vectors"
"#,
        generate = generate.replace("TENANT_FILE", &tenant_file.display().to_string()),
    );
    let mut s = ondevice_config::parse(&text, None).unwrap();
    s.runtimes.remove("my-rest").unwrap()
}

const NDJSON: &str = r#"
[runtimes.my-rest.generate]
path = "/v2/infer"
headers = { Authorization = "Bearer {{api_key}}", X-Tenant = "file:TENANT_FILE" }
body = { model = "{{model}}", input = "{{prompt}}", history = "{{messages}}", opts = { max_new = "{{max_tokens}}", temp = "{{temperature}}", seed = "{{seed}}" }, stream = "{{stream}}" }
response = "ndjson"
text = "/delta/text"
done = "/finished"
finish_reason = "/why"
prompt_tokens = "/usage/in"
completion_tokens = "/usage/out"
"#;

fn chat() -> GenerateRequest {
    GenerateRequest {
        model: "tiny".into(),
        prompt: Prompt::Chat(vec![ChatMessage::new(Role::User, "Say hello in French")]),
        sampling: Sampling { max_tokens: Some(3), temperature: Some(0.5), ..Default::default() },
        keep_alive: None,
    }
}

async fn collect(s: ondevice_runtime::EventStream) -> Vec<Result<Event, RuntimeError>> {
    s.collect().await
}

#[tokio::test]
async fn ndjson_mapping_from_config_only() {
    let seen = Seen::default();
    let url = serve(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let tenant = dir.path().join("tenant");
    std::fs::write(&tenant, "acme\n").unwrap();
    let rt = ondevice_adapters::from_config("my-rest", &config(&url, &tenant, NDJSON), Some(Secret::new("sk-rest-1")))
        .unwrap();
    assert_eq!(rt.kind(), "rest");
    assert_eq!(rt.list_models().await.unwrap(), vec!["tiny"]);
    let items = collect(rt.generate(&ModelSpec::named("tiny"), chat()).await.unwrap()).await;
    let text: String = items
        .iter()
        .filter_map(|i| match i {
            Ok(Event::Token(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Bonjour!");
    assert_eq!(
        items.last().unwrap(),
        &Ok(Event::Done {
            finish: FinishReason::Length,
            usage: Usage { prompt_tokens: 11, completion_tokens: 3 },
            timings: None
        })
    );

    let (_, headers, body) = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(headers["x-tenant"], "acme");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["input"], "user: Say hello in French\nassistant:");
    assert_eq!(body["history"], json!([{"role": "user", "content": "Say hello in French"}]));
    assert_eq!(body["opts"], json!({"max_new": 3, "temp": 0.5}), "unset seed is dropped, numbers stay numbers");
    assert_eq!(body["stream"], true);

    let overload = GenerateRequest { prompt: Prompt::Text { prompt: "overload".into(), raw: true }, ..chat() };
    let err = rt.generate(&ModelSpec::named("tiny"), overload).await.err().unwrap();
    assert_eq!(
        err,
        RuntimeError::Overloaded {
            what: "runtime \"my-rest\" answered 429: busy".into(),
            retry_after: std::time::Duration::from_secs(9)
        }
    );

    let e = rt
        .embed(
            &ModelSpec::named("tiny"),
            EmbedRequest { model: "tiny".into(), input: vec!["x".into(), "y".into()], normalize: false },
        )
        .await
        .unwrap();
    assert_eq!(e.vectors, vec![vec![0.0, 2.0], vec![1.0, 2.0]]);

    // Wrong key: the upstream's 401 is reported without the key.
    let rt = ondevice_adapters::from_config("my-rest", &config(&url, &tenant, NDJSON), Some(Secret::new("sk-wrong")))
        .unwrap();
    let err = rt.generate(&ModelSpec::named("tiny"), chat()).await.err().unwrap();
    assert!(
        matches!(err, RuntimeError::Upstream { status: 401, .. }) && !err.to_string().contains("sk-wrong"),
        "{err}"
    );
}

#[tokio::test]
async fn json_and_sse_modes() {
    let seen = Seen::default();
    let url = serve(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let json_mode = r#"
[runtimes.my-rest.generate]
path = "/v2/once"
body = { q = "{{prompt}}", stop = "{{stop}}" }
text = "/result/output"
prompt_tokens = "/meta/tokens_in"
"#;
    let rt = ondevice_adapters::from_config("my-rest", &config(&url, dir.path(), json_mode), None).unwrap();
    let req = GenerateRequest { sampling: Sampling { stop: vec!["\n".into()], ..Default::default() }, ..chat() };
    let items = collect(rt.generate(&ModelSpec::named("tiny"), req).await.unwrap()).await;
    assert_eq!(
        items,
        vec![
            Ok(Event::Token("Paris".into())),
            Ok(Event::Done {
                finish: FinishReason::Stop,
                usage: Usage { prompt_tokens: 7, completion_tokens: 1 },
                timings: None
            })
        ]
    );
    assert_eq!(seen.lock().unwrap().last().unwrap().2["stop"], json!(["\n"]));

    let sse_mode = r#"
[runtimes.my-rest.generate]
path = "/v2/sse"
body = { q = "{{prompt}}" }
response = "sse"
text = "/t"
error = "/err"
"#;
    let rt = ondevice_adapters::from_config("my-rest", &config(&url, dir.path(), sse_mode), None).unwrap();
    let items = collect(rt.generate(&ModelSpec::named("tiny"), chat()).await.unwrap()).await;
    assert_eq!(items[..2], [Ok(Event::Token("a".into())), Ok(Event::Token("b".into()))]);
    assert!(
        matches!(&items[2], Err(RuntimeError::Upstream { message, .. }) if message == "model crashed"),
        "{items:?}"
    );
    assert_eq!(items.len(), 3);
}

#[test]
fn bad_header_secrets_fail_at_build_time() {
    let missing = std::path::Path::new("/nonexistent/tenant");
    let err = ondevice_adapters::from_config(
        "my-rest",
        &config("http://127.0.0.1:9", missing, NDJSON),
        Some(Secret::new("k")),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("/nonexistent/tenant"), "{err}");
    let err =
        ondevice_adapters::from_config("my-rest", &config("http://127.0.0.1:9", missing, NDJSON), None).err().unwrap();
    assert!(err.to_string().contains("api_key"), "{err}");
}
