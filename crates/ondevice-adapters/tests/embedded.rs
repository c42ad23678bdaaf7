//! The embedded adapter against in-test workers: real Unix-socket HTTP/1.1 servers that speak
//! `ondevice_runtime::wire` (`GET /health`, `POST /generate` NDJSON, `POST /embed`, `POST /tokenize`),
//! written at the byte level so a test can make a worker die mid-stream or notice a closed connection.
//! The real `ondevice worker` is exercised by the end-to-end tests; the launcher here starts these
//! servers as tasks instead of processes (the supervisor's job in the daemon).
// The fake workers listen on Unix sockets; on Windows the adapter talks to named pipes instead,
// which these tests do not drive.
#![cfg(unix)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ondevice_adapters::embedded::{EmbeddedAdapter, EmbeddedOptions, WorkerLauncher};
use ondevice_runtime::wire::{GenerateBody, HealthReply, WireEvent, WirePrompt};
use ondevice_runtime::{
    BoxFuture, EmbedRequest, Event, FinishReason, GenerateRequest, Health, ModelSpec, Prompt, Runtime, RuntimeError,
    Sampling, Usage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Shared observations of one fake worker.
#[derive(Default)]
struct Worker {
    /// `/health` answers 503 this many times before `ready`.
    loading_polls: AtomicU32,
    /// The worker "process" has exited.
    exited: AtomicBool,
    /// A generation noticed that the client closed the connection.
    cancelled: AtomicBool,
    /// Requests by path.
    requests: Mutex<Vec<(String, String)>>,
}

async fn read_request(s: &mut UnixStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut first = head.lines().next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, buf[head_end..head_end + len].to_vec()))
}

async fn reply(s: &mut UnixStream, status: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
}

async fn chunk(s: &mut UnixStream, event: &WireEvent) -> std::io::Result<()> {
    let line = format!("{}\n", serde_json::to_string(event).unwrap());
    s.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await?;
    s.flush().await
}

async fn handle(mut s: UnixStream, w: Arc<Worker>) {
    let Some((method, path, body)) = read_request(&mut s).await else { return };
    w.requests.lock().unwrap().push((path.clone(), String::from_utf8_lossy(&body).to_string()));
    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => {
            if w.loading_polls.load(Ordering::SeqCst) > 0 {
                w.loading_polls.fetch_sub(1, Ordering::SeqCst);
                return reply(&mut s, "503 Service Unavailable", r#"{"code":"loading","message":"loading model"}"#)
                    .await;
            }
            let h = HealthReply {
                status: "ready".into(),
                model: "tiny.gguf".into(),
                n_ctx: 2048,
                slots: 2,
                busy: 0,
                embeddings: true,
            };
            reply(&mut s, "200 OK", &serde_json::to_string(&h).unwrap()).await
        }
        ("POST", "/generate") => {
            let b: GenerateBody = serde_json::from_slice(&body).unwrap();
            let prompt = match b.prompt {
                WirePrompt::Text { prompt, .. } => prompt,
                WirePrompt::Chat { messages } => messages.last().unwrap().content.clone(),
            };
            if prompt == "bad" {
                return reply(&mut s, "400 Bad Request", r#"{"code":"invalid_request","message":"prompt too long"}"#)
                    .await;
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
                )
                .await;
            let token = |t: &str| WireEvent::Token { text: t.into() };
            match prompt.as_str() {
                "die" => {
                    let _ = chunk(&mut s, &token("Par")).await;
                    w.exited.store(true, Ordering::SeqCst);
                    // The process exits: the socket closes without the terminating chunk.
                }
                "hang" => {
                    let _ = chunk(&mut s, &token("Par")).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                "long" => {
                    for i in 0.. {
                        if chunk(&mut s, &token(&format!("{i} "))).await.is_err() {
                            w.cancelled.store(true, Ordering::SeqCst);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                "error" => {
                    let _ = chunk(&mut s, &token("Par")).await;
                    let _ = chunk(
                        &mut s,
                        &WireEvent::Error { code: "engine_error".into(), message: "kv cache full".into() },
                    )
                    .await;
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
                _ => {
                    for t in ["Par", "is", ""] {
                        let _ = chunk(&mut s, &token(t)).await;
                    }
                    let done = WireEvent::Done {
                        finish_reason: "stop".into(),
                        prompt_tokens: 12,
                        completion_tokens: 2,
                        prompt_ms: 3.0,
                        generation_ms: 4.0,
                    };
                    let _ = chunk(&mut s, &done).await;
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
            }
        }
        ("POST", "/embed") => {
            let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let n = b["input"].as_array().unwrap().len();
            let rows: Vec<Vec<f32>> = (0..n).map(|i| vec![i as f32, 1.0]).collect();
            reply(&mut s, "200 OK", &serde_json::json!({"embeddings": rows, "prompt_tokens": 5}).to_string()).await
        }
        ("POST", "/tokenize") => {
            let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let tokens: Vec<u32> = b["text"].as_str().unwrap().bytes().map(u32::from).collect();
            reply(&mut s, "200 OK", &serde_json::json!({"tokens": tokens}).to_string()).await
        }
        _ => reply(&mut s, "404 Not Found", r#"{"code":"not_found","message":"no such route"}"#).await,
    }
}

/// A started fake worker and its accept loop.
type Running = (Arc<Worker>, tokio::task::JoinHandle<()>);

/// Starts fake workers as tasks; `crash_on_load` makes the next worker exit before it is ready.
struct Launcher {
    dir: tempfile::TempDir,
    workers: Mutex<HashMap<String, Running>>,
    starts: AtomicU32,
    loading_polls: u32,
    crash_on_load: bool,
}

impl Launcher {
    fn new(loading_polls: u32, crash_on_load: bool) -> Arc<Self> {
        Arc::new(Launcher {
            dir: tempfile::tempdir().unwrap(),
            workers: Mutex::default(),
            starts: AtomicU32::new(0),
            loading_polls,
            crash_on_load,
        })
    }
    fn worker(&self, model: &str) -> Arc<Worker> {
        self.workers.lock().unwrap()[model].0.clone()
    }
}

impl WorkerLauncher for Launcher {
    fn start(&self, model: &ModelSpec) -> BoxFuture<'_, Result<PathBuf, RuntimeError>> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        let socket = self.dir.path().join(format!("w{n}.sock"));
        let name = model.name.clone();
        Box::pin(async move {
            let listener = UnixListener::bind(&socket).unwrap();
            let w = Arc::new(Worker { loading_polls: AtomicU32::new(self.loading_polls), ..Default::default() });
            if self.crash_on_load {
                w.exited.store(true, Ordering::SeqCst);
            }
            let w2 = w.clone();
            let task = tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(handle(s, w2.clone()));
                }
            });
            self.workers.lock().unwrap().insert(name, (w, task));
            Ok(socket)
        })
    }

    fn stop(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        if let Some((w, task)) = self.workers.lock().unwrap().remove(model) {
            w.exited.store(true, Ordering::SeqCst);
            task.abort();
        }
        Box::pin(async { Ok(()) })
    }

    fn is_running(&self, model: &str) -> bool {
        self.workers.lock().unwrap().get(model).is_some_and(|(w, _)| !w.exited.load(Ordering::SeqCst))
    }
}

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        poll_interval: Duration::from_millis(10),
        idle_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

fn spec() -> ModelSpec {
    ModelSpec { path: Some("/models/tiny.gguf".into()), ..ModelSpec::named("tiny:latest") }
}

fn request(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        model: "tiny:latest".into(),
        prompt: Prompt::Text { prompt: prompt.into(), raw: false },
        sampling: Sampling { temperature: Some(0.0), max_tokens: Some(8), ..Default::default() },
        keep_alive: None,
    }
}

async fn items(rt: &EmbeddedAdapter, prompt: &str) -> Vec<Result<Event, RuntimeError>> {
    let s = rt.generate(&spec(), request(prompt)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.collect::<Vec<_>>()).await.expect("the stream must end, not hang")
}

#[tokio::test]
async fn load_waits_for_ready_then_generates_embeds_and_tokenizes() {
    let launcher = Launcher::new(3, false);
    let rt = EmbeddedAdapter::new("embedded", launcher.clone(), options());
    rt.load(&spec()).await.unwrap();
    rt.load(&spec()).await.unwrap();
    assert_eq!(launcher.starts.load(Ordering::SeqCst), 1, "loading a loaded model is a no-op");
    assert_eq!(rt.worker_info("tiny:latest").unwrap().slots, 2);
    let polls = launcher.worker("tiny:latest").requests.lock().unwrap().iter().filter(|(p, _)| p == "/health").count();
    assert!(polls >= 4, "load must poll /health until ready, polled {polls} times");
    assert_eq!(rt.health().await, Health::Ready);

    let got = items(&rt, "hello").await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], Ok(Event::Token("Par".into())));
    let Ok(Event::Done { finish, usage, timings }) = &got[2] else { panic!("{got:?}") };
    assert_eq!((*finish, *usage), (FinishReason::Stop, Usage { prompt_tokens: 12, completion_tokens: 2 }));
    assert_eq!(timings.unwrap().generation, Duration::from_millis(4));
    let sent = launcher
        .worker("tiny:latest")
        .requests
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(p, _)| p == "/generate")
        .unwrap()
        .1
        .clone();
    let body: GenerateBody = serde_json::from_str(&sent).unwrap();
    assert_eq!((body.sampling.temperature, body.sampling.max_tokens), (Some(0.0), Some(8)));

    let e = rt
        .embed(
            &spec(),
            EmbedRequest { model: "tiny:latest".into(), input: vec!["a".into(), "b".into()], normalize: true },
        )
        .await
        .unwrap();
    assert_eq!((e.vectors, e.usage.prompt_tokens), (vec![vec![0.0, 1.0], vec![1.0, 1.0]], 5));
    assert_eq!(rt.tokenize(&spec(), "hi").await.unwrap(), vec![104, 105]);

    let err = rt.generate(&spec(), request("bad")).await.err().unwrap();
    assert_eq!(err, RuntimeError::InvalidRequest { message: "prompt too long".into() });
    let got = items(&rt, "error").await;
    assert_eq!(got.last().unwrap(), &Err(RuntimeError::Engine { message: "kv cache full".into() }));

    rt.unload("tiny:latest").await.unwrap();
    assert!(!launcher.is_running("tiny:latest"));
    assert!(rt.worker_info("tiny:latest").is_none());
}

#[tokio::test]
async fn a_worker_dying_mid_stream_ends_the_stream_with_unavailable_and_is_relaunched() {
    let launcher = Launcher::new(0, false);
    let rt = EmbeddedAdapter::new("embedded", launcher.clone(), options());
    let got = items(&rt, "die").await;
    assert_eq!(got[0], Ok(Event::Token("Par".into())));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[1], Err(RuntimeError::Unavailable { reason, .. }) if reason.contains("tiny:latest")),
        "{got:?}"
    );
    assert!(matches!(rt.health().await, Health::Unhealthy(_)));
    // The next request finds the worker gone and starts a new one.
    let got = items(&rt, "hello").await;
    assert!(matches!(got.last(), Some(Ok(Event::Done { .. }))), "{got:?}");
    assert_eq!(launcher.starts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_silent_worker_times_out_and_dropping_the_stream_cancels() {
    let launcher = Launcher::new(0, false);
    let rt = EmbeddedAdapter::new("embedded", launcher.clone(), options());
    let got = items(&rt, "hang").await;
    assert!(matches!(got.last(), Some(Err(RuntimeError::Timeout { .. }))), "{got:?}");

    let mut s = rt.generate(&spec(), request("long")).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(s.next().await, Some(Ok(Event::Token(_)))));
    }
    drop(s);
    let w = launcher.worker("tiny:latest");
    for _ in 0..200 {
        if w.cancelled.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the worker never saw the connection close after the stream was dropped");
}

#[tokio::test]
async fn a_worker_that_exits_while_loading_fails_the_load_at_once() {
    let launcher = Launcher::new(1000, true);
    let rt = EmbeddedAdapter::new("embedded", launcher, options());
    let err = tokio::time::timeout(Duration::from_secs(5), rt.load(&spec())).await.unwrap().unwrap_err();
    assert!(
        matches!(err, RuntimeError::Unavailable { ref reason, .. } if reason.contains("exited while loading")),
        "{err:?}"
    );
    let no_file = rt.load(&ModelSpec::named("remote-only")).await.unwrap_err();
    assert!(matches!(no_file, RuntimeError::InvalidRequest { .. }));
}
