//! The worker server: [`ondevice_runtime::wire`] over HTTP/1.1 on a Unix socket (a named pipe on
//! Windows), bound by [`ondevice_ipc::bind`].
//!
//! `GET /health`, `POST /generate` (NDJSON stream of [`WireEvent`]s), `POST /embed`,
//! `POST /tokenize`; failures are a [`WireError`] body with a fitting status. When the client closes
//! the connection during a generation, hyper drops the response stream, which drops the engine's
//! event receiver, and the engine frees the slot at its next step.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use ondevice_runtime::wire::{
    EmbedBody, EmbedReply, GenerateBody, HealthReply, TokenizeBody, TokenizeReply, WireError, WireEvent,
};
use ondevice_runtime::{Prompt, RuntimeError, Sampling};
use serde::de::DeserializeOwned;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{EmbedLimits, Engine, EngineError};

/// The worker's routes over `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/generate", post(generate))
        .route("/embed", post(embed))
        .route("/tokenize", post(tokenize))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "not_found", "unknown path: use /health, /generate, /embed or /tokenize")
        })
        // The daemon bounds public bodies; this limit agrees with it (see `wire::MAX_BODY`).
        .layer(axum::extract::DefaultBodyLimit::max(ondevice_runtime::wire::MAX_BODY))
        .with_state(engine)
}

/// Serves `engine` on a new Unix socket at `socket` (mode 0600; a stale socket file there is
/// replaced, any other file refused) until `shutdown` completes, then finishes the requests in
/// flight and removes the socket. On Windows `socket` is a named pipe path (`\\.\pipe\NAME`) that
/// must not exist yet. See [`ondevice_ipc::bind`].
pub async fn serve(
    engine: Arc<Engine>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EngineError> {
    let fail = |source| EngineError::Socket { path: socket.to_owned(), source };
    let listener = ondevice_ipc::bind(socket).map_err(|e| fail(e.into()))?;
    tracing::info!(socket = %socket.display(), "worker listening");
    axum::serve(listener, router(engine)).with_graceful_shutdown(shutdown).await.map_err(fail)?;
    #[cfg(unix)]
    let _ = std::fs::remove_file(socket);
    Ok(())
}

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let info = engine.info();
    axum::Json(HealthReply {
        status: "ready".into(),
        model: info.name.clone(),
        n_ctx: info.n_ctx,
        slots: info.slots,
        busy: engine.busy(),
        embeddings: true,
    })
    .into_response()
}

async fn generate(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let body: GenerateBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let started =
        Prompt::try_from(body.prompt).and_then(|prompt| engine.generate(&prompt, &Sampling::from(body.sampling)));
    let events = match started {
        Ok(events) => events,
        Err(e) => return runtime_error(&e),
    };
    let lines = UnboundedReceiverStream::new(events).map(|event| {
        let wire = match event {
            Ok(e) => WireEvent::from(&e),
            Err(e) => WireEvent::Error { code: e.code().to_owned(), message: e.to_string() },
        };
        let mut line = serde_json::to_vec(&wire).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

async fn embed(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let body: EmbedBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let limits = EmbedLimits {
        max_input_tokens: body.max_input_tokens,
        deadline: body.timeout_ms.map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms)),
    };
    // When the daemon closes the connection, hyper drops this future and with it the engine's
    // reply channel: the engine notices before its next input and stops.
    match engine.embed_with(body.input, body.normalize, limits).await {
        Ok((embeddings, prompt_tokens)) => axum::Json(EmbedReply { embeddings, prompt_tokens }).into_response(),
        Err(e) => runtime_error(&e),
    }
}

async fn tokenize(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let body: TokenizeBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let tokens = match body.prompt {
        Some(prompt) => match Prompt::try_from(prompt) {
            Ok(prompt) => engine.tokenize_prompt(&prompt).await,
            Err(e) => Err(e),
        },
        None => engine.tokenize(&body.text).await,
    };
    match tokens {
        Ok(tokens) => axum::Json(TokenizeReply { tokens }).into_response(),
        Err(e) => runtime_error(&e),
    }
}

#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request", &format!("the request body is not valid: {e}")))
}

/// The one place where the worker maps domain errors to statuses.
fn runtime_error(e: &RuntimeError) -> Response {
    let status = match e {
        RuntimeError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
        RuntimeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        RuntimeError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
        RuntimeError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
        RuntimeError::Overloaded { .. } | RuntimeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RuntimeError::OverBudget { .. } => StatusCode::INSUFFICIENT_STORAGE,
        RuntimeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        RuntimeError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        RuntimeError::Engine { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = error(status, e.code(), &e.to_string());
    if let RuntimeError::Overloaded { retry_after, .. } = e {
        let secs = retry_after.as_secs().max(1).to_string();
        if let Ok(v) = header::HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(WireError { code: code.to_owned(), message: message.to_owned() })).into_response()
}
