//! The Ollama-compatible API: `POST /api/chat`, `POST /api/generate`, `POST /api/embed`, the
//! legacy `POST /api/embeddings` (infer) and `GET /api/tags`, `GET /api/ps` (read). Streaming is
//! the default, as in Ollama: one JSON object per line (`application/x-ndjson`), the last with
//! `done: true`, `done_reason` and the counts and durations (nanoseconds). A failure after the
//! stream started is sent as one `{"error": {...}}` line. An empty prompt (or no messages) loads
//! the model, or unloads it with `keep_alive: 0`, as Ollama does. Model management (`show`,
//! `version`, `pull`, `delete`, `copy`, `blobs`, and 501 for `create` and `push`) is in
//! `ollama/manage.rs`.

pub mod manage;
pub mod wire;

use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use ondevice_runtime::{EmbedRequest, ModelEntry};

use self::wire::{
    ChatRequest, ChatResponse, Details, EmbedRequestIn, EmbedResponse, GenerateRequestIn, GenerateResponse,
    LegacyEmbedRequest, LegacyEmbedResponse, Message, Running, RunningModel, Stats, TagModel, Tags,
};
use crate::error::{AnyJson, ApiError};
use crate::generation::{self, Finished, Started, Step, streaming_response, with_adapter};
use crate::state::AppState;

const NDJSON: &str = "application/x-ndjson";

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn rfc3339_of(unix: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn line<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string(value).unwrap_or_default();
    s.push('\n');
    s
}

/// The final statistics, from the runtime's timings when it reports them, else measured here.
fn stats(f: &Finished, requested: Instant, load: Duration, first_token: Option<Duration>) -> Stats {
    let total = requested.elapsed();
    let first = first_token.unwrap_or(total);
    let (prompt, eval) = match f.timings {
        Some(t) => (t.prompt, t.generation),
        None => (first.saturating_sub(load), total.saturating_sub(first)),
    };
    Stats {
        done_reason: f.finish.as_str().to_owned(),
        total_duration: Some(nanos(total)),
        load_duration: Some(nanos(load)),
        prompt_eval_count: Some(f.usage.prompt_tokens),
        prompt_eval_duration: Some(nanos(prompt)),
        eval_count: Some(f.usage.completion_tokens),
        eval_duration: Some(nanos(eval)),
    }
}

/// How each surface frames one object of the stream.
trait Frame: serde::Serialize {
    fn frame(model: &str, text: String, stats: Option<Stats>) -> Self;
    /// Attaches retrieved sources (only chat answers carry them).
    fn with_sources(self, _sources: Vec<crate::augment::Source>) -> Self
    where
        Self: Sized,
    {
        self
    }
}

impl Frame for ChatResponse {
    fn frame(model: &str, content: String, stats: Option<Stats>) -> Self {
        let done = stats.is_some();
        let message = Message { role: "assistant".to_owned(), content, images: None };
        ChatResponse { model: model.to_owned(), created_at: now_rfc3339(), message, done, stats, sources: None }
    }

    fn with_sources(mut self, sources: Vec<crate::augment::Source>) -> Self {
        self.sources = Some(sources);
        self
    }
}

impl Frame for GenerateResponse {
    fn frame(model: &str, response: String, stats: Option<Stats>) -> Self {
        let done = stats.is_some();
        GenerateResponse { model: model.to_owned(), created_at: now_rfc3339(), response, done, stats }
    }
}

/// Streams or collects a started generation in the framing `F`; `sources` go into the first
/// object.
async fn answer<F: Frame + 'static>(
    state: &AppState,
    started: Started,
    stream: bool,
    mut sources: Option<Vec<crate::augment::Source>>,
) -> Result<Response, ApiError> {
    let adapter = started.adapter.clone();
    let model = started.model.clone();
    let (requested, load) = (started.requested, started.load);
    let shutdown = state.shutdown_token().clone();
    if !stream {
        let done = generation::collect(started, shutdown).await?;
        let stats = stats(&done.finished, requested, load, Some(done.first_token));
        let mut body = F::frame(&model, done.text, Some(stats));
        if let Some(s) = sources {
            body = body.with_sources(s);
        }
        return Ok(with_adapter(Json(body).into_response(), &adapter));
    }
    let mut first_token = None;
    let frames = generation::steps(started, shutdown).map(move |step| {
        let frame = match step {
            Step::Token(t) => {
                first_token.get_or_insert_with(|| requested.elapsed());
                F::frame(&model, t, None)
            }
            Step::Done(f) => F::frame(&model, String::new(), Some(stats(&f, requested, load, first_token))),
            Step::Failed(e) => return line(&ApiError::from(e).body()),
        };
        match sources.take() {
            Some(s) => line(&frame.with_sources(s)),
            None => line(&frame),
        }
    });
    Ok(streaming_response(frames, NDJSON, &adapter))
}

/// Answers a load (or, with `keep_alive: 0`, unload) request: no prompt was given.
async fn load_or_unload<F: Frame>(
    state: &AppState,
    model: &str,
    keep_alive: Option<Duration>,
) -> Result<Response, ApiError> {
    let inference = state.require_inference()?;
    let (name, reason, adapter) = if keep_alive == Some(Duration::ZERO) {
        inference.unload(model).await?;
        (model.to_owned(), "unload", None)
    } else {
        let loaded = inference.load(model).await?;
        (loaded.name, "load", Some(loaded.runtime))
    };
    let stats = Stats { done_reason: reason.to_owned(), ..Stats::default() };
    let resp = Json(F::frame(&name, String::new(), Some(stats))).into_response();
    Ok(match adapter {
        Some(a) => with_adapter(resp, &a),
        None => resp,
    })
}

/// Chat; streams NDJSON unless `"stream": false`. Extensions: `prompt_pack` and `collection`
/// (as on `/v1/chat/completions`; `sources` in the first object).
#[utoipa::path(post, path = "/api/chat", tag = "ollama",
    security(("bearer" = ["infer"])),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer, or NDJSON objects ending with `done: true`",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            content((ChatResponse = "application/json"), (ChatResponse = "application/x-ndjson"))),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model, prompt pack or collection", body = crate::error::ErrorBody),
        (status = 409, description = "The collection's embedding model now names other weights", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime, prompt library or vector store available, or overloaded (with Retry-After)", body = crate::error::ErrorBody)))]
pub async fn chat(State(state): State<AppState>, AnyJson(req): AnyJson<ChatRequest>) -> Result<Response, ApiError> {
    let stream = req.stream.unwrap_or(true);
    let model = req.model.clone();
    let keep_alive = wire::keep_alive(req.keep_alive.as_ref())?;
    let Some((mut request, augment)) = req.into_domain()? else {
        return load_or_unload::<ChatResponse>(&state, &model, keep_alive).await;
    };
    let sources = crate::augment::apply(&state, &mut request, augment).await?;
    let started = generation::start(&state, request).await?;
    answer::<ChatResponse>(&state, started, stream, sources).await
}

/// Completion of a prompt (with the chat template unless `raw`); streams NDJSON by default.
#[utoipa::path(post, path = "/api/generate", tag = "ollama",
    security(("bearer" = ["infer"])),
    request_body = GenerateRequestIn,
    responses(
        (status = 200, description = "The answer, or NDJSON objects ending with `done: true`",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            content((GenerateResponse = "application/json"), (GenerateResponse = "application/x-ndjson"))),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime available or overloaded (with Retry-After)", body = crate::error::ErrorBody)))]
pub async fn generate(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<GenerateRequestIn>,
) -> Result<Response, ApiError> {
    let stream = req.stream.unwrap_or(true);
    let model = req.model.clone();
    let keep_alive = wire::keep_alive(req.keep_alive.as_ref())?;
    let Some(request) = req.into_domain()? else {
        return load_or_unload::<GenerateResponse>(&state, &model, keep_alive).await;
    };
    let started = generation::start(&state, request).await?;
    answer::<GenerateResponse>(&state, started, stream, None).await
}

/// Unit-length embeddings of one or more texts.
#[utoipa::path(post, path = "/api/embed", tag = "ollama",
    security(("bearer" = ["infer"])),
    request_body = EmbedRequestIn,
    responses(
        (status = 200, description = "One vector per input",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            body = EmbedResponse),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime available", body = crate::error::ErrorBody)))]
pub async fn embed(State(state): State<AppState>, AnyJson(req): AnyJson<EmbedRequestIn>) -> Result<Response, ApiError> {
    wire::keep_alive(req.keep_alive.as_ref())?;
    let input = req.input.into_vec();
    if input.is_empty() {
        return Err(ApiError::InvalidRequest("input must hold at least one text".to_owned()));
    }
    let inference = state.require_inference()?;
    let start = Instant::now();
    let out = inference.embed(EmbedRequest { model: req.model.clone(), input, normalize: true }).await?;
    let body = EmbedResponse {
        model: req.model,
        embeddings: out.vectors,
        total_duration: nanos(start.elapsed()),
        load_duration: 0,
        prompt_eval_count: out.usage.prompt_tokens,
    };
    Ok(with_adapter(Json(body).into_response(), &out.adapter))
}

/// Legacy single-text embedding (not normalized).
#[utoipa::path(post, path = "/api/embeddings", tag = "ollama",
    security(("bearer" = ["infer"])),
    request_body = LegacyEmbedRequest,
    responses(
        (status = 200, description = "The vector",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            body = LegacyEmbedResponse),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime available", body = crate::error::ErrorBody)))]
pub async fn embeddings(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<LegacyEmbedRequest>,
) -> Result<Response, ApiError> {
    let inference = state.require_inference()?;
    let out = inference.embed(EmbedRequest { model: req.model, input: vec![req.prompt], normalize: false }).await?;
    let embedding = out.vectors.into_iter().next().unwrap_or_default();
    Ok(with_adapter(Json(LegacyEmbedResponse { embedding }).into_response(), &out.adapter))
}

fn details(m: Option<&ModelEntry>) -> Details {
    let Some(m) = m else { return Details::default() };
    let family = m.family.clone().unwrap_or_default();
    Details {
        parent_model: String::new(),
        format: if m.digest.is_some() { "gguf".to_owned() } else { String::new() },
        families: if family.is_empty() { Vec::new() } else { vec![family.clone()] },
        family,
        parameter_size: wire::parameter_size(m.parameters),
        quantization_level: m.quantization.clone().unwrap_or_default(),
    }
}

fn hex_digest(m: Option<&ModelEntry>) -> String {
    m.and_then(|m| m.digest.as_deref()).map(|d| d.trim_start_matches("sha256:").to_owned()).unwrap_or_default()
}

/// Every model a client can name.
#[utoipa::path(get, path = "/api/tags", tag = "ollama",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Models", body = Tags),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn tags(State(state): State<AppState>) -> Result<Json<Tags>, ApiError> {
    let models = state.require_inference()?.models().await?;
    Ok(Json(Tags {
        models: models
            .iter()
            .map(|m| TagModel {
                name: m.name.clone(),
                model: m.name.clone(),
                modified_at: rfc3339_of(m.created.unwrap_or(0)),
                size: m.size_bytes.unwrap_or(0),
                digest: hex_digest(Some(m)),
                details: details(Some(m)),
            })
            .collect(),
    }))
}

/// Models loaded now, most recently used first.
#[utoipa::path(get, path = "/api/ps", tag = "ollama",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Loaded models", body = Running),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn ps(State(state): State<AppState>) -> Result<Json<Running>, ApiError> {
    let inference = state.require_inference()?;
    let loaded = inference.loaded().await;
    let known = inference.models().await.unwrap_or_default();
    let never = i64::from(u32::MAX);
    Ok(Json(Running {
        models: loaded
            .into_iter()
            .map(|l| {
                let entry = known.iter().find(|m| m.name == l.name);
                RunningModel {
                    model: l.name.clone(),
                    name: l.name,
                    size: l.size_bytes,
                    digest: hex_digest(entry),
                    details: details(entry),
                    expires_at: rfc3339_of(l.expires_at.unwrap_or(never)),
                    size_vram: 0,
                    runtime: l.runtime,
                }
            })
            .collect(),
    }))
}
