//! The inference surfaces (OpenAI, Ollama, native runtimes) through the router, without a socket
//! and without a model: request parsing and validation, error mapping and the wire shapes of
//! answers and streams. The runtime side is `Scripted`, an in-process implementation of the
//! `Inference` contract that answers fixed tokens (the real orchestrator and engine are tested
//! end to end in `crates/ondevice/tests/e2e/inference.rs` with a real model).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use ondevice_auth::{Scopes, Verifier};
use ondevice_runtime::{
    BoxFuture, EmbedRequest, Embeddings, Event, FinishReason, GenerateRequest, Generation, Inference, LoadedModel,
    ModelEntry, Prompt, RuntimeError, RuntimeStatus, Usage,
};
use ondevice_server::{AppState, EdgeOptions, NoWorkers};
use ondevice_store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Answers `scripted:latest` with the tokens "Hel" and "lo"; `slow:latest` with a token every
/// 10 ms for ever (and records when its stream is dropped); `busy` is overloaded; everything else
/// is unknown.
struct Scripted {
    dropped: Arc<AtomicBool>,
    last: std::sync::Mutex<Option<GenerateRequest>>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn resolve(model: &str) -> Result<String, RuntimeError> {
    match model {
        "scripted" | "scripted:latest" => Ok("scripted:latest".to_owned()),
        "slow" | "slow:latest" => Ok("slow:latest".to_owned()),
        "busy" => Err(RuntimeError::Overloaded { what: "queue full".into(), retry_after: Duration::from_millis(1500) }),
        other => Err(RuntimeError::ModelNotFound { model: other.to_owned() }),
    }
}

impl Inference for Scripted {
    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, RuntimeError>> {
        Box::pin(async move {
            let model = resolve(&request.model)?;
            *self.last.lock().unwrap() = Some(request);
            let events: ondevice_runtime::EventStream = if model == "slow:latest" {
                let flag = DropFlag(self.dropped.clone());
                Box::pin(futures_util::stream::unfold(flag, |flag| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((Ok(Event::Token("x".into())), flag))
                }))
            } else {
                let done = Event::Done {
                    finish: FinishReason::Stop,
                    usage: Usage { prompt_tokens: 3, completion_tokens: 2 },
                    timings: None,
                };
                Box::pin(futures_util::stream::iter([
                    Ok(Event::Token("Hel".into())),
                    Ok(Event::Token("lo".into())),
                    Ok(done),
                ]))
            };
            Ok(Generation { adapter: "scripted".to_owned(), model, events })
        })
    }

    fn embed(&self, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        Box::pin(async move {
            resolve(&request.model)?;
            Ok(Embeddings {
                vectors: request.input.iter().map(|_| vec![1.0, 0.5]).collect(),
                usage: Usage { prompt_tokens: 4, completion_tokens: 0 },
                adapter: "scripted".to_owned(),
            })
        })
    }

    fn tokenize(&self, _model: &str, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let n = text.len() as u32;
        Box::pin(async move { Ok((0..n).collect()) })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelEntry>, RuntimeError>> {
        Box::pin(async {
            Ok(vec![ModelEntry {
                name: "scripted:latest".into(),
                digest: Some(format!("sha256:{}", "ab".repeat(32))),
                size_bytes: Some(1234),
                created: Some(1_700_000_000),
                family: Some("llama".into()),
                quantization: Some("Q4_1".into()),
                parameters: Some(134_515_008),
                runtimes: vec!["scripted".into()],
            }])
        })
    }

    fn loaded(&self) -> BoxFuture<'_, Vec<LoadedModel>> {
        Box::pin(async {
            vec![LoadedModel {
                name: "scripted:latest".into(),
                runtime: "scripted".into(),
                size_bytes: 1234,
                last_used: 1_700_000_000,
                expires_at: None,
            }]
        })
    }

    fn runtimes(&self) -> BoxFuture<'_, Vec<RuntimeStatus>> {
        Box::pin(async { Vec::new() })
    }

    fn load(&self, model: &str) -> BoxFuture<'_, Result<LoadedModel, RuntimeError>> {
        let r = resolve(model);
        Box::pin(async move {
            Ok(LoadedModel { name: r?, runtime: "scripted".into(), size_bytes: 1, last_used: 0, expires_at: None })
        })
    }

    fn unload(&self, model: &str) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        let r = resolve(model);
        Box::pin(async move { r.map(|_| true) })
    }

    fn degraded(&self) -> Option<String> {
        None
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
    infer: String,
    read: String,
    scripted: Arc<Scripted>,
}

async fn fixture(with_inference: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("ondevice.db")).unwrap());
    let verifier = Arc::new(Verifier::new(store.clone(), true).unwrap());
    let (_, infer) = verifier.create_key(Some("infer"), Scopes::from_list("infer").unwrap()).unwrap();
    let (_, read) = verifier.create_key(Some("reader"), Scopes::from_list("read").unwrap()).unwrap();
    let registry = Arc::new(ondevice_registry::Registry::new(store.clone(), dir.path()).unwrap());
    let models = Arc::new(ondevice_registry::RegistryModels::new(registry));
    let opts = EdgeOptions {
        listen: "127.0.0.1:7733".parse().unwrap(),
        allowed_hosts: vec![],
        cors_origins: vec![],
        body_limit: 64 * 1024,
        max_concurrent_requests: 8,
        tls: false,
        ui: Default::default(),
    };
    let scripted = Arc::new(Scripted { dropped: Arc::new(AtomicBool::new(false)), last: Default::default() });
    let mut services = ondevice_server::Services::new(verifier, models, Arc::new(NoWorkers));
    if with_inference {
        services.inference = Some(scripted.clone());
    }
    let state = AppState::new(services, opts, CancellationToken::new());
    let (app, _health) = ondevice_server::router(state).await;
    Fixture { _dir: dir, app, infer, read, scripted }
}

fn post(path: &str, key: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

/// Status, headers and the raw body text.
async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn send_json(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let (s, h, text) = send(app, req).await;
    (s, h, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const CHAT: &str = r#"{"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}"#;

#[tokio::test]
async fn without_runtimes_inference_answers_503() {
    let f = fixture(false).await;
    for (path, body) in [
        ("/v1/chat/completions", CHAT),
        ("/api/chat", CHAT),
        ("/v1/embeddings", r#"{"model": "m", "input": "x"}"#),
        ("/api/v1/runtimes/load", r#"{"model": "m"}"#),
    ] {
        let key = if path.contains("runtimes") { &f.read } else { &f.infer };
        let (s, _, body) = send_json(&f.app, post(path, key, body)).await;
        if path.contains("runtimes") {
            assert_eq!(s, StatusCode::FORBIDDEN, "load needs the models scope: {body}");
            continue;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "runtime_unavailable", "{path}: {body}");
    }
    let (s, _, body) = send_json(&f.app, get("/v1/models", &f.read)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("runtime_unavailable")));
}

#[tokio::test]
async fn bad_requests_get_400_unknown_models_404_and_overload_503() {
    let f = fixture(true).await;
    for (path, body) in [
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", r#"{"messages": []}"#),
        ("/v1/chat/completions", r#"{"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]}"#),
        ("/v1/chat/completions", r#"{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "n": 3}"#),
        ("/v1/completions", r#"{"model": "scripted", "prompt": ["a", "b"]}"#),
        ("/v1/embeddings", r#"{"model": "scripted", "input": "x", "encoding_format": "hex"}"#),
        ("/api/chat", r#"{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "format": 7}"#),
        ("/api/generate", r#"{"model": "scripted", "prompt": "x", "keep_alive": "soon"}"#),
        ("/api/generate", r#"{"model": "scripted", "prompt": "x", "options": {"temperature": -2}}"#),
    ] {
        let (s, _, resp) = send_json(&f.app, post(path, &f.infer, body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_request", "{resp}");
        assert!(resp["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{resp}");
    }
    let missing = r#"{"model": "nope:1", "messages": [{"role": "user", "content": "x"}]}"#;
    for path in ["/v1/chat/completions", "/api/chat"] {
        let (s, _, resp) = send_json(&f.app, post(path, &f.infer, missing)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {resp}");
        assert_eq!(resp["error"]["code"], "model_not_found");
        assert!(resp["error"]["message"].as_str().unwrap().contains("ondevice models list"), "{resp}");
    }
    let busy = r#"{"model": "busy", "messages": [{"role": "user", "content": "x"}]}"#;
    let (s, h, resp) = send_json(&f.app, post("/v1/chat/completions", &f.infer, busy)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{resp}");
    assert_eq!(resp["error"]["code"], "overloaded");
    assert_eq!(h.get(header::RETRY_AFTER).unwrap(), "2", "1.5 s rounds up");
    // Generation needs the infer scope, listings only read.
    let (s, _, _) = send_json(&f.app, post("/v1/chat/completions", &f.read, CHAT)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn openai_chat_answers_and_streams() {
    let f = fixture(true).await;
    let body = r#"{"model": "scripted", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "temperature": 0, "max_tokens": 9, "stop": ["\n"], "seed": 7, "presence_penalty": 0.5,
        "response_format": {"type": "json_object"}}"#;
    let (s, h, v) = send_json(&f.app, post("/v1/chat/completions", &f.infer, body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h.get("x-ondevice-adapter").unwrap(), "scripted");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "scripted:latest");
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": "Hello"}));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}));
    let sent = f.scripted.last.lock().unwrap().clone().unwrap();
    assert_eq!(sent.sampling.temperature, Some(0.0));
    assert_eq!(sent.sampling.max_tokens, Some(9));
    assert_eq!(sent.sampling.constraint, Some(ondevice_runtime::Constraint::Json));
    assert!(matches!(sent.prompt, Prompt::Chat(ref m) if m.len() == 2));

    let body = r#"{"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": true,
        "stream_options": {"include_usage": true}}"#;
    let (s, h, text) = send(&f.app, post("/v1/chat/completions", &f.infer, body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "text/event-stream");
    assert_eq!(h.get("x-ondevice-adapter").unwrap(), "scripted");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "{text}");
    assert_eq!(*events.last().unwrap(), "data: [DONE]", "{text}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(&e[6..]).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{text}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"), "{text}");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, "Hello");
    let finish: Vec<&Value> = chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).collect();
    assert_eq!(finish.len(), 1, "{text}");
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{text}");
    assert_eq!(usage["usage"]["total_tokens"], 5);
}

#[tokio::test]
async fn openai_completions_and_embeddings() {
    let f = fixture(true).await;
    let (s, _, v) =
        send_json(&f.app, post("/v1/completions", &f.infer, r#"{"model": "scripted", "prompt": "Once"}"#)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!((v["object"].as_str(), v["choices"][0]["text"].as_str()), (Some("text_completion"), Some("Hello")));
    let sent = f.scripted.last.lock().unwrap().clone().unwrap();
    assert_eq!(sent.prompt, Prompt::Text { prompt: "Once".into(), raw: true }, "completions are raw");

    let (_, _, text) =
        send(&f.app, post("/v1/completions", &f.infer, r#"{"model": "scripted", "prompt": ["Once"], "stream": true}"#))
            .await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("\"text_completion\"").count(), 3, "two tokens and the finish event: {text}");

    let (s, h, v) =
        send_json(&f.app, post("/v1/embeddings", &f.infer, r#"{"model": "scripted", "input": ["a", "b"]}"#)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h.get("x-ondevice-adapter").unwrap(), "scripted");
    assert_eq!(v["data"][1], json!({"object": "embedding", "index": 1, "embedding": [1.0, 0.5]}));
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    let body = r#"{"model": "scripted", "input": "a", "encoding_format": "base64"}"#;
    let (_, _, v) = send_json(&f.app, post("/v1/embeddings", &f.infer, body)).await;
    // 1.0f32 = 00 00 80 3f, 0.5f32 = 00 00 00 3f (little-endian).
    assert_eq!(v["data"][0]["embedding"], "AACAPwAAAD8=", "{v}");

    let (s, _, v) = send_json(&f.app, get("/v1/models", &f.read)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["data"][0],
        json!({"id": "scripted:latest", "object": "model", "created": 1_700_000_000, "owned_by": "ondevice"})
    );
}

#[tokio::test]
async fn ollama_streams_ndjson_by_default() {
    let f = fixture(true).await;
    let body = r#"{"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 5, "top_k": 3}}"#;
    let (s, h, text) = send(&f.app, post("/api/chat", &f.infer, body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "application/x-ndjson");
    assert_eq!(h.get("x-ondevice-adapter").unwrap(), "scripted");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["message"], json!({"role": "assistant", "content": "Hel"}));
    assert_eq!(lines[0]["done"], false);
    let last = &lines[2];
    assert_eq!((last["done"].as_bool(), last["done_reason"].as_str()), (Some(true), Some("stop")), "{last}");
    assert_eq!((last["prompt_eval_count"].as_u64(), last["eval_count"].as_u64()), (Some(3), Some(2)));
    for field in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(last[field].is_u64(), "{field} in {last}");
    }
    assert!(last["created_at"].as_str().unwrap().ends_with('Z'));
    let sent = f.scripted.last.lock().unwrap().clone().unwrap();
    assert_eq!((sent.sampling.max_tokens, sent.sampling.top_k), (Some(5), Some(3)));

    let body = r#"{"model": "scripted", "prompt": "hi", "system": "be brief", "stream": false, "keep_alive": "10m"}"#;
    let (s, _, v) = send_json(&f.app, post("/api/generate", &f.infer, body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["response"].as_str(), v["done"].as_bool()), (Some("Hello"), Some(true)), "{v}");
    let sent = f.scripted.last.lock().unwrap().clone().unwrap();
    assert_eq!(sent.keep_alive, Some(Duration::from_secs(600)));
    assert!(matches!(sent.prompt, Prompt::Chat(ref m) if m.len() == 2), "system makes it a chat");

    // No prompt: a load request; with keep_alive 0, an unload.
    let (_, _, v) = send_json(&f.app, post("/api/generate", &f.infer, r#"{"model": "scripted"}"#)).await;
    assert_eq!((v["done"].as_bool(), v["done_reason"].as_str()), (Some(true), Some("load")), "{v}");
    let (_, _, v) =
        send_json(&f.app, post("/api/generate", &f.infer, r#"{"model": "scripted", "keep_alive": 0}"#)).await;
    assert_eq!(v["done_reason"], "unload", "{v}");

    // `curl -d` sends a form content type; the body is JSON all the same.
    let req = Request::post("/api/generate")
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.infer))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(r#"{"model": "scripted", "prompt": "hi", "stream": false}"#))
        .unwrap();
    let (s, _, v) = send_json(&f.app, req).await;
    assert_eq!((s, v["response"].as_str()), (StatusCode::OK, Some("Hello")), "{v}");

    let (_, _, v) = send_json(&f.app, post("/api/embed", &f.infer, r#"{"model": "scripted", "input": "a"}"#)).await;
    assert_eq!(v["embeddings"], json!([[1.0, 0.5]]), "{v}");
    let (_, _, v) =
        send_json(&f.app, post("/api/embeddings", &f.infer, r#"{"model": "scripted", "prompt": "a"}"#)).await;
    assert_eq!(v["embedding"], json!([1.0, 0.5]), "{v}");

    let (_, _, v) = send_json(&f.app, get("/api/tags", &f.read)).await;
    let m = &v["models"][0];
    assert_eq!((m["name"].as_str(), m["digest"].as_str().map(str::len)), (Some("scripted:latest"), Some(64)), "{v}");
    assert_eq!(m["details"]["parameter_size"], "135M");
    assert_eq!(m["details"]["quantization_level"], "Q4_1");
    let (_, _, v) = send_json(&f.app, get("/api/ps", &f.read)).await;
    assert_eq!(v["models"][0]["name"], "scripted:latest", "{v}");
    assert_eq!(v["models"][0]["runtime"], "scripted", "{v}");
}

#[tokio::test]
async fn a_client_that_goes_away_drops_the_generation() {
    let f = fixture(true).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            r#"{"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": true}"#,
        ),
        ("/api/generate", r#"{"model": "slow", "prompt": "x"}"#),
    ] {
        f.scripted.dropped.store(false, Ordering::SeqCst);
        let resp = f.app.clone().oneshot(post(path, &f.infer, body)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        for _ in 0..3 {
            body.next().await.unwrap().unwrap();
        }
        assert!(!f.scripted.dropped.load(Ordering::SeqCst), "{path}: still generating while read");
        drop(body);
        assert!(f.scripted.dropped.load(Ordering::SeqCst), "{path}: the stream outlived its client");
    }
}

#[tokio::test]
async fn runtimes_load_and_unload() {
    let f = fixture(true).await;
    let (s, _, v) = send_json(&f.app, get("/api/v1/runtimes", &f.read)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["loaded"][0]["model"], "scripted:latest", "{v}");
    // Loading needs the models scope.
    let (s, _, _) = send_json(&f.app, post("/api/v1/runtimes/load", &f.infer, r#"{"model": "scripted"}"#)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// A daemon without a prompt library or vector store answers requests naming a prompt pack or a
/// collection with 503 (before any generation starts); a raw text request is not affected.
#[tokio::test]
async fn prompt_packs_and_collections_without_their_services_answer_503() {
    let f = fixture(true).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            r#"{"model": "scripted", "prompt_pack": {"name": "summarize", "variables": {"text": "t"}}}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "collection": {"name": "docs"}}"#,
        ),
        ("/api/chat", r#"{"model": "scripted", "prompt_pack": {"name": "summarize"}, "stream": false}"#),
        (
            "/api/chat",
            r#"{"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "collection": {"name": "docs"}}"#,
        ),
    ] {
        let (s, _, v) = send_json(&f.app, post(path, &f.infer, body)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path} {body}: {v}");
    }
    // Malformed extension fields are refused with 400, before any service is asked.
    for body in [
        r#"{"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "collection": {"name": "docs", "k": 3}}"#,
        r#"{"model": "scripted", "messages": [], "collection": {"name": "docs"}}"#,
        r#"{"model": "scripted", "prompt_pack": "summarize"}"#,
    ] {
        let (s, _, v) = send_json(&f.app, post("/v1/chat/completions", &f.infer, body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
}
