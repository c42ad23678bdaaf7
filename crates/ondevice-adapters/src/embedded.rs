//! Kind `embedded`: the daemon side of the embedded engine. One `ondevice worker` process per loaded model
//! serves [`ondevice_runtime::wire`] over a Unix socket (a named pipe on Windows). This adapter never spawns processes: the binary
//! gives it a [`WorkerLauncher`] backed by the supervisor, and the adapter speaks the wire protocol.
//!
//! - load = [`WorkerLauncher::start`] + poll `GET /health` until it answers `ready` (bounded by
//!   [`EmbeddedOptions::load_timeout`]; a worker that exits while loading fails the load at once);
//! - generate = `POST /generate`, NDJSON lines → [`Event`]s; dropping the stream closes the connection so
//!   the worker cancels; a worker that dies mid-stream yields one `Unavailable` item, a silent one a
//!   `Timeout` item after [`EmbeddedOptions::idle_timeout`];
//! - embed = `POST /embed` (with the per-input token limit and this call's deadline: the worker stops
//!   computing when the deadline passes or the connection closes), tokenize = `POST /tokenize`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use ondevice_runtime::wire::{
    EmbedBody, EmbedReply, GenerateBody, HealthReply, TokenizeBody, TokenizeReply, WireError, WireEvent, WirePrompt,
};
use ondevice_runtime::{
    BoxFuture, Capabilities, EmbedRequest, Embeddings, Event, EventStream, GenerateRequest, Health, ModelSpec, Prompt,
    Runtime, RuntimeError, Usage,
};

use crate::ipc::{self, Answer, Failure};
use crate::stream::{self, Decoder, Step};

/// Starts and stops `ondevice worker` processes; the binary implements it with the supervisor.
pub trait WorkerLauncher: Send + Sync {
    /// Starts the worker serving `model` (or finds the one already running) and returns its socket path.
    /// It may return before the model is loaded: the adapter waits for `GET /health` to answer `ready`.
    fn start(&self, model: &ModelSpec) -> BoxFuture<'_, Result<PathBuf, RuntimeError>>;
    /// Stops the worker serving `model`; stopping one that does not run succeeds.
    fn stop(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Whether the worker serving `model` is running (a crashed worker is not).
    fn is_running(&self, model: &str) -> bool;
}

/// Limits of the embedded adapter.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// Longest wait for a started worker to report `ready`.
    pub load_timeout: Duration,
    /// Longest silence of a worker during a generation.
    pub idle_timeout: Duration,
    /// Longest `embed`/`tokenize`/`health` call.
    pub request_timeout: Duration,
    /// Delay between `/health` polls while loading.
    pub poll_interval: Duration,
    /// Tokens one embedding input may have (`[inference] max_embed_input_tokens`); the worker
    /// refuses longer inputs with `TooLarge` before computing anything.
    pub max_embed_input_tokens: Option<u32>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            load_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(100),
            max_embed_input_tokens: None,
        }
    }
}

/// The embedded engine's adapter.
pub struct EmbeddedAdapter {
    name: String,
    launcher: std::sync::Arc<dyn WorkerLauncher>,
    options: EmbeddedOptions,
    workers: Mutex<HashMap<String, Worker>>,
    loading: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Worker {
    socket: PathBuf,
    info: HealthReply,
}

impl std::fmt::Debug for EmbeddedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedAdapter").field("name", &self.name).field("options", &self.options).finish()
    }
}

impl EmbeddedAdapter {
    /// An adapter named `name` (usually `embedded`) starting workers with `launcher`.
    pub fn new(name: &str, launcher: std::sync::Arc<dyn WorkerLauncher>, options: EmbeddedOptions) -> Self {
        EmbeddedAdapter {
            name: name.to_owned(),
            launcher,
            options,
            workers: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// What the worker serving `model` reported when it became ready.
    pub fn worker_info(&self, model: &str) -> Option<HealthReply> {
        self.lock().get(model).map(|w| w.info.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Unavailable { adapter: self.name.clone(), reason: reason.into() }
    }

    /// The socket of a ready worker for `model`, loading it first when needed.
    async fn socket(&self, model: &ModelSpec) -> Result<PathBuf, RuntimeError> {
        let known = self.lock().get(&model.name).map(|w| w.socket.clone());
        match known {
            Some(s) if self.launcher.is_running(&model.name) => Ok(s),
            _ => {
                self.lock().remove(&model.name);
                self.load_model(model).await?;
                self.lock()
                    .get(&model.name)
                    .map(|w| w.socket.clone())
                    .ok_or_else(|| self.unavailable(format!("the worker for {:?} went away", model.name)))
            }
        }
    }

    async fn load_model(&self, model: &ModelSpec) -> Result<(), RuntimeError> {
        let _one_at_a_time = self.loading.lock().await;
        if self.lock().contains_key(&model.name) && self.launcher.is_running(&model.name) {
            return Ok(());
        }
        let socket = self.launcher.start(model).await?;
        let deadline = Instant::now() + self.options.load_timeout;
        let mut last = String::from("no answer yet");
        loop {
            if !self.launcher.is_running(&model.name) {
                return Err(self.unavailable(format!("the worker for {:?} exited while loading ({last})", model.name)));
            }
            match self.health_of(&socket).await {
                Ok(info) if info.status == "ready" => {
                    self.lock().insert(model.name.clone(), Worker { socket, info });
                    return Ok(());
                }
                Ok(info) => last = format!("status {:?}", info.status),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                // Do not leave a half-loaded worker running.
                let _ = self.launcher.stop(&model.name).await;
                return Err(RuntimeError::Timeout { adapter: self.name.clone(), after: self.options.load_timeout });
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    async fn health_of(&self, socket: &Path) -> Result<HealthReply, RuntimeError> {
        let answer = self.call(socket, Method::GET, "/health", None).await?;
        self.read_json(answer).await
    }

    async fn call(
        &self,
        socket: &Path,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, RuntimeError> {
        let fut = async {
            ipc::request(socket, method, path, body).await.map_err(|e| match e {
                Failure::Connect(_) | Failure::Http(_) => self.unavailable(e.to_string()),
            })
        };
        stream::with_timeout(&self.name, self.options.request_timeout, fut).await
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, answer: Answer) -> Result<T, RuntimeError> {
        let status = answer.status;
        let fut = async {
            answer.bytes().await.map_err(|e| self.unavailable(format!("the worker closed the connection: {e}")))
        };
        let bytes = stream::with_timeout(&self.name, self.options.request_timeout, fut).await?;
        if !status.is_success() {
            return Err(wire_error(status, &bytes, &self.name, self.options.request_timeout));
        }
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Engine {
            message: format!("the worker's answer does not follow the protocol: {e}"),
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        model: &ModelSpec,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, RuntimeError> {
        let body = serde_json::to_vec(body).map_err(|e| RuntimeError::InvalidRequest { message: e.to_string() })?;
        let answer = self.call_model(model, path, body).await?;
        self.read_json(answer).await
    }

    /// `POST path` to the worker serving `model`, loading it first when needed. When the cached
    /// worker cannot be reached (the supervisor is restarting it after a crash, so the process may
    /// be up but still loading), the entry is dropped, the adapter waits until the worker reports
    /// ready again (bounded by the load timeout) and the request is sent once more.
    async fn call_model(&self, model: &ModelSpec, path: &str, body: Vec<u8>) -> Result<Answer, RuntimeError> {
        if body.len() > ondevice_runtime::wire::MAX_BODY {
            return Err(too_big());
        }
        let socket = self.socket(model).await?;
        match self.call(&socket, Method::POST, path, Some(body.clone())).await {
            Err(RuntimeError::Unavailable { reason, .. }) => {
                tracing::info!(model = %model.name, %reason, "worker unreachable; waiting for it to be ready again");
                self.lock().remove(&model.name);
                let socket = self.socket(model).await?;
                self.call(&socket, Method::POST, path, Some(body)).await
            }
            other => other,
        }
    }
}

/// A request larger than the worker protocol carries (HTTP 413).
fn too_big() -> RuntimeError {
    RuntimeError::TooLarge {
        message: format!(
            "the request is larger than the worker accepts ({} bytes): send a shorter prompt or fewer inputs",
            ondevice_runtime::wire::MAX_BODY
        ),
    }
}

/// A non-2xx answer's [`WireError`] as the contract's error, through the one code table
/// ([`RuntimeError::from_code`]); `adapter` and `after` (the limit this call gave the worker) fill
/// what the wire does not carry.
fn wire_error(status: StatusCode, body: &[u8], adapter: &str, after: Duration) -> RuntimeError {
    let Ok(WireError { code, message }) = serde_json::from_slice::<WireError>(body) else {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return too_big();
        }
        let text = String::from_utf8_lossy(body);
        return RuntimeError::Engine { message: format!("worker answered {status}: {}", text.trim()) };
    };
    RuntimeError::from_code(&code, message, adapter, after)
}

impl Runtime for EmbeddedAdapter {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: true,
            completion: true,
            embeddings: true,
            tokenize: true,
            constrained: true,
            manages_models: true,
        }
    }

    fn load(&self, model: &ModelSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            if model.path.is_none() {
                return Err(RuntimeError::InvalidRequest {
                    message: format!("model {:?} has no local file for the embedded engine", model.name),
                });
            }
            self.load_model(&model).await
        })
    }

    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let model = model.to_owned();
        Box::pin(async move {
            self.lock().remove(&model);
            self.launcher.stop(&model).await
        })
    }

    /// Ready when every loaded model's worker answers `/health` with `ready` (or none is loaded).
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let workers: Vec<(String, PathBuf)> =
                self.lock().iter().map(|(k, w)| (k.clone(), w.socket.clone())).collect();
            for (model, socket) in workers {
                if !self.launcher.is_running(&model) {
                    return Health::Unhealthy(format!("the worker for {model:?} is not running"));
                }
                match self.health_of(&socket).await {
                    Ok(h) if h.status == "ready" => {}
                    Ok(_) => return Health::Starting,
                    Err(e) => return Health::Unhealthy(format!("worker for {model:?}: {e}")),
                }
            }
            Health::Ready
        })
    }

    fn generate(
        &self,
        model: &ModelSpec,
        request: GenerateRequest,
    ) -> BoxFuture<'_, Result<EventStream, RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            let body = GenerateBody { prompt: (&request.prompt).into(), sampling: (&request.sampling).into() };
            let body =
                serde_json::to_vec(&body).map_err(|e| RuntimeError::InvalidRequest { message: e.to_string() })?;
            let answer = self.call_model(&model, "/generate", body).await?;
            if !answer.status.is_success() {
                return Err(self
                    .read_json::<serde_json::Value>(answer)
                    .await
                    .err()
                    .unwrap_or_else(|| RuntimeError::Engine { message: "worker refused the generation".into() }));
            }
            let (chunks, guard) = answer.into_chunks();
            let (adapter, name) = (self.name.clone(), model.name.clone());
            let body: stream::Body = Box::pin(chunks.map(move |c| {
                c.map_err(|e| RuntimeError::Unavailable {
                    adapter: adapter.clone(),
                    reason: format!("the worker for {name:?} died mid-stream: {e}"),
                })
            }));
            let decoder = WireDecoder {
                adapter: self.name.clone(),
                model: model.name.clone(),
                timeout: self.options.request_timeout,
            };
            let idle = Some((self.options.idle_timeout, self.name.clone()));
            Ok(stream::decode(body, decoder, idle, Some(Box::new(guard))))
        })
    }

    fn embed(&self, model: &ModelSpec, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            // The worker stops computing when this call gives up (its deadline) or the caller goes
            // away (the connection closes), so an abandoned request never keeps the model busy.
            let body = EmbedBody {
                input: request.input.clone(),
                normalize: request.normalize,
                max_input_tokens: self.options.max_embed_input_tokens,
                timeout_ms: Some(u64::try_from(self.options.request_timeout.as_millis()).unwrap_or(u64::MAX)),
            };
            let reply: EmbedReply = self.post(&model, "/embed", &body).await?;
            if reply.embeddings.len() != request.input.len() {
                return Err(RuntimeError::Engine {
                    message: format!(
                        "worker returned {} vectors for {} inputs",
                        reply.embeddings.len(),
                        request.input.len()
                    ),
                });
            }
            Ok(Embeddings {
                vectors: reply.embeddings,
                usage: Usage { prompt_tokens: reply.prompt_tokens, completion_tokens: 0 },
                adapter: self.name.clone(),
            })
        })
    }

    fn tokenize(&self, model: &ModelSpec, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let model = model.clone();
        let body = TokenizeBody { text: text.to_owned(), prompt: None };
        Box::pin(async move {
            let reply: TokenizeReply = self.post(&model, "/tokenize", &body).await?;
            Ok(reply.tokens)
        })
    }

    fn tokenize_prompt(&self, model: &ModelSpec, prompt: &Prompt) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let model = model.clone();
        let body = TokenizeBody { text: String::new(), prompt: Some(WirePrompt::from(prompt)) };
        Box::pin(async move {
            let reply: TokenizeReply = self.post(&model, "/tokenize", &body).await?;
            Ok(reply.tokens)
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Decodes the worker's NDJSON [`WireEvent`] lines.
struct WireDecoder {
    adapter: String,
    model: String,
    /// The limit the adapter set for the call (a worker `timeout` error reports it).
    timeout: Duration,
}

impl Decoder for WireDecoder {
    fn line(&mut self, line: &str) -> Step {
        if line.trim().is_empty() {
            return Step::Skip;
        }
        let event: WireEvent = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                return Step::Fail(RuntimeError::Engine {
                    message: format!("worker sent a line outside the protocol: {e}"),
                });
            }
        };
        match event.into_event(&self.adapter, self.timeout) {
            Ok(Event::Token(t)) if t.is_empty() => Step::Skip,
            Ok(Event::Token(t)) => Step::Token(t),
            Ok(done) => Step::Done(done),
            Err(e) => Step::Fail(e),
        }
    }

    fn eof(&mut self) -> Result<Event, RuntimeError> {
        Err(RuntimeError::Unavailable {
            adapter: self.adapter.clone(),
            reason: format!("the worker for {:?} closed the stream before finishing", self.model),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_errors_keep_their_status_class() {
        let after = Duration::from_secs(30);
        let body = br#"{"code":"timeout","message":"runtime \"embedded\" timed out after 30s"}"#;
        let e = wire_error(StatusCode::GATEWAY_TIMEOUT, body, "embedded", after);
        assert_eq!(e, RuntimeError::Timeout { adapter: "embedded".into(), after });
        let e = wire_error(StatusCode::PAYLOAD_TOO_LARGE, b"length limit exceeded", "embedded", after);
        assert!(matches!(e, RuntimeError::TooLarge { .. }), "{e:?}");
        assert!(matches!(too_big(), RuntimeError::TooLarge { .. }));
        let body = br#"{"code":"too_large","message":"input 0 has 9000 tokens"}"#;
        let e = wire_error(StatusCode::PAYLOAD_TOO_LARGE, body, "embedded", after);
        assert_eq!(e, RuntimeError::TooLarge { message: "input 0 has 9000 tokens".into() });
    }
}
