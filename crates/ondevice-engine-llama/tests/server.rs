//! The worker server end to end on a real Unix socket in a temp dir, with the real model: health,
//! NDJSON generation, a client that disconnects mid-stream, error bodies, socket permissions.
// Unix sockets and file modes; on Windows the worker serves a named pipe, which these tests do not
// drive.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{engine, eventually, model_path};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ondevice_runtime::wire::{HealthReply, TokenizeReply, WireError, WireEvent};

/// Sends one request on a fresh connection; the connection lives as long as the response body.
async fn request(socket: &Path, method: &str, path: &str, body: &str) -> Response<Incoming> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(format!("http://worker{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

async fn health(socket: &Path) -> HealthReply {
    serde_json::from_slice(&body_bytes(request(socket, "GET", "/health", "").await).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_protocol_end_to_end() {
    let Some(path) = model_path("worker_protocol_end_to_end") else { return };
    let engine = Arc::new(engine(path, 2, 0));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("worker.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let socket = socket.clone();
        async move { ondevice_engine_llama::server::serve(engine, &socket, async { stopped.await.unwrap_or(()) }).await }
    });
    eventually("the socket exists", || socket.exists()).await;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    let h = health(&socket).await;
    assert_eq!((h.status.as_str(), h.model.as_str(), h.slots, h.busy, h.n_ctx), ("ready", common::MODEL, 2, 0, 512));

    // A greedy chat streams NDJSON tokens and ends with `done`.
    let generate = r#"{"prompt":{"type":"chat","messages":[{"role":"system","content":"You are a helpful assistant."},
        {"role":"user","content":"What is the capital of France?"}]},"sampling":{"temperature":0}}"#;
    let response = request(&socket, "POST", "/generate", generate).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = body_bytes(response).await;
    let events: Vec<WireEvent> =
        std::str::from_utf8(&body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let text: String = events
        .iter()
        .filter_map(|e| if let WireEvent::Token { text } = e { Some(text.as_str()) } else { None })
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    assert!(
        matches!(events.last(), Some(WireEvent::Done { finish_reason, completion_tokens: 8, .. }) if finish_reason == "stop")
    );

    // A client that goes away mid-stream frees its slot.
    let endless = r#"{"prompt":{"type":"text","prompt":"Count from one to one thousand:"},"sampling":{"temperature":0,"max_tokens":400}}"#;
    let mut response = request(&socket, "POST", "/generate", endless).await;
    let first = response.body_mut().frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(br#"{"type":"token""#), "{first:?}");
    assert_eq!(health(&socket).await.busy, 1);
    drop(response);
    let mut busy = 1;
    for _ in 0..200 {
        busy = health(&socket).await.busy;
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(busy, 0, "the disconnected generation was cancelled");

    // Errors are WireError bodies with fitting statuses.
    let bad = request(&socket, "POST", "/generate", "{\"prompt\":").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let err: WireError = serde_json::from_slice(&body_bytes(bad).await).unwrap();
    assert_eq!(err.code, "invalid_request");
    let role = request(
        &socket,
        "POST",
        "/generate",
        r#"{"prompt":{"type":"chat","messages":[{"role":"root","content":"x"}]}}"#,
    )
    .await;
    assert_eq!(role.status(), StatusCode::BAD_REQUEST);
    let err: WireError = serde_json::from_slice(&body_bytes(role).await).unwrap();
    assert!(err.message.contains("root"), "{}", err.message);
    let temp = request(
        &socket,
        "POST",
        "/generate",
        r#"{"prompt":{"type":"text","prompt":"x"},"sampling":{"temperature":-1}}"#,
    )
    .await;
    assert_eq!(temp.status(), StatusCode::BAD_REQUEST);
    let missing = request(&socket, "GET", "/nope", "").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Tokenize and embed.
    let tokens = request(&socket, "POST", "/tokenize", r#"{"text":"Hello world"}"#).await;
    let tokens: TokenizeReply = serde_json::from_slice(&body_bytes(tokens).await).unwrap();
    assert_eq!(tokens.tokens, vec![19556, 905]);
    let embed = request(&socket, "POST", "/embed", r#"{"input":["a","b"],"normalize":true}"#).await;
    assert_eq!(embed.status(), StatusCode::OK);
    let embed: ondevice_runtime::wire::EmbedReply = serde_json::from_slice(&body_bytes(embed).await).unwrap();
    assert_eq!((embed.embeddings.len(), embed.embeddings[0].len()), (2, 576));

    // Graceful shutdown removes the socket.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!socket.exists());
}
