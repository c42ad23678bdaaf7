//! The OpenAI-compatible API: `GET /v1/models` and `GET /v1/models/{model}` (read),
//! `DELETE /v1/models/{model}` (models: removes it from the registry), `POST /v1/chat/completions`,
//! `POST /v1/completions` and `POST /v1/embeddings` (infer). The OpenAI endpoints ondevice does not
//! offer (responses, images, audio, files, ...) answer 501 `not_implemented` ([`unsupported`]).
//! `"stream": true` answers server-sent events (`data: {chunk}` … `data: [DONE]`); a failure after the stream started is sent as one
//! `data: {"error": {...}}` event and the stream ends without `[DONE]`. Errors before that use the
//! daemon's envelope `{"error": {"code", "message"}}`, which the openai clients read.

pub mod wire;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream;
use ondevice_runtime::EmbedRequest;

use self::wire::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Completion,
    CompletionChoice, CompletionRequest, Delta, EmbeddingList, EmbeddingOut, EmbeddingRequest, EmbeddingUsage,
    ModelDeleted, ModelList, ModelOut, UsageOut,
};
use crate::error::{AnyJson, ApiError};
use crate::generation::{self, Started, Step, random_id, streaming_response, unix_now, with_adapter};
use crate::state::AppState;

const SSE: &str = "text/event-stream";

/// Identity shared by every chunk of one answer.
struct Meta {
    id: String,
    created: i64,
    model: String,
    fingerprint: Option<String>,
}

impl Meta {
    fn new(prefix: &str, started: &Started) -> Meta {
        Meta {
            id: format!("{prefix}-{}", random_id()),
            created: unix_now(),
            model: started.model.clone(),
            fingerprint: Some(started.adapter.clone()),
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices: vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason }],
            usage: None,
            sources: None,
        }
    }

    fn completion(&self, text: String, finish_reason: Option<String>, usage: Option<UsageOut>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion".to_owned(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices: vec![CompletionChoice { text, index: 0, logprobs: None, finish_reason }],
            usage,
        }
    }
}

fn event<T: serde::Serialize>(value: &T) -> String {
    format!("data: {}\n\n", serde_json::to_string(value).unwrap_or_default())
}

fn error_event(e: ondevice_runtime::RuntimeError) -> String {
    event(&ApiError::from(e).body())
}

const DONE: &str = "data: [DONE]\n\n";

/// Models a client can name.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Models", body = ModelList),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let models = state.require_inference()?.models().await?;
    Ok(Json(ModelList { object: "list".to_owned(), data: models.iter().map(ModelOut::of).collect() }))
}

/// One model (`name[:tag]`; the tag defaults to `latest`).
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai",
    security(("bearer" = ["read"])),
    params(("model" = crate::routes::models::ModelRefSchema, Path, description = "`name[:tag]` (URL-encode `/` as `%2F`)")),
    responses(
        (status = 200, description = "The model", body = ModelOut),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn model(State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<ModelOut>, ApiError> {
    let models = state.require_inference()?.models().await?;
    let entry = crate::routes::ollama::manage::find_entry(&models, &model)
        .ok_or_else(|| ApiError::NotFound(format!("model {model:?} not found: see GET /v1/models")))?;
    Ok(Json(ModelOut::of(entry)))
}

/// Removes a model from the registry (its blob is freed by `gc`).
#[utoipa::path(delete, path = "/v1/models/{model}", tag = "openai",
    security(("bearer" = ["models"])),
    params(("model" = crate::routes::models::ModelRefSchema, Path, description = "`name[:tag]` or `sha256:<hex>` (URL-encode `/` as `%2F`)")),
    responses(
        (status = 200, description = "Removed", body = ModelDeleted),
        (status = 400, description = "Invalid name", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::error::ErrorBody)))]
pub async fn delete_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelDeleted>, ApiError> {
    let r = model.parse::<ondevice_registry::ModelRef>().map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let removed = state.models().remove(r).await?;
    let id = removed.first().map_or(model, ondevice_registry::ModelRecord::reference);
    tracing::info!(model = %id, "model removed (openai api)");
    Ok(Json(ModelDeleted { id, object: "model".to_owned(), deleted: true }))
}

/// Documented OpenAI endpoints ondevice does not offer, by path prefix, with what to use instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("/v1/responses", "use POST /v1/chat/completions"),
    ("/v1/assistants", "use POST /v1/chat/completions"),
    ("/v1/threads", "use POST /v1/chat/completions"),
    ("/v1/conversations", "use POST /v1/chat/completions"),
    ("/v1/realtime", "use the WebSocket at /api/v1/ws"),
    ("/v1/images", "ondevice serves text models"),
    ("/v1/audio", "ondevice serves text models"),
    ("/v1/videos", "ondevice serves text models"),
    ("/v1/moderations", "ondevice serves text models; moderate with a chat prompt"),
    ("/v1/files", "import models with `ondevice models import`"),
    ("/v1/uploads", "import models with `ondevice models import`"),
    ("/v1/fine_tuning", "fine-tune elsewhere and import the GGUF file with `ondevice models import`"),
    ("/v1/batches", "send the requests one by one (they run concurrently)"),
    ("/v1/vector_stores", "use the embeddings endpoint"),
    ("/v1/evals", "ondevice has no evaluation service"),
    ("/v1/containers", "ondevice has no code containers"),
    ("/v1/edits", "use POST /v1/chat/completions"),
    ("/v1/engines", "use GET /v1/models"),
];

/// The 501 answer for a documented OpenAI endpoint ondevice does not offer, if `path` is one.
pub fn unsupported(path: &str) -> Option<ApiError> {
    UNSUPPORTED.iter().find(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix}/"))).map(
        |(prefix, instead)| ApiError::NotImplemented(format!("{prefix} is not implemented by ondevice: {instead}")),
    )
}

/// Chat completion; `"stream": true` streams `chat.completion.chunk` events. Extensions:
/// `prompt_pack` (a prompt pack rendered server-side, its messages before `messages`) and
/// `collection` (retrieval: the chunks found go into a system message and come back as
/// `sources`, at the top level of the answer, or of the first chunk when streaming).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    security(("bearer" = ["infer"])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or its chunks as server-sent events ending with `data: [DONE]`",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model, prompt pack or collection", body = crate::error::ErrorBody),
        (status = 409, description = "The collection's embedding model now names other weights", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime, prompt library or vector store available, or overloaded (with Retry-After)", body = crate::error::ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = req.streaming();
    let (mut request, augment) = req.into_domain()?;
    let sources = crate::augment::apply(&state, &mut request, augment).await?;
    let started = generation::start(&state, request).await?;
    let meta = Meta::new("chatcmpl", &started);
    let adapter = started.adapter.clone();
    let shutdown = state.shutdown_token().clone();
    if !stream {
        let done = generation::collect(started, shutdown).await?;
        let body = ChatCompletion {
            id: meta.id,
            object: "chat.completion".to_owned(),
            created: meta.created,
            model: meta.model,
            system_fingerprint: meta.fingerprint,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant".to_owned(), content: done.text },
                logprobs: None,
                finish_reason: done.finished.finish.as_str().to_owned(),
            }],
            usage: done.finished.usage.into(),
            sources,
        };
        return Ok(with_adapter(Json(body).into_response(), &adapter));
    }
    let mut first = meta.chunk(Delta { role: Some("assistant".to_owned()), content: Some(String::new()) }, None);
    first.sources = sources;
    let first = event(&first);
    let steps = generation::steps(started, shutdown);
    let frames = stream::once(async move { first }).chain(steps.flat_map(move |step| {
        let frames = match step {
            Step::Token(t) => vec![event(&meta.chunk(Delta { role: None, content: Some(t) }, None))],
            Step::Done(f) => {
                let mut v = vec![event(&meta.chunk(Delta::default(), Some(f.finish.as_str().to_owned())))];
                if include_usage {
                    let mut last = meta.chunk(Delta::default(), None);
                    last.choices.clear();
                    last.usage = Some(f.usage.into());
                    v.push(event(&last));
                }
                v.push(DONE.to_owned());
                v
            }
            Step::Failed(e) => vec![error_event(e)],
        };
        stream::iter(frames)
    }));
    Ok(streaming_response(frames, SSE, &adapter))
}

/// Text completion of a raw prompt (no chat template); `"stream": true` streams events.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    security(("bearer" = ["infer"])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion, or its events ending with `data: [DONE]`",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            content((Completion = "application/json"), (Completion = "text/event-stream"))),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime available or overloaded (with Retry-After)", body = crate::error::ErrorBody)))]
pub async fn completions(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = req.streaming();
    let started = generation::start(&state, req.into_domain()?).await?;
    let meta = Meta::new("cmpl", &started);
    let adapter = started.adapter.clone();
    let shutdown = state.shutdown_token().clone();
    if !stream {
        let done = generation::collect(started, shutdown).await?;
        let finish = Some(done.finished.finish.as_str().to_owned());
        let body = meta.completion(done.text, finish, Some(done.finished.usage.into()));
        return Ok(with_adapter(Json(body).into_response(), &adapter));
    }
    let steps = generation::steps(started, shutdown);
    let frames = steps.flat_map(move |step| {
        let frames = match step {
            Step::Token(t) => vec![event(&meta.completion(t, None, None))],
            Step::Done(f) => {
                let mut v = vec![event(&meta.completion(String::new(), Some(f.finish.as_str().to_owned()), None))];
                if include_usage {
                    let mut last = meta.completion(String::new(), None, Some(f.usage.into()));
                    last.choices.clear();
                    v.push(event(&last));
                }
                v.push(DONE.to_owned());
                v
            }
            Step::Failed(e) => vec![error_event(e)],
        };
        stream::iter(frames)
    });
    Ok(streaming_response(frames, SSE, &adapter))
}

/// Embeddings of one or more texts (unit length, as OpenAI's are).
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    security(("bearer" = ["infer"])),
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One embedding per input",
            headers(("x-ondevice-adapter" = String, description = "The runtime that answered")),
            body = EmbeddingList),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime available", body = crate::error::ErrorBody)))]
pub async fn embeddings(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "encoding_format {other:?} is not supported: use float or base64"
            )));
        }
    };
    if req.dimensions.is_some() {
        return Err(ApiError::InvalidRequest("dimensions is not supported: omit it".to_owned()));
    }
    let input = req.input.into_vec();
    if input.is_empty() {
        return Err(ApiError::InvalidRequest("input must hold at least one text".to_owned()));
    }
    let inference = state.require_inference()?;
    let out = inference.embed(EmbedRequest { model: req.model.clone(), input, normalize: true }).await?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                wire::EmbeddingVector::Base64(wire::base64(&bytes))
            } else {
                wire::EmbeddingVector::Float(v)
            };
            EmbeddingOut { object: "embedding".to_owned(), index, embedding }
        })
        .collect();
    let tokens = out.usage.prompt_tokens;
    let body = EmbeddingList {
        object: "list".to_owned(),
        data,
        model: req.model,
        usage: EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens },
    };
    Ok(with_adapter(Json(body).into_response(), &out.adapter))
}
