//! Kind `ollama` against an in-test server speaking Ollama's documented HTTP API
//! (github.com/ollama/ollama `docs/api.md`: `/api/chat`, `/api/generate`, `/api/embed`, `/api/tags`,
//! `/api/ps`, NDJSON streaming). Ollama itself cannot run here, so this server plays its part on
//! 127.0.0.1:0; it records each request body so the tests check what the adapter sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use ondevice_adapters::HttpOptions;
use ondevice_adapters::ollama::OllamaAdapter;
use ondevice_runtime::{
    ChatMessage, Constraint, EmbedRequest, Event, FinishReason, GenerateRequest, Health, ModelSpec, Prompt, Role,
    Runtime, RuntimeError, Sampling, Usage,
};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, Value)>>>);

impl Seen {
    fn push(&self, path: &str, body: &Value) {
        self.0.lock().unwrap().push((path.to_owned(), body.clone()));
    }
    fn last(&self, path: &str) -> Value {
        self.0.lock().unwrap().iter().rev().find(|(p, _)| p == path).map(|(_, b)| b.clone()).unwrap()
    }
}

fn ndjson(lines: Vec<Value>) -> Response {
    let chunks = lines.into_iter().map(|l| Ok::<_, std::io::Error>(format!("{l}\n")));
    let body = Body::from_stream(futures_util::stream::iter(chunks).then(|c| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c
    }));
    ([("content-type", "application/x-ndjson")], body).into_response()
}

fn missing(model: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": format!("model '{model}' not found, try pulling it first")})))
        .into_response()
}

async fn chat(State(seen): State<Seen>, Json(b): Json<Value>) -> Response {
    seen.push("/api/chat", &b);
    let model = b["model"].as_str().unwrap_or_default().to_owned();
    if model != "llama3.2:1b" {
        return missing(&model);
    }
    if b["messages"].as_array().is_none_or(|m| m.is_empty()) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "messages are required"}))).into_response();
    }
    let msg = |t: &str| json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "message": {"role": "assistant", "content": t}, "done": false});
    ndjson(vec![
        msg("The capital"),
        msg(" of France"),
        msg(" is Paris."),
        json!({"model": model, "created_at": "2024-01-01T00:00:01Z", "message": {"role": "assistant", "content": ""},
               "done": true, "done_reason": "stop", "total_duration": 9_000_000, "load_duration": 1_000_000,
               "prompt_eval_count": 26, "prompt_eval_duration": 2_000_000, "eval_count": 7, "eval_duration": 5_000_000}),
    ])
}

async fn generate(State(seen): State<Seen>, Json(b): Json<Value>) -> Response {
    seen.push("/api/generate", &b);
    let model = b["model"].as_str().unwrap_or_default().to_owned();
    if model != "llama3.2:1b" {
        return missing(&model);
    }
    if b.get("prompt").is_none() {
        // Load (or, with keep_alive 0, unload): one JSON object, not streamed.
        let reason = if b["keep_alive"] == json!(0) { "unload" } else { "load" };
        return Json(json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "response": "", "done": true, "done_reason": reason})).into_response();
    }
    if b["prompt"] == "die" {
        // Headers sent, then the stream breaks before `done`.
        let body = Body::from_stream(futures_util::stream::iter(vec![
            Ok(format!("{}\n", json!({"model": model, "response": "partial", "done": false}))),
            Err(std::io::Error::other("crash")),
        ]));
        return body.into_response();
    }
    let part = |t: &str| json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "response": t, "done": false});
    ndjson(vec![
        part("one"),
        part(" two"),
        json!({"model": model, "response": "", "done": true, "done_reason": "length", "prompt_eval_count": 4, "eval_count": 2}),
    ])
}

async fn embed(State(seen): State<Seen>, Json(b): Json<Value>) -> Response {
    seen.push("/api/embed", &b);
    let n = b["input"].as_array().map_or(0, Vec::len);
    let rows: Vec<Value> = (0..n).map(|i| json!([3.0, 4.0 + i as f64])).collect();
    Json(json!({"model": b["model"], "embeddings": rows, "prompt_eval_count": 8})).into_response()
}

async fn tags() -> Json<Value> {
    Json(json!({"models": [{"name": "llama3.2:1b", "model": "llama3.2:1b", "size": 1_300_000_000u64, "digest": "abc",
                            "details": {"format": "gguf", "family": "llama"}}]}))
}

async fn ps() -> Json<Value> {
    Json(json!({"models": [{"name": "llama3.2:1b", "model": "llama3.2:1b", "size": 1_300_000_000u64}]}))
}

async fn serve(seen: Seen) -> String {
    let app = axum::Router::new()
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn spec() -> ModelSpec {
    ModelSpec { context_length: Some(4096), ..ModelSpec::named("llama3.2:1b") }
}

async fn collect(rt: &OllamaAdapter, model: &ModelSpec, req: GenerateRequest) -> Result<(String, Event), RuntimeError> {
    let mut s = rt.generate(model, req).await?;
    let mut text = String::new();
    while let Some(item) = s.next().await {
        match item? {
            Event::Token(t) => text.push_str(&t),
            done => {
                assert!(s.next().await.is_none());
                return Ok((text, done));
            }
        }
    }
    panic!("no done");
}

fn chat_request() -> GenerateRequest {
    GenerateRequest {
        model: "llama3.2:1b".into(),
        prompt: Prompt::Chat(vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(Role::User, "What is the capital of France?"),
        ]),
        sampling: Sampling {
            temperature: Some(0.0),
            top_k: Some(40),
            top_p: Some(0.9),
            min_p: Some(0.05),
            repeat_penalty: Some(1.1),
            seed: Some(42),
            max_tokens: Some(64),
            stop: vec!["\n\n".into()],
            constraint: None,
        },
        keep_alive: Some(Duration::from_secs(300)),
    }
}

#[tokio::test]
async fn chat_streams_with_options_usage_and_timings() {
    let seen = Seen::default();
    let rt = OllamaAdapter::new("ollama", HttpOptions::new(serve(seen.clone()).await)).unwrap();
    assert_eq!(rt.health().await, Health::Ready);
    let (text, done) = collect(&rt, &spec(), chat_request()).await.unwrap();
    assert_eq!(text, "The capital of France is Paris.");
    let Event::Done { finish, usage, timings } = done else { unreachable!() };
    assert_eq!(finish, FinishReason::Stop);
    assert_eq!(usage, Usage { prompt_tokens: 26, completion_tokens: 7 });
    assert_eq!(timings.unwrap().generation, Duration::from_millis(5));

    let sent = seen.last("/api/chat");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["keep_alive"], 300);
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "You are a helpful assistant."}));
    let o = &sent["options"];
    assert_eq!((o["temperature"].as_f64(), o["top_k"].as_u64(), o["seed"].as_u64()), (Some(0.0), Some(40), Some(42)));
    assert_eq!((o["num_predict"].as_u64(), o["num_ctx"].as_u64()), (Some(64), Some(4096)));
    assert!(
        (o["min_p"].as_f64().unwrap() - 0.05).abs() < 1e-6
            && (o["repeat_penalty"].as_f64().unwrap() - 1.1).abs() < 1e-6
    );
    assert_eq!(o["stop"], json!(["\n\n"]));
    assert!(sent.get("format").is_none());

    let mut json_req = chat_request();
    json_req.sampling = Sampling { constraint: Some(Constraint::Json), ..Default::default() };
    collect(&rt, &spec(), json_req.clone()).await.unwrap();
    assert_eq!(seen.last("/api/chat")["format"], "json");
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    json_req.sampling.constraint = Some(Constraint::JsonSchema(schema.clone()));
    collect(&rt, &spec(), json_req.clone()).await.unwrap();
    assert_eq!(seen.last("/api/chat")["format"], schema);
    json_req.sampling.constraint = Some(Constraint::Grammar("root ::= \"x\"".into()));
    assert!(matches!(rt.generate(&spec(), json_req).await.err(), Some(RuntimeError::Unsupported { .. })));
}

#[tokio::test]
async fn generate_raw_length_and_broken_streams() {
    let seen = Seen::default();
    let rt = OllamaAdapter::new("ollama", HttpOptions::new(serve(seen.clone()).await)).unwrap();
    let req = GenerateRequest {
        prompt: Prompt::Text { prompt: "Count:".into(), raw: true },
        sampling: Sampling::default(),
        keep_alive: None,
        ..chat_request()
    };
    let (text, done) = collect(&rt, &spec(), req.clone()).await.unwrap();
    assert_eq!(text, "one two");
    assert!(matches!(
        done,
        Event::Done { finish: FinishReason::Length, usage: Usage { prompt_tokens: 4, completion_tokens: 2 }, .. }
    ));
    let sent = seen.last("/api/generate");
    assert_eq!((sent["raw"].clone(), sent["prompt"].clone()), (json!(true), json!("Count:")));
    assert!(sent.get("keep_alive").is_none());

    let die = GenerateRequest { prompt: Prompt::Text { prompt: "die".into(), raw: false }, ..req };
    let err = collect(&rt, &spec(), die).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn models_load_unload_embed_and_errors() {
    let seen = Seen::default();
    let url = serve(seen.clone()).await;
    let rt = OllamaAdapter::new("ollama", HttpOptions::new(&url)).unwrap();
    assert_eq!(rt.list_models().await.unwrap(), vec!["llama3.2:1b"]);
    assert_eq!(rt.running().await.unwrap(), vec!["llama3.2:1b"]);

    rt.load(&spec()).await.unwrap();
    let sent = seen.last("/api/generate");
    assert!(sent.get("prompt").is_none() && sent["model"] == "llama3.2:1b", "{sent}");
    rt.unload("llama3.2:1b").await.unwrap();
    assert_eq!(seen.last("/api/generate")["keep_alive"], 0);

    let e = rt
        .embed(
            &spec(),
            EmbedRequest { model: "llama3.2:1b".into(), input: vec!["a".into(), "b".into()], normalize: true },
        )
        .await
        .unwrap();
    assert_eq!(e.vectors[0], vec![0.6, 0.8]);
    assert_eq!(e.vectors.len(), 2);
    assert_eq!(e.usage.prompt_tokens, 8);
    assert_eq!(seen.last("/api/embed")["input"], json!(["a", "b"]));

    let unknown = ModelSpec::named("nope:latest");
    assert_eq!(rt.load(&unknown).await, Err(RuntimeError::ModelNotFound { model: "nope:latest".into() }));
    let err = rt.generate(&unknown, chat_request()).await.err().unwrap();
    assert!(matches!(err, RuntimeError::ModelNotFound { .. }), "{err:?}");
    let empty = GenerateRequest { prompt: Prompt::Chat(vec![]), ..chat_request() };
    let err = rt.generate(&spec(), empty).await.err().unwrap();
    assert!(
        matches!(err, RuntimeError::InvalidRequest { ref message } if message.contains("messages are required")),
        "{err:?}"
    );
    assert!(matches!(rt.tokenize(&spec(), "x").await, Err(RuntimeError::Unsupported { .. })));

    // Nothing listens on a closed port: unavailable, unhealthy.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = OllamaAdapter::new("ollama", HttpOptions::new(format!("http://{closed}"))).unwrap();
    assert!(matches!(down.health().await, Health::Unhealthy(_)));
    let err = down.generate(&spec(), chat_request()).await.err().unwrap();
    assert!(matches!(err, RuntimeError::Unavailable { .. }) && err.is_fallback(), "{err:?}");
}
