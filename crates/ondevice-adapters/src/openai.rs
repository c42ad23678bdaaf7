//! Kinds `openai` and `llama-server`: any OpenAI-compatible server (vLLM, LocalAI, another ondevice,
//! llama.cpp's `llama-server`). Chat goes to `/v1/chat/completions`, raw text to `/v1/completions`, both
//! streamed as SSE (`data:` lines ending with `data: [DONE]`) with `stream_options.include_usage`;
//! servers that send no usage get the streamed chunks counted. `/v1/embeddings` embeds, `/v1/models`
//! lists models and answers health. The `llama-server` flavour adds `GET /health` (503 while loading →
//! `Starting`), `POST /tokenize`, GBNF grammars and llama.cpp's sampling names.

use std::time::Duration;

use ondevice_runtime::{
    BoxFuture, Capabilities, ChatMessage, Constraint, EmbedRequest, Embeddings, Event, EventStream, FinishReason,
    GenerateRequest, Health, ModelSpec, Prompt, Role, Runtime, RuntimeError, Timings, Usage,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::http::Remote;
use crate::stream::{self, Decoder, Step};
use crate::{AdapterError, HttpOptions};

/// Which server dialect to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    LlamaServer,
}

/// An OpenAI-compatible runtime.
#[derive(Debug)]
pub struct OpenAiAdapter {
    remote: Remote,
    flavor: Flavor,
}

impl OpenAiAdapter {
    /// Kind `openai`: `options.base_url` with or without the trailing `/v1`.
    pub fn new(name: &str, options: HttpOptions) -> Result<Self, AdapterError> {
        Ok(OpenAiAdapter { remote: Remote::new(name, &options, "/v1")?, flavor: Flavor::OpenAi })
    }

    /// Kind `llama-server`: the same, plus llama-server's `/health`, `/tokenize` and sampling options.
    pub fn llama_server(name: &str, options: HttpOptions) -> Result<Self, AdapterError> {
        Ok(OpenAiAdapter { remote: Remote::new(name, &options, "/v1")?, flavor: Flavor::LlamaServer })
    }

    fn body(&self, model: &ModelSpec, request: &GenerateRequest) -> Result<(&'static str, Value), RuntimeError> {
        let s = &request.sampling;
        let mut body = json!({
            "model": model.upstream,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let path = match &request.prompt {
            Prompt::Text { prompt, raw: true } => {
                body["prompt"] = json!(prompt);
                "/v1/completions"
            }
            Prompt::Text { prompt, raw: false } => {
                body["messages"] = messages(&[ChatMessage::new(Role::User, prompt.clone())]);
                "/v1/chat/completions"
            }
            Prompt::Chat(m) => {
                body["messages"] = messages(m);
                "/v1/chat/completions"
            }
        };
        let llama = self.flavor == Flavor::LlamaServer;
        let fields: [(&str, Option<Value>); 7] = [
            ("max_tokens", s.max_tokens.map(Value::from)),
            ("temperature", s.temperature.map(Value::from)),
            ("top_p", s.top_p.map(Value::from)),
            ("seed", s.seed.map(Value::from)),
            ("top_k", s.top_k.map(Value::from)),
            ("min_p", s.min_p.map(Value::from)),
            (if llama { "repeat_penalty" } else { "repetition_penalty" }, s.repeat_penalty.map(Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        if !s.stop.is_empty() {
            body["stop"] = json!(s.stop);
        }
        match &s.constraint {
            None => {}
            Some(Constraint::Json) => body["response_format"] = json!({"type": "json_object"}),
            Some(Constraint::JsonSchema(schema)) => {
                body["response_format"] =
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}});
            }
            Some(Constraint::Grammar(g)) if llama => body["grammar"] = json!(g),
            Some(Constraint::Grammar(_)) => {
                return Err(RuntimeError::Unsupported {
                    adapter: self.remote.name.clone(),
                    what: "GBNF grammars (use JSON or a JSON schema)".into(),
                });
            }
        }
        Ok((path, body))
    }
}

fn messages(m: &[ChatMessage]) -> Value {
    Value::Array(m.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect())
}

impl Runtime for OpenAiAdapter {
    fn name(&self) -> &str {
        &self.remote.name
    }

    fn kind(&self) -> &'static str {
        match self.flavor {
            Flavor::OpenAi => "openai",
            Flavor::LlamaServer => "llama-server",
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: true,
            completion: true,
            embeddings: true,
            tokenize: self.flavor == Flavor::LlamaServer,
            constrained: true,
            manages_models: false,
        }
    }

    /// The remote server manages its models: loading checks that it is reachable and ready.
    fn load(&self, _model: &ModelSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            match self.health().await {
                Health::Ready => Ok(()),
                Health::Starting => Err(RuntimeError::Overloaded {
                    what: format!("runtime {:?} is still loading its model", self.remote.name),
                    retry_after: Duration::from_secs(1),
                }),
                Health::Unhealthy(reason) => {
                    Err(RuntimeError::Unavailable { adapter: self.remote.name.clone(), reason })
                }
            }
        })
    }

    fn unload(&self, _model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let path = match self.flavor {
                Flavor::LlamaServer => "/health",
                Flavor::OpenAi => "/v1/models",
            };
            let rb = self.remote.request(Method::GET, path).timeout(self.remote.timeout.min(Duration::from_secs(10)));
            match self.remote.send(rb).await {
                Ok(_) => Health::Ready,
                Err(RuntimeError::Overloaded { .. }) if self.flavor == Flavor::LlamaServer => Health::Starting,
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
            let resp = self.remote.send_stream(self.remote.request(Method::POST, path).json(&body)).await?;
            let decoder = SseDecoder { adapter: self.remote.name.clone(), finish: None, chunks: 0 };
            Ok(stream::decode(self.remote.body(resp), decoder, None, None))
        })
    }

    fn embed(&self, model: &ModelSpec, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        let model = model.upstream.clone();
        Box::pin(async move {
            let body = json!({"model": model, "input": request.input, "encoding_format": "float"});
            let v = self.remote.json(self.remote.request(Method::POST, "/v1/embeddings").json(&body)).await?;
            let bad = |what: &str| RuntimeError::Upstream {
                adapter: self.remote.name.clone(),
                status: 200,
                message: format!("embeddings answer {what}"),
            };
            let data = v.get("data").and_then(Value::as_array).ok_or_else(|| bad("has no data array"))?;
            let mut rows: Vec<(u64, Vec<f32>)> = Vec::with_capacity(data.len());
            for (i, d) in data.iter().enumerate() {
                let index = d.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
                let vec = d
                    .get("embedding")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("has an item without an embedding"))?
                    .iter()
                    .map(|x| x.as_f64().map(|f| f as f32))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| bad("has a non-numeric embedding"))?;
                rows.push((index, vec));
            }
            if rows.len() != request.input.len() {
                return Err(bad(&format!("has {} vectors for {} inputs", rows.len(), request.input.len())));
            }
            rows.sort_by_key(|r| r.0);
            let mut vectors: Vec<Vec<f32>> = rows.into_iter().map(|r| r.1).collect();
            if request.normalize {
                stream::normalize(&mut vectors);
            }
            let prompt_tokens = stream::count_at(&v, Some("/usage/prompt_tokens")).unwrap_or(0);
            Ok(Embeddings {
                vectors,
                usage: Usage { prompt_tokens, completion_tokens: 0 },
                adapter: self.remote.name.clone(),
            })
        })
    }

    fn tokenize(&self, _model: &ModelSpec, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let text = text.to_owned();
        Box::pin(async move {
            if self.flavor != Flavor::LlamaServer {
                return Err(RuntimeError::Unsupported { adapter: self.remote.name.clone(), what: "tokenize".into() });
            }
            let body = json!({"content": text, "add_special": false});
            let v = self.remote.json(self.remote.request(Method::POST, "/tokenize").json(&body)).await?;
            v.get("tokens")
                .and_then(Value::as_array)
                .and_then(|t| t.iter().map(|x| x.as_u64().map(|n| n as u32)).collect::<Option<Vec<u32>>>())
                .ok_or_else(|| RuntimeError::Upstream {
                    adapter: self.remote.name.clone(),
                    status: 200,
                    message: "tokenize answer has no token array".into(),
                })
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let v = self.remote.json(self.remote.request(Method::GET, "/v1/models")).await?;
            Ok(v.get("data")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned)).collect())
                .unwrap_or_default())
        })
    }
}

/// Decodes OpenAI SSE chunks (chat `delta.content` or completion `text`).
struct SseDecoder {
    adapter: String,
    finish: Option<FinishReason>,
    chunks: u32,
}

impl SseDecoder {
    fn done(&self, usage: Option<Usage>, timings: Option<Timings>) -> Event {
        Event::Done {
            finish: self.finish.unwrap_or(FinishReason::Stop),
            usage: usage.unwrap_or(Usage { prompt_tokens: 0, completion_tokens: self.chunks }),
            timings,
        }
    }
}

impl Decoder for SseDecoder {
    fn line(&mut self, line: &str) -> Step {
        let Some(data) = stream::sse_data(line) else {
            return Step::Skip;
        };
        if data.trim() == "[DONE]" {
            return Step::Done(self.done(None, None));
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                return Step::Fail(RuntimeError::Upstream {
                    adapter: self.adapter.clone(),
                    status: 200,
                    message: format!("stream chunk is not JSON: {e}"),
                });
            }
        };
        if let Some(err) = v.get("error") {
            return Step::Fail(RuntimeError::Upstream {
                adapter: self.adapter.clone(),
                status: err.get("code").and_then(Value::as_u64).unwrap_or(500) as u16,
                message: crate::http::upstream_message(&v.to_string()),
            });
        }
        let choice = v.pointer("/choices/0");
        if let Some(reason) = choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str) {
            self.finish = Some(if reason == "length" { FinishReason::Length } else { FinishReason::Stop });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            // The usage chunk comes last (before [DONE]); some servers end without [DONE] after it.
            let usage = Usage {
                prompt_tokens: stream::count_at(u, Some("/prompt_tokens")).unwrap_or(0),
                completion_tokens: stream::count_at(u, Some("/completion_tokens")).unwrap_or(self.chunks),
            };
            let timings = v.get("timings").map(|t| {
                let ms = |k: &str| {
                    Duration::from_secs_f64(t.get(k).and_then(Value::as_f64).unwrap_or(0.0).max(0.0) / 1000.0)
                };
                Timings { prompt: ms("prompt_ms"), generation: ms("predicted_ms") }
            });
            if choice.is_none() {
                return Step::Done(self.done(Some(usage), timings));
            }
        }
        let text = choice
            .and_then(|c| c.pointer("/delta/content").or_else(|| c.get("text")))
            .and_then(Value::as_str)
            .unwrap_or("");
        if text.is_empty() {
            return Step::Skip;
        }
        self.chunks += 1;
        Step::Token(text.to_owned())
    }

    fn eof(&mut self) -> Result<Event, RuntimeError> {
        match self.finish {
            // A server that ends the body after its last choice without `[DONE]`: accept.
            Some(_) => Ok(self.done(None, None)),
            None => Err(RuntimeError::Unavailable {
                adapter: self.adapter.clone(),
                reason: "the stream ended before the generation finished".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_chunks_without_usage_are_counted() {
        let mut d = SseDecoder { adapter: "a".into(), finish: None, chunks: 0 };
        assert!(matches!(d.line(r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#), Step::Skip));
        assert!(matches!(d.line(r#"data: {"choices":[{"delta":{"content":"Pa"}}]}"#), Step::Token(t) if t == "Pa"));
        assert!(matches!(d.line(": keep-alive"), Step::Skip));
        assert!(matches!(d.line(r#"data: {"choices":[{"text":"ris","finish_reason":"length"}]}"#), Step::Token(_)));
        match d.line("data: [DONE]") {
            Step::Done(Event::Done { finish, usage, .. }) => {
                assert_eq!(finish, FinishReason::Length);
                assert_eq!(usage, Usage { prompt_tokens: 0, completion_tokens: 2 });
            }
            _ => panic!("expected done"),
        }
        let mut d = SseDecoder { adapter: "a".into(), finish: None, chunks: 0 };
        assert!(matches!(
            d.line(r#"data: {"error":{"message":"boom","code":500}}"#),
            Step::Fail(RuntimeError::Upstream { status: 500, .. })
        ));
        assert!(d.eof().is_err(), "a stream without a finish reason that ends is an error");
    }
}
