//! Kind `ollama`: Ollama's documented HTTP API (github.com/ollama/ollama `docs/api.md`).
//!
//! Chat → `POST /api/chat`, text → `POST /api/generate` (with `raw`), both streamed as NDJSON whose last
//! line has `done: true`, `done_reason`, `prompt_eval_count`, `eval_count` and durations in nanoseconds.
//! Embeddings → `POST /api/embed`; models → `GET /api/tags` (also the health check); loaded models →
//! `GET /api/ps`; load = `/api/generate` without a prompt; unload = the same with `keep_alive: 0`.
//! Sampling goes in `options` (`num_predict` for max tokens, `num_ctx` from the model spec); JSON output
//! is `format: "json"` or `format: <schema>`.

use std::time::Duration;

use ondevice_runtime::{
    BoxFuture, Capabilities, Constraint, EmbedRequest, Embeddings, Event, EventStream, FinishReason, GenerateRequest,
    Health, ModelSpec, Prompt, Runtime, RuntimeError, Timings, Usage,
};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::http::Remote;
use crate::stream::{self, Decoder, Step};
use crate::{AdapterError, HttpOptions};

/// An Ollama server.
#[derive(Debug)]
pub struct OllamaAdapter {
    remote: Remote,
}

impl OllamaAdapter {
    /// An Ollama server at `options.base_url` (usually `http://127.0.0.1:11434`).
    pub fn new(name: &str, options: HttpOptions) -> Result<Self, AdapterError> {
        Ok(OllamaAdapter { remote: Remote::new(name, &options, "")? })
    }

    /// Models Ollama holds in memory now (`GET /api/ps`).
    pub async fn running(&self) -> Result<Vec<String>, RuntimeError> {
        let v = self.remote.json(self.remote.request(Method::GET, "/api/ps")).await?;
        Ok(names(&v))
    }

    fn map_error(&self, model: &ModelSpec, e: RuntimeError) -> RuntimeError {
        match e {
            RuntimeError::Upstream { status: 404, .. } => RuntimeError::ModelNotFound { model: model.name.clone() },
            e => e,
        }
    }

    fn body(&self, model: &ModelSpec, request: &GenerateRequest) -> Result<(&'static str, Value), RuntimeError> {
        let s = &request.sampling;
        let mut options = Map::new();
        let fields: [(&str, Option<Value>); 9] = [
            ("temperature", s.temperature.map(Value::from)),
            ("top_k", s.top_k.map(Value::from)),
            ("top_p", s.top_p.map(Value::from)),
            ("min_p", s.min_p.map(Value::from)),
            ("repeat_penalty", s.repeat_penalty.map(Value::from)),
            ("seed", s.seed.map(Value::from)),
            ("num_predict", s.max_tokens.map(Value::from)),
            ("num_ctx", model.context_length.map(Value::from)),
            ("stop", (!s.stop.is_empty()).then(|| json!(s.stop))),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                options.insert(k.to_owned(), v);
            }
        }
        let mut body = json!({"model": model.upstream, "stream": true, "options": options});
        let path = match &request.prompt {
            Prompt::Chat(messages) => {
                body["messages"] = Value::Array(
                    messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect(),
                );
                "/api/chat"
            }
            Prompt::Text { prompt, raw } => {
                body["prompt"] = json!(prompt);
                body["raw"] = json!(raw);
                "/api/generate"
            }
        };
        match &s.constraint {
            None => {}
            Some(Constraint::Json) => body["format"] = json!("json"),
            Some(Constraint::JsonSchema(schema)) => body["format"] = schema.clone(),
            Some(Constraint::Grammar(_)) => {
                return Err(RuntimeError::Unsupported {
                    adapter: self.remote.name.clone(),
                    what: "GBNF grammars (use JSON or a JSON schema)".into(),
                });
            }
        }
        if let Some(k) = request.keep_alive {
            body["keep_alive"] = json!(k.as_secs());
        }
        Ok((path, body))
    }
}

fn names(v: &Value) -> Vec<String> {
    v.get("models")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default()
}

impl Runtime for OllamaAdapter {
    fn name(&self) -> &str {
        &self.remote.name
    }

    fn kind(&self) -> &'static str {
        "ollama"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: true,
            completion: true,
            embeddings: true,
            tokenize: false,
            constrained: true,
            manages_models: true,
        }
    }

    fn load(&self, model: &ModelSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            let body = json!({"model": model.upstream, "stream": false});
            let rb = self.remote.request(Method::POST, "/api/generate").json(&body);
            self.remote.json(rb).await.map(drop).map_err(|e| self.map_error(&model, e))
        })
    }

    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let spec = ModelSpec::named(model);
        Box::pin(async move {
            let body = json!({"model": spec.upstream, "keep_alive": 0, "stream": false});
            let rb = self.remote.request(Method::POST, "/api/generate").json(&body);
            match self.remote.json(rb).await {
                Ok(_) | Err(RuntimeError::Upstream { status: 404, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let rb =
                self.remote.request(Method::GET, "/api/tags").timeout(self.remote.timeout.min(Duration::from_secs(10)));
            match self.remote.send(rb).await {
                Ok(_) => Health::Ready,
                Err(e) => Health::Unhealthy(e.to_string()),
            }
        })
    }

    fn generate(
        &self,
        model: &ModelSpec,
        request: GenerateRequest,
    ) -> BoxFuture<'_, Result<EventStream, RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            let (path, body) = self.body(&model, &request)?;
            let resp = self
                .remote
                .send_stream(self.remote.request(Method::POST, path).json(&body))
                .await
                .map_err(|e| self.map_error(&model, e))?;
            let decoder = NdjsonDecoder { adapter: self.remote.name.clone(), chunks: 0 };
            Ok(stream::decode(self.remote.body(resp), decoder, None, None))
        })
    }

    fn embed(&self, model: &ModelSpec, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            let body = json!({"model": model.upstream, "input": request.input});
            let v = self
                .remote
                .json(self.remote.request(Method::POST, "/api/embed").json(&body))
                .await
                .map_err(|e| self.map_error(&model, e))?;
            let mut vectors: Vec<Vec<f32>> = v
                .get("embeddings")
                .and_then(Value::as_array)
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| r.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect::<Option<Vec<_>>>())
                        .collect::<Option<Vec<_>>>()
                })
                .filter(|rows| rows.len() == request.input.len())
                .ok_or_else(|| RuntimeError::Upstream {
                    adapter: self.remote.name.clone(),
                    status: 200,
                    message: "embed answer has no embeddings array with one vector per input".into(),
                })?;
            if request.normalize {
                stream::normalize(&mut vectors);
            }
            let prompt_tokens = stream::count_at(&v, Some("/prompt_eval_count")).unwrap_or(0);
            Ok(Embeddings {
                vectors,
                usage: Usage { prompt_tokens, completion_tokens: 0 },
                adapter: self.remote.name.clone(),
            })
        })
    }

    fn tokenize(&self, _model: &ModelSpec, _text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        Box::pin(async move {
            Err(RuntimeError::Unsupported {
                adapter: self.remote.name.clone(),
                what: "tokenize (Ollama has no tokenize API)".into(),
            })
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let v = self.remote.json(self.remote.request(Method::GET, "/api/tags")).await?;
            Ok(names(&v))
        })
    }
}

/// Decodes Ollama NDJSON lines (`message.content` for chat, `response` for generate).
struct NdjsonDecoder {
    adapter: String,
    chunks: u32,
}

impl Decoder for NdjsonDecoder {
    fn line(&mut self, line: &str) -> Step {
        if line.trim().is_empty() {
            return Step::Skip;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Step::Fail(RuntimeError::Upstream {
                    adapter: self.adapter.clone(),
                    status: 200,
                    message: format!("stream line is not JSON: {e}"),
                });
            }
        };
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            return Step::Fail(RuntimeError::Engine { message: format!("ollama: {err}") });
        }
        let text = v.pointer("/message/content").or_else(|| v.get("response")).and_then(Value::as_str).unwrap_or("");
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            // Ollama may put text on the done line; keep it.
            if !text.is_empty() {
                self.chunks += 1;
            }
            let finish = match v.get("done_reason").and_then(Value::as_str) {
                Some("length") => FinishReason::Length,
                _ => FinishReason::Stop,
            };
            let ns = |k: &str| Duration::from_nanos(v.get(k).and_then(Value::as_u64).unwrap_or(0));
            let done = Event::Done {
                finish,
                usage: Usage {
                    prompt_tokens: stream::count_at(&v, Some("/prompt_eval_count")).unwrap_or(0),
                    completion_tokens: stream::count_at(&v, Some("/eval_count")).unwrap_or(self.chunks),
                },
                timings: Some(Timings { prompt: ns("prompt_eval_duration"), generation: ns("eval_duration") }),
            };
            return if text.is_empty() { Step::Done(done) } else { Step::TokenThenDone(text.to_owned(), done) };
        }
        if text.is_empty() {
            return Step::Skip;
        }
        self.chunks += 1;
        Step::Token(text.to_owned())
    }

    fn eof(&mut self) -> Result<Event, RuntimeError> {
        Err(RuntimeError::Unavailable {
            adapter: self.adapter.clone(),
            reason: "the stream ended before the generation finished".into(),
        })
    }
}
