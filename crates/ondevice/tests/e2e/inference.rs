//! Inference through the real daemon with the real SmolLM2 model
//! (`$ONDEVICE_TEST_MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf`, imported with `ondevice models
//! import`): greedy chat on every surface (OpenAI JSON and SSE, Ollama NDJSON, WebSocket, gRPC)
//! gives the same text, the real `openai` and `ollama` Python clients work with a key, concurrent
//! and abandoned requests, `ondevice run`, a worker killed mid-stream, and the auth checks.
//! Without `$ONDEVICE_TEST_MODELS_DIR` each test prints a note and returns; with it set, a missing
//! model fails the test.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use ondevice_proto::v1 as pb;
use ondevice_proto::v1::inference_service_client::InferenceServiceClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use crate::common::{Daemon, Home, Key, WsEvent, describe, python, test_model, ws_connect, ws_next, ws_send};

const SYSTEM: &str = "You are a helpful assistant.";
const QUESTION: &str = "What is the capital of France?";
/// Enough tokens for the answer to name Paris, few enough to stay quick.
const MAX_TOKENS: u32 = 40;
const WAIT: Duration = Duration::from_secs(120);

/// A daemon with the test model imported as `smollm2:latest` and an infer key.
struct Setup {
    daemon: Daemon,
    infer: Key,
}

async fn setup(test: &str) -> Option<Setup> {
    let file = test_model(test)?;
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run(&["models", "import", file.to_str().expect("utf-8 path"), "--name", "smollm2"]);
    assert!(out.status.success(), "import: {}", describe(&out));
    let infer = daemon.key(&["infer"]).await;
    Some(Setup { daemon, infer })
}

fn messages() -> Value {
    json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
}

async fn post(daemon: &Daemon, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    daemon
        .request(Method::POST, path, key)
        .timeout(WAIT)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// `data:` payloads of an SSE body.
fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

/// Greedy chat over OpenAI JSON: the text and the adapter header.
async fn openai_chat(daemon: &Daemon, key: &str) -> (String, String) {
    let body = json!({"model": "smollm2", "messages": messages(), "temperature": 0, "max_tokens": MAX_TOKENS});
    let resp = post(daemon, "/v1/chat/completions", Some(key), &body).await;
    let adapter = resp.headers().get("x-ondevice-adapter").map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status();
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    (v["choices"][0]["message"]["content"].as_str().expect("content").to_owned(), adapter.expect("adapter header"))
}

async fn openai_stream(daemon: &Daemon, key: &str) -> String {
    let body = json!({"model": "smollm2", "messages": messages(), "temperature": 0, "max_tokens": MAX_TOKENS,
        "stream": true, "stream_options": {"include_usage": true}});
    let resp = post(daemon, "/v1/chat/completions", Some(key), &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-ondevice-adapter").is_some());
    let events = sse_events(&resp.text().await.expect("SSE body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("chunk")).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{chunks:?}");
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

async fn ollama_stream(daemon: &Daemon, key: &str) -> String {
    let body = json!({"model": "smollm2", "messages": messages(),
        "options": {"temperature": 0, "num_predict": MAX_TOKENS}});
    let resp = post(daemon, "/api/chat", Some(key), &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("NDJSON body");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("NDJSON line")).collect();
    let last = lines.last().expect("lines");
    assert_eq!(last["done"], true, "{last}");
    assert!(last["eval_count"].as_u64().unwrap() > 0 && last["total_duration"].as_u64().unwrap() > 0, "{last}");
    lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect()
}

async fn ws_generate(daemon: &Daemon, key: &str) -> (String, Value) {
    let (mut ws, _) = ws_connect(daemon, &[("authorization", format!("Bearer {key}"))]).await.expect("handshake");
    ws_send(
        &mut ws,
        json!({"type": "generate", "id": "g1", "model": "smollm2", "messages": messages(),
        "options": {"temperature": 0, "max_tokens": MAX_TOKENS}}),
    )
    .await;
    let mut text = String::new();
    loop {
        let msg = ws_next(&mut ws, WAIT).await.json();
        match msg["type"].as_str() {
            Some("token") => {
                assert_eq!(msg["id"], "g1");
                text.push_str(msg["text"].as_str().expect("text"));
            }
            Some("done") => return (text, msg),
            Some("hello" | "event") => {}
            _ => panic!("unexpected message {msg}"),
        }
    }
}

/// Sends `authorization: Bearer KEY` with every gRPC call.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Grpc = InferenceServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

async fn grpc_client(daemon: &Daemon, key: &str) -> Grpc {
    let channel = tonic::transport::Endpoint::from_shared(daemon.url(""))
        .expect("endpoint")
        .connect()
        .await
        .expect("gRPC connect");
    InferenceServiceClient::with_interceptor(channel, Bearer(format!("Bearer {key}").parse().expect("metadata")))
}

fn grpc_chat_request() -> pb::ChatRequest {
    pb::ChatRequest {
        model: "smollm2".into(),
        messages: vec![
            pb::ChatMessage { role: "system".into(), content: SYSTEM.into() },
            pb::ChatMessage { role: "user".into(), content: QUESTION.into() },
        ],
        options: Some(pb::SamplingOptions {
            temperature: Some(0.0),
            max_tokens: Some(MAX_TOKENS),
            ..Default::default()
        }),
        keep_alive_seconds: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_chat_names_paris_on_every_surface() {
    let Some(Setup { daemon, infer }) = setup("greedy_chat_names_paris_on_every_surface").await else { return };
    let key = infer.secret.as_str();
    let (text, adapter) = openai_chat(&daemon, key).await;
    assert!(text.contains("Paris"), "{text}");
    assert!(!adapter.is_empty());
    // The request recorded the model's use time (least-recently-used eviction reads it).
    let (status, m) = daemon.get("/api/v1/models/smollm2", Some(daemon.admin_key())).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{m}");
    assert!(m["last_used_at"].as_i64().is_some_and(|t| t >= m["created_at"].as_i64().unwrap()), "{m}");

    assert_eq!(openai_stream(&daemon, key).await, text, "SSE");
    assert_eq!(ollama_stream(&daemon, key).await, text, "NDJSON");
    let (ws_text, done) = ws_generate(&daemon, key).await;
    assert_eq!(ws_text, text, "WebSocket");
    assert_eq!(done["adapter"], adapter.as_str(), "{done}");
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{done}");

    let mut client = grpc_client(&daemon, key).await;
    let resp = client.chat(grpc_chat_request()).await.expect("gRPC Chat");
    assert_eq!(resp.metadata().get("x-ondevice-adapter").and_then(|v| v.to_str().ok()), Some(adapter.as_str()));
    let mut stream = resp.into_inner();
    let (mut grpc_text, mut last) = (String::new(), None);
    while let Some(msg) = stream.message().await.expect("gRPC stream") {
        grpc_text.push_str(&msg.text);
        last = Some(msg);
    }
    assert_eq!(grpc_text, text, "gRPC");
    let last = last.expect("messages");
    assert!(!last.finish_reason.is_empty() && last.adapter == adapter, "{last:?}");

    // Embeddings on both HTTP surfaces and gRPC.
    let resp = post(&daemon, "/v1/embeddings", Some(key), &json!({"model": "smollm2", "input": ["a", "b"]})).await;
    let v: Value = resp.json().await.expect("JSON");
    let dims = v["data"][0]["embedding"].as_array().map_or(0, Vec::len);
    assert!(dims > 0 && v["data"][1]["index"] == 1, "{v}");
    let resp = post(&daemon, "/api/embed", Some(key), &json!({"model": "smollm2", "input": "a"})).await;
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(v["embeddings"][0].as_array().map_or(0, Vec::len), dims, "{v}");
    let e = client
        .embed(pb::EmbedRequest { model: "smollm2".into(), input: vec!["a".into()], normalize: true })
        .await
        .expect("gRPC Embed")
        .into_inner();
    assert_eq!(e.embeddings[0].values.len(), dims);

    // Listings.
    let (_, models) = daemon.get("/v1/models", Some(key)).await;
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "smollm2:latest"), "{models}");
    let (_, ps) = daemon.get("/api/ps", Some(key)).await;
    assert!(ps["models"].as_array().unwrap().iter().any(|m| m["name"] == "smollm2:latest"), "{ps}");
    let (status, runtimes) = daemon.get("/api/v1/runtimes", Some(key)).await;
    assert_eq!(status, StatusCode::OK, "{runtimes}");
    assert!(runtimes["loaded"].as_array().unwrap().iter().any(|m| m["model"] == "smollm2:latest"), "{runtimes}");
}

const OPENAI_SCRIPT: &str = r#"
import json, os, openai
c = openai.OpenAI(base_url=os.environ["BASE"] + "/v1", api_key=os.environ["ONDEVICE_TEST_KEY"], max_retries=0)
msgs = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]
r = c.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=40)
parts, usage = [], None
for ch in c.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=40, stream=True,
                                    stream_options={"include_usage": True}):
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
    if ch.usage:
        usage = ch.usage.total_tokens
e = c.embeddings.create(model="smollm2", input=["hello", "world"])
models = [m.id for m in c.models.list().data]
try:
    c.chat.completions.create(model="no-such-model", messages=msgs)
    error = None
except openai.NotFoundError as ex:
    error = str(ex)
bad = openai.OpenAI(base_url=os.environ["BASE"] + "/v1", api_key="not-a-key", max_retries=0)
try:
    bad.models.list()
    unauth = None
except openai.AuthenticationError as ex:
    unauth = ex.status_code
print(json.dumps({"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                  "total": r.usage.total_tokens, "stream": "".join(parts), "usage": usage,
                  "dims": [len(d.embedding) for d in e.data], "models": models, "error": error, "unauth": unauth}))
"#;

const OLLAMA_SCRIPT: &str = r#"
import json, os, ollama
c = ollama.Client(host=os.environ["BASE"], headers={"Authorization": "Bearer " + os.environ["ONDEVICE_TEST_KEY"]})
msgs = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]
opts = {"temperature": 0, "num_predict": 40}
r = c.chat(model="smollm2", messages=msgs, options=opts)
parts = [p.message.content for p in c.chat(model="smollm2", messages=msgs, options=opts, stream=True)]
g = c.generate(model="smollm2", prompt="What is the capital of France?", system="You are a helpful assistant.",
               options=opts)
e = c.embed(model="smollm2", input=["hello", "world"])
print(json.dumps({"text": r.message.content, "done_reason": r.done_reason, "eval_count": r.eval_count,
                  "stream": "".join(parts), "generate": g.response,
                  "dims": [len(v) for v in e.embeddings], "models": [m.model for m in c.list().models],
                  "ps": [m.model for m in c.ps().models]}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_and_ollama_python_clients_work() {
    let Some(Setup { daemon, infer }) = setup("the_openai_and_ollama_python_clients_work").await else { return };
    let v = tokio::task::block_in_place(|| python(&daemon, &infer.secret, &[], OPENAI_SCRIPT));
    let text = v["text"].as_str().expect("text");
    assert!(text.contains("Paris"), "{v}");
    assert_eq!(v["stream"], text, "streamed text equals the answer: {v}");
    assert!(v["total"].as_u64().unwrap() > 0 && v["usage"] == v["total"], "{v}");
    let dims = v["dims"].as_array().expect("dims");
    assert!(dims.len() == 2 && dims[0].as_u64().unwrap() > 0, "{v}");
    assert!(v["models"].as_array().unwrap().iter().any(|m| m == "smollm2:latest"), "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("no-such-model")), "{v}");
    assert_eq!(v["unauth"], 401, "{v}");

    let v = tokio::task::block_in_place(|| python(&daemon, &infer.secret, &[], OLLAMA_SCRIPT));
    assert_eq!(v["text"], text, "same greedy answer as OpenAI: {v}");
    assert_eq!(v["stream"], text, "{v}");
    assert!(v["generate"].as_str().is_some_and(|g| g.contains("Paris")), "{v}");
    assert!(v["eval_count"].as_u64().unwrap() > 0 && v["done_reason"].is_string(), "{v}");
    assert_eq!(v["dims"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["models"].as_array().unwrap().iter().any(|m| m == "smollm2:latest"), "{v}");
    assert!(v["ps"].as_array().unwrap().iter().any(|m| m == "smollm2:latest"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_and_abandoned_requests() {
    let Some(Setup { daemon, infer }) = setup("concurrent_and_abandoned_requests").await else { return };
    let key = infer.secret.as_str();
    let (a, b) = tokio::join!(openai_chat(&daemon, key), openai_chat(&daemon, key));
    assert!(a.0.contains("Paris") && b.0.contains("Paris"), "{a:?} {b:?}");

    // Clients that go away mid-stream, more of them than the engine has slots: each must free
    // its slot, or the request after them waits behind generations nobody reads.
    let long = json!({"model": "smollm2", "stream": true, "max_tokens": 1500, "temperature": 0.8,
        "messages": [{"role": "user", "content": "Count from one to one thousand in words."}]});
    for _ in 0..8 {
        let resp = post(&daemon, "/v1/chat/completions", Some(key), &long).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.bytes_stream();
        for _ in 0..3 {
            body.next().await.expect("a chunk").expect("chunk bytes");
        }
    }
    let quick = json!({"model": "smollm2", "messages": messages(), "temperature": 0, "max_tokens": 8});
    let resp = daemon
        .request(Method::POST, "/v1/chat/completions", Some(key))
        .timeout(Duration::from_secs(30))
        .json(&quick)
        .send()
        .await
        .expect("a request after abandoned streams is served promptly");
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_runs_and_cancels_several_generations() {
    let Some(Setup { daemon, infer }) = setup("websocket_runs_and_cancels_several_generations").await else { return };
    let (mut ws, _) =
        ws_connect(&daemon, &[("authorization", format!("Bearer {}", infer.secret))]).await.expect("handshake");
    let long = json!([{"role": "user", "content": "Count from one to one thousand in words."}]);
    ws_send(
        &mut ws,
        json!({"type": "generate", "id": "long", "model": "smollm2", "messages": long,
        "options": {"max_tokens": 1500}}),
    )
    .await;
    ws_send(
        &mut ws,
        json!({"type": "generate", "id": "short", "model": "smollm2", "messages": messages(),
        "options": {"temperature": 0, "max_tokens": MAX_TOKENS}}),
    )
    .await;
    let (mut long_tokens, mut short_done, mut long_done) = (0, false, None);
    while !(short_done && long_done.is_some()) {
        let msg = ws_next(&mut ws, WAIT).await.json();
        match (msg["type"].as_str(), msg["id"].as_str()) {
            (Some("token"), Some("long")) => {
                long_tokens += 1;
                if long_tokens == 3 {
                    ws_send(&mut ws, json!({"type": "cancel", "id": "long"})).await;
                }
            }
            (Some("done"), Some("short")) => short_done = true,
            (Some("done"), Some("long")) => long_done = Some(msg),
            (Some("token"), Some("short") | None) | (Some("hello" | "event"), _) => {}
            _ => panic!("unexpected message {msg}"),
        }
    }
    assert_eq!(long_done.unwrap()["finish_reason"], "cancelled");
    // A read key may watch but not generate.
    let read = daemon.key(&["read"]).await;
    let (mut ws, _) = ws_connect(&daemon, &[("authorization", format!("Bearer {}", read.secret))]).await.expect("ws");
    ws_send(&mut ws, json!({"type": "generate", "id": "x", "model": "smollm2", "prompt": "hi"})).await;
    loop {
        match ws_next(&mut ws, WAIT).await {
            WsEvent::Json(m) if m["type"] == "error" => {
                assert_eq!((m["id"].as_str(), m["error"]["code"].as_str()), (Some("x"), Some("permission_denied")));
                break;
            }
            WsEvent::Json(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ondevice_run_prints_the_answer() {
    let Some(Setup { daemon, .. }) = setup("ondevice_run_prints_the_answer").await else { return };
    let home = daemon.home();
    let out = tokio::task::block_in_place(|| {
        home.run(&["run", "smollm2", QUESTION, "--system", SYSTEM, "--temperature", "0", "--max-tokens", "40", "-v"])
    });
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"), "verbose stats: {}", describe(&out));

    let out = tokio::task::block_in_place(|| {
        home.run(&[
            "run",
            "smollm2",
            QUESTION,
            "--system",
            SYSTEM,
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "--json",
        ])
    });
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert!(v["response"].as_str().is_some_and(|r| r.contains("Paris")), "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0 && v["adapter"].is_string(), "{v}");

    // The prompt from a pipe.
    let mut cmd = home.command(&["run", "smollm2", "--temperature", "0", "--max-tokens", "40", "--system", SYSTEM]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ondevice run");
    child.stdin.take().expect("stdin").write_all(QUESTION.as_bytes()).expect("write prompt");
    let out = tokio::task::block_in_place(|| child.wait_with_output()).expect("ondevice run");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Paris"), "{}", describe(&out));

    let out = tokio::task::block_in_place(|| home.run(&["run", "no-such-model", "hi"]));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ondevice models list"), "{}", describe(&out));
}

/// Process ids of this daemon's engine workers (`ondevice worker --socket HOME/...`), from /proc.
#[cfg(target_os = "linux")]
fn worker_pids(home: &Home) -> Vec<i32> {
    let marker = home.dir().to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.get(1).map(String::as_str) == Some("worker") && args.iter().any(|a| a.starts_with(&marker)) {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_gives_a_clean_error_and_the_next_request_succeeds() {
    let Some(Setup { daemon, infer }) = setup("a_worker_killed_mid_stream").await else { return };
    let key = infer.secret.as_str();
    let long = json!({"model": "smollm2", "stream": true, "max_tokens": 1500,
        "messages": [{"role": "user", "content": "Count from one to one thousand in words."}]});
    let resp = post(&daemon, "/v1/chat/completions", Some(key), &long).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    for _ in 0..3 {
        text.push_str(&String::from_utf8_lossy(&body.next().await.expect("chunk").expect("bytes")));
    }
    let pids = worker_pids(daemon.home());
    assert!(!pids.is_empty(), "no engine worker found for {}", daemon.home().dir().display());
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let rest = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => panic!("the stream broke instead of ending with an error event: {e}"),
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream did not end after the worker died");
    let last = sse_events(&text).pop().expect("events");
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "last event {last}");

    let (answer, _) = openai_chat(&daemon, key).await;
    assert!(answer.contains("Paris"), "{answer}");
}

/// The engine worker of a daemon killed with SIGKILL dies with it (`PR_SET_PDEATHSIG`, see
/// `ondevice-supervisor/src/process.rs`): no model stays loaded in an orphan process.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn engine_workers_die_with_a_killed_daemon() {
    let Some(Setup { daemon, infer }) = setup("engine_workers_die_with_a_killed_daemon").await else { return };
    let body = json!({"model": "smollm2", "messages": messages(), "max_tokens": 1});
    assert_eq!(post(&daemon, "/v1/chat/completions", Some(&infer.secret), &body).await.status(), StatusCode::OK);
    let pids = worker_pids(daemon.home());
    assert!(!pids.is_empty(), "no engine worker found for {}", daemon.home().dir().display());
    let _home = daemon.kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let running = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])))
    };
    while pids.iter().any(running) {
        assert!(std::time::Instant::now() < deadline, "engine workers {pids:?} outlived the killed daemon");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inference_needs_a_valid_key_with_the_infer_scope() {
    let Some(Setup { daemon, .. }) = setup("inference_needs_a_valid_key_with_the_infer_scope").await else { return };
    let body = json!({"model": "smollm2", "messages": messages(), "max_tokens": 4});
    let read = daemon.key(&["read"]).await;
    for (key, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(crate::common::UNKNOWN_KEY), StatusCode::UNAUTHORIZED),
        (Some(read.secret.as_str()), StatusCode::FORBIDDEN),
    ] {
        for path in ["/v1/chat/completions", "/api/chat", "/api/generate"] {
            assert_eq!(post(&daemon, path, key, &body).await.status(), want, "{path} with {key:?}");
        }
    }
    let mut client = grpc_client(&daemon, &read.secret).await;
    let err = client.chat(grpc_chat_request()).await.expect_err("read key on gRPC Chat");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn constrained_output_follows_its_schema_and_early_failures_get_a_status() {
    let Some(Setup { daemon, infer }) =
        setup("constrained_output_follows_its_schema_and_early_failures_get_a_status").await
    else {
        return;
    };
    let key = Some(infer.secret.as_str());

    // A JSON schema constrains the answer (sampled, not greedy, so the grammar has to reject picks).
    let schema = json!({"type": "object", "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
        "required": ["country", "capital"], "additionalProperties": false});
    let body = json!({"model": "smollm2", "messages": messages(), "temperature": 1.0, "seed": 7, "max_tokens": 60,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}});
    let resp = post(&daemon, "/v1/chat/completions", key, &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().expect("content");
    let answer: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
    // The fields come in the schema's order (the schema's property order survives to the grammar).
    let fields: Vec<&String> = answer.as_object().expect("an object").keys().collect();
    assert_eq!(fields, ["country", "capital"], "{answer}");
    assert!(answer["capital"].is_string() && answer["country"].is_string(), "{answer}");

    // A prompt longer than the context fails before any token: a 400 with the JSON error, on the
    // streaming and non-streaming forms of both APIs, not an error line inside a 200 stream.
    let long = "hello ".repeat(6000);
    let too_long = json!([{"role": "user", "content": long}]);
    for (path, body) in [
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": too_long, "max_tokens": 4})),
        ("/v1/chat/completions", json!({"model": "smollm2", "messages": too_long, "max_tokens": 4, "stream": true})),
        ("/api/chat", json!({"model": "smollm2", "messages": too_long, "stream": false})),
        ("/api/chat", json!({"model": "smollm2", "messages": too_long})),
    ] {
        let resp = post(&daemon, path, key, &body).await;
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} stream={}: {text}", body["stream"]);
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(err["error"]["code"], "invalid_request", "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("context"), "{err}");
    }
    // gRPC says INVALID_ARGUMENT before any message.
    let mut client = grpc_client(&daemon, &infer.secret).await;
    let mut request = grpc_chat_request();
    request.messages[1].content = long;
    let err = client.chat(request).await.expect_err("an over-long prompt");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // The daemon is fine afterwards.
    let (text, _) = openai_chat(&daemon, &infer.secret).await;
    assert!(text.contains("Paris"), "{text}");
}

/// Drives `ondevice run MODEL` in a pseudo-terminal (Python's `pty`): the interactive chat.
const PTY_CHAT: &str = r#"
import json, os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out, pos = b"", 0  # everything read; where the next search starts
def until(token, timeout=120):
    global out, pos
    deadline = time.time() + timeout
    while token not in out[pos:]:
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {token!r}; output so far:\n{out.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                raise SystemExit(f"terminal closed waiting for {token!r}:\n{out.decode(errors='replace')}")
    pos = out.index(token, pos) + len(token)
until(b">>> ")
os.write(fd, b"What is the capital of France?\r")
until(b"Paris")
until(b">>> ")
# Ctrl-C during a long answer stops it and the chat goes on.
os.write(fd, b"Count from one to five hundred, one number per line.\r")
until(b"\n")  # the terminal's echo of the question
mark, deadline = pos, time.time() + 120
while len(out) < mark + 16:  # then the answer has started
    if time.time() > deadline:
        raise SystemExit(f"no answer streamed:\n{out.decode(errors='replace')}")
    if select.select([fd], [], [], 0.5)[0]:
        out += os.read(fd, 4096)
os.write(fd, b"\x03")
until(b"(answer cancelled)")
until(b">>> ")
os.write(fd, b"/help\r")
until(b"/clear forgets")
os.write(fd, b"/bye\r")
_, status = os.waitpid(pid, 0)
try:
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
except OSError:
    pass
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "out": out.decode(errors="replace")}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn ondevice_run_chats_interactively_on_a_terminal() {
    let Some(Setup { daemon, .. }) = setup("ondevice_run_chats_interactively_on_a_terminal").await else { return };
    let args = ["run", "smollm2", "--system", SYSTEM, "--temperature", "0", "--max-tokens", "400"];
    #[allow(clippy::disallowed_methods)] // the terminal driver; it execs the real binary
    let mut py = std::process::Command::new("python3");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ONDEVICE_") {
            py.env_remove(name);
        }
    }
    py.args(["-c", PTY_CHAT, env!("CARGO_BIN_EXE_ondevice")])
        .args(args)
        .env("ONDEVICE_HOME", daemon.home().dir())
        .env("ONDEVICE_CONFIG", daemon.home().config())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let out = tokio::task::block_in_place(|| py.output()).expect("python3");
    assert!(out.status.success(), "terminal session: {}", describe(&out));
    let v: Value = serde_json::from_slice(out.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap_or(&[]))
        .unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    let transcript = v["out"].as_str().unwrap_or_default();
    assert_eq!(v["code"], 0, "exit code: {transcript}");
    assert!(transcript.contains("Chatting with smollm2"), "{transcript}");
    assert!(transcript.matches(">>> ").count() >= 4, "a prompt before each input: {transcript}");
}

/// Whether this CPU has the features of x86-64 `level` (`x86-64-v4` …), from /proc/cpuinfo.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn host_runs(level: &str) -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> =
        flags.lines().find(|l| l.starts_with("flags")).map_or(vec![], |l| l.split_whitespace().collect());
    let needs: &[&str] = match level {
        "x86-64-v4" => &["avx2", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
        "x86-64-v3" => &["avx2", "fma", "f16c", "bmi2"],
        _ => &["sse4_2", "ssse3", "popcnt"],
    };
    needs.iter().all(|f| flags.contains(f))
}

/// Packages may put builds of the worker for other CPU levels in `../lib/ondevice`; the daemon
/// starts workers from the highest one this CPU runs (the binary itself is the x86-64-v3 build).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[tokio::test(flavor = "multi_thread")]
async fn workers_run_the_best_build_for_this_cpu() {
    let Some(file) = test_model("workers_run_the_best_build_for_this_cpu") else { return };
    // An installed layout: bin/ondevice and lib/ondevice/ondevice-worker-x86-64-v{2,4}. The
    // "builds" are copies of this binary: what is under test is the choice, not the kernels.
    let mut home = Home::new();
    let bin = home.root().join("bin");
    let lib = home.root().join("lib/ondevice");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    let me = std::path::Path::new(env!("CARGO_BIN_EXE_ondevice"));
    let place = |to: &std::path::Path| {
        if std::fs::hard_link(me, to).is_err() {
            std::fs::copy(me, to).unwrap();
        }
    };
    place(&bin.join("ondevice"));
    place(&lib.join("ondevice-worker-x86-64-v2"));
    place(&lib.join("ondevice-worker-x86-64-v4"));
    home.use_program(bin.join("ondevice"));
    let daemon = Daemon::start(home);
    let out = daemon.home().run(&["models", "import", file.to_str().unwrap(), "--name", "smollm2"]);
    assert!(out.status.success(), "{}", describe(&out));
    let infer = daemon.key(&["infer"]).await;
    let (text, _) = openai_chat(&daemon, &infer.secret).await;
    assert!(text.contains("Paris"), "{text}");

    let pids = worker_pids(daemon.home());
    assert_eq!(pids.len(), 1, "one engine worker");
    let program = std::fs::read_link(format!("/proc/{}/exe", pids[0])).expect("worker executable");
    let want = if host_runs("x86-64-v4") {
        lib.join("ondevice-worker-x86-64-v4")
    } else if host_runs("x86-64-v3") {
        bin.join("ondevice")
    } else {
        lib.join("ondevice-worker-x86-64-v2")
    };
    // /proc names the file the worker was started from (a hardlink shows as its own path).
    assert_eq!(program.canonicalize().unwrap(), want.canonicalize().unwrap(), "{}", daemon.stderr());
    assert!(daemon.stderr().contains("engine workers run this build"), "{}", daemon.stderr());
}

/// `ondevice ps` lists the model a prompt loaded (runtime, adapter, memory, keep-alive expiry),
/// `ondevice stop` unloads it and `ps` is empty again; stopping a model that is not loaded fails.
#[tokio::test(flavor = "multi_thread")]
async fn ps_lists_the_loaded_model_and_stop_unloads_it() {
    let Some(Setup { daemon, .. }) = setup("ps_lists_the_loaded_model_and_stop_unloads_it").await else { return };
    let home = daemon.home();
    let run = |args: &[&str]| tokio::task::block_in_place(|| home.run(args));
    let ps_json = || {
        let out = run(&["ps", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
    };
    assert_eq!(ps_json(), json!([]), "nothing is loaded before the first prompt");

    let out = run(&["run", "smollm2", QUESTION, "--temperature", "0", "--max-tokens", "8"]);
    assert!(out.status.success(), "{}", describe(&out));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let ps = ps_json();
    let loaded = ps.as_array().expect("array");
    assert_eq!(loaded.len(), 1, "{ps}");
    let m = &loaded[0];
    assert_eq!(m["model"], "smollm2:latest", "{ps}");
    assert!(m["runtime"].as_str().is_some_and(|r| !r.is_empty()), "{ps}");
    assert_eq!(m["adapter"], "embedded", "{ps}");
    let file = std::fs::metadata(test_model("ps").expect("model")).expect("model file").len();
    assert_eq!(m["size"].as_u64(), Some(file), "memory accounted is the model file: {ps}");
    // The default keep-alive is 5 minutes from the last request.
    let expires = m["expires_at"].as_i64().unwrap_or_else(|| panic!("expires_at: {ps}"));
    assert!((now + 240..=now + 310).contains(&expires), "expires_at {expires}, now {now}: {ps}");
    let table = String::from_utf8(run(&["ps"]).stdout).expect("utf-8");
    assert!(table.starts_with("NAME") && table.contains("smollm2:latest"), "{table}");
    assert!(table.contains("embedded") && table.contains("minutes from now"), "{table}");

    // A read key sees it; stopping needs the models scope.
    let read = daemon.key(&["read"]).await;
    let out = tokio::task::block_in_place(|| home.run_with(&["ps"], &[("ONDEVICE_API_KEY", &read.secret)]));
    assert!(out.status.success(), "{}", describe(&out));
    let out =
        tokio::task::block_in_place(|| home.run_with(&["stop", "smollm2"], &[("ONDEVICE_API_KEY", &read.secret)]));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("scope"), "{}", describe(&out));
    assert_eq!(ps_json().as_array().map(Vec::len), Some(1), "a refused stop unloads nothing");

    let out = run(&["stop", "smollm2"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped smollm2", "{}", describe(&out));
    assert_eq!(ps_json(), json!([]), "stopped models are not listed");
    #[cfg(target_os = "linux")]
    {
        let start = std::time::Instant::now();
        while !worker_pids(home).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "the engine worker still runs after stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Not loaded (any more, or never): a clear error and a non-zero exit.
    for model in ["smollm2", "no-such-model"] {
        let out = run(&["stop", model]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("model {model} is not loaded")) && stderr.contains("ondevice ps"), "{stderr}");
    }

    // The next prompt loads it again.
    let out = run(&["run", "smollm2", QUESTION, "--temperature", "0", "--max-tokens", "8"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(ps_json().as_array().map(Vec::len), Some(1));
}
