//! Generation over the WebSocket. The client sends
//! `{"type": "generate", "id": "g1", "model": "m", "messages": [...] | "prompt": "...", "raw": false,
//! "options": {...}, "keep_alive": "5m"}` and gets `{"type": "token", "id", "text"}` messages, then
//! `{"type": "done", "id", "finish_reason", "usage", "adapter", "model"}` or
//! `{"type": "error", "id", "error": {"code", "message"}}`. `{"type": "cancel", "id"}` stops one
//! generation (answered by its `done` with `finish_reason: "cancelled"`). Needs the `infer` scope.
//!
//! A `generate` message may also name `"prompt_pack": {"name", "variables", "budget"}` and
//! `"collection": {"name", "top_k", "filter", "query"}` (see [`crate::augment`]; with a pack,
//! `messages` and `prompt` may be left out). With a collection, a `{"type": "sources", "id",
//! "sources": [...]}` message comes before the first token.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::HeaderMap;
use futures_util::stream::{self, SelectAll};
use futures_util::{Stream, StreamExt};
use ondevice_auth::Scope;
use ondevice_runtime::{ChatMessage, Constraint, GenerateRequest, Prompt, Role, Sampling};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::augment::Augment;
use crate::error::ApiError;
use crate::generation::{self, OneOrMany, Step, check_sampling};
use crate::middleware::authenticate;
use crate::routes::ollama::wire::keep_alive;
use crate::state::AppState;

/// Generations running at once on one socket.
const MAX_PER_SOCKET: usize = 8;

/// A `generate` message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateMsg {
    #[serde(rename = "type")]
    _kind: String,
    id: String,
    model: String,
    messages: Option<Vec<MessageIn>>,
    prompt: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    options: OptionsIn,
    keep_alive: Option<Value>,
    prompt_pack: Option<crate::augment::PromptPackIn>,
    collection: Option<crate::augment::CollectionIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageIn {
    role: String,
    content: String,
}

/// Sampling options of the native surfaces (the domain's names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsIn {
    temperature: Option<f32>,
    top_k: Option<u32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<u64>,
    max_tokens: Option<u32>,
    stop: Option<OneOrMany>,
    /// `"json"`, a JSON schema object, or `{"grammar": "GBNF"}`.
    format: Option<Value>,
}

impl OptionsIn {
    fn into_domain(self) -> Result<Sampling, ApiError> {
        let constraint = match self.format {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "json" => Some(Constraint::Json),
            Some(Value::Object(mut o)) if o.len() == 1 && o.get("grammar").is_some_and(Value::is_string) => {
                Some(Constraint::Grammar(
                    o.remove("grammar").and_then(|g| g.as_str().map(str::to_owned)).unwrap_or_default(),
                ))
            }
            Some(v @ Value::Object(_)) => Some(Constraint::JsonSchema(v)),
            Some(other) => {
                return Err(ApiError::InvalidRequest(format!(
                    "options.format must be \"json\", a JSON schema or {{\"grammar\": ...}}, got {other}"
                )));
            }
        };
        let s = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            constraint,
        };
        check_sampling(&s)?;
        Ok(s)
    }
}

impl GenerateMsg {
    fn into_domain(self) -> Result<(GenerateRequest, Augment), ApiError> {
        let augment = Augment { prompt_pack: self.prompt_pack, collection: self.collection };
        let prompt = match (self.messages, self.prompt) {
            (Some(messages), None) if !messages.is_empty() => Prompt::Chat(
                messages.into_iter().map(|m| Ok(ChatMessage::new(Role::parse(&m.role)?, m.content))).collect::<Result<
                    Vec<_>,
                    ApiError,
                >>(
                )?,
            ),
            (None, Some(prompt)) => Prompt::Text { prompt, raw: self.raw },
            (None | Some(_), None) if augment.prompt_pack.is_some() => Prompt::Chat(Vec::new()),
            _ => return Err(ApiError::InvalidRequest("send either a non-empty messages list or a prompt".to_owned())),
        };
        let request = GenerateRequest {
            model: self.model,
            prompt,
            sampling: self.options.into_domain()?,
            keep_alive: keep_alive(self.keep_alive.as_ref())?,
        };
        Ok((request, augment))
    }
}

fn error(id: Option<&str>, e: &ApiError) -> Value {
    json!({"type": "error", "id": id, "error": {"code": e.code(), "message": e.to_string()}})
}

/// One output message of a generation, and whether it is its last.
struct Out {
    id: String,
    last: bool,
    msg: Value,
}

type OutStream = Pin<Box<dyn Stream<Item = Out> + Send>>;

/// The generations of one socket, polled by its session loop.
#[derive(Default)]
pub(super) struct Generations {
    running: SelectAll<OutStream>,
    cancels: HashMap<String, CancellationToken>,
}

impl Generations {
    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts a generation; returns an immediate error reply when it cannot start.
    pub fn start(&mut self, state: &AppState, headers: &HeaderMap, msg: Value) -> Option<Value> {
        let id = msg.get("id").and_then(Value::as_str).map(str::to_owned);
        if let Err(e) = authenticate(state, headers, Scope::Infer, "websocket") {
            return Some(error(id.as_deref(), &e));
        }
        let parsed = match serde_json::from_value::<GenerateMsg>(msg) {
            Ok(m) => m,
            Err(e) => {
                return Some(error(id.as_deref(), &ApiError::InvalidRequest(format!("invalid generate message: {e}"))));
            }
        };
        let id = parsed.id.clone();
        if id.is_empty() || self.cancels.contains_key(&id) {
            let e = ApiError::InvalidRequest(format!("id {id:?} is empty or already running: use a new id"));
            return Some(error(Some(&id), &e));
        }
        if self.cancels.len() >= MAX_PER_SOCKET {
            let e = ApiError::Runtime(ondevice_runtime::RuntimeError::Overloaded {
                what: format!("at most {MAX_PER_SOCKET} generations per WebSocket"),
                retry_after: std::time::Duration::from_secs(1),
            });
            return Some(error(Some(&id), &e));
        }
        let (request, augment) = match parsed.into_domain() {
            Ok(r) => r,
            Err(e) => return Some(error(Some(&id), &e)),
        };
        let cancel = CancellationToken::new();
        self.cancels.insert(id.clone(), cancel.clone());
        self.running.push(run(state.clone(), id, request, augment, cancel));
        None
    }

    /// Cancels a generation: its `done` message with `finish_reason: "cancelled"` is the reply.
    pub fn cancel(&mut self, msg: &Value) -> Value {
        let id = msg.get("id").and_then(Value::as_str).unwrap_or_default();
        match self.cancels.remove(id) {
            Some(token) => {
                token.cancel();
                json!({"type": "done", "id": id, "finish_reason": "cancelled", "usage": null, "adapter": null})
            }
            None => error(Some(id), &ApiError::NotFound(format!("no running generation with id {id:?}"))),
        }
    }
}

impl Stream for Generations {
    type Item = Value;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Value>> {
        loop {
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some(out)) => {
                    if out.last {
                        self.cancels.remove(&out.id);
                    } else if !self.cancels.contains_key(&out.id) {
                        continue; // cancelled: its `done` was already sent
                    }
                    return Poll::Ready(Some(out.msg));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The messages of one generation; stops (dropping the runtime's stream) when cancelled.
fn run(
    state: AppState,
    id: String,
    mut request: GenerateRequest,
    augment: Augment,
    cancel: CancellationToken,
) -> OutStream {
    let shutdown = state.shutdown_token().clone();
    let start_id = id.clone();
    let started = async move {
        let sources = crate::augment::apply(&state, &mut request, augment).await?;
        Ok::<_, ApiError>((sources, generation::start(&state, request).await?))
    };
    let out = stream::once(started).flat_map(move |res| -> OutStream {
        let id = start_id.clone();
        match res {
            Err(e) => Box::pin(stream::iter([Out { msg: error(Some(&id), &e), id, last: true }])),
            Ok((sources, started)) => {
                let (adapter, model) = (started.adapter.clone(), started.model.clone());
                let first: Vec<Out> = sources
                    .map(|s| Out { msg: json!({"type": "sources", "id": id, "sources": s}), id: id.clone(), last: false })
                    .into_iter()
                    .collect();
                Box::pin(stream::iter(first).chain(generation::steps(started, shutdown.clone()).map(move |step| match step {
                    Step::Token(text) => Out { msg: json!({"type": "token", "id": id, "text": text}), id: id.clone(), last: false },
                    Step::Done(f) => Out {
                        msg: json!({"type": "done", "id": id, "finish_reason": f.finish.as_str(),
                            "usage": {"prompt_tokens": f.usage.prompt_tokens, "completion_tokens": f.usage.completion_tokens},
                            "adapter": adapter, "model": model}),
                        id: id.clone(),
                        last: true,
                    },
                    Step::Failed(e) => Out { msg: error(Some(&id), &ApiError::from(e)), id: id.clone(), last: true },
                })))
            }
        }
    });
    Box::pin(out.take_until(cancel.cancelled_owned()))
}
