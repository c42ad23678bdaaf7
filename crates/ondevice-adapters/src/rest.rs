//! Kind `rest`: a REST runtime whose request and response shapes are declared in config
//! (`[runtimes.NAME.generate]`, optional `[runtimes.NAME.embed]`; see `ondevice_config::runtimes`), so a
//! new REST runtime needs no code change.
//!
//! The body template is a TOML table turned into JSON: a string that is exactly one placeholder
//! (`"{{max_tokens}}"`) becomes that JSON value (number, array, object) and its key is dropped when the
//! value is unset; placeholders inside longer strings are replaced by their text. Header values that are
//! `env:`/`file:` references are resolved when the adapter is built; `{{api_key}}` in a header becomes the
//! runtime's key. Answers are read as one JSON body, NDJSON lines or SSE `data:` events, with JSON
//! pointers for the text, the done flag, the finish reason, the token counts and an error message.

use std::time::Duration;

use ondevice_config::runtimes::{HttpMethod, ResponseMode, RestEmbed, RestGenerate, RuntimeConfig, placeholders};
use ondevice_config::{Secret, SecretRef};
use ondevice_runtime::{
    BoxFuture, Capabilities, EmbedRequest, Embeddings, Event, EventStream, FinishReason, GenerateRequest, Health,
    ModelSpec, Prompt, Runtime, RuntimeError, Usage,
};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::http::Remote;
use crate::stream::{self, Decoder, Step};
use crate::{AdapterError, HttpOptions};

/// A config-declared REST runtime.
#[derive(Debug)]
pub struct RestAdapter {
    remote: Remote,
    generate: RestGenerate,
    generate_headers: Vec<(HeaderName, Secret)>,
    embed: Option<(RestEmbed, Vec<(HeaderName, Secret)>)>,
    health_path: Option<String>,
    models: Vec<String>,
}

impl RestAdapter {
    /// Builds the adapter from a `[runtimes.NAME]` entry of kind `rest` (validated by config loading);
    /// resolves `env:`/`file:` header values now.
    pub fn from_config(name: &str, config: &RuntimeConfig, options: HttpOptions) -> Result<Self, AdapterError> {
        let generate = config.generate.clone().ok_or_else(|| AdapterError::Mapping {
            runtime: name.to_owned(),
            key: "generate".into(),
            message: "kind = \"rest\" needs a generate mapping".into(),
        })?;
        let remote = Remote::new(name, &options, "")?;
        let generate_headers = headers(name, "generate.headers", &generate.headers, remote.key())?;
        let embed = match &config.embed {
            Some(e) => Some((e.clone(), headers(name, "embed.headers", &e.headers, remote.key())?)),
            None => None,
        };
        Ok(RestAdapter {
            remote,
            generate,
            generate_headers,
            embed,
            health_path: config.health.path.clone(),
            models: config.models.iter().map(|m| m.name().to_owned()).collect(),
        })
    }

    fn request(
        &self,
        method: HttpMethod,
        path: &str,
        model: &str,
        headers: &[(HeaderName, Secret)],
    ) -> reqwest::RequestBuilder {
        let path = path.replace("{{model}}", model).replace("{{ model }}", model);
        let method = match method {
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Get => Method::GET,
        };
        let mut rb = self.remote.bare(method, &path);
        for (name, value) in headers {
            if let Ok(mut v) = HeaderValue::from_str(value.expose()) {
                v.set_sensitive(true);
                rb = rb.header(name.clone(), v);
            }
        }
        rb
    }

    fn unsupported(&self, what: &str) -> RuntimeError {
        RuntimeError::Unsupported { adapter: self.remote.name.clone(), what: what.to_owned() }
    }
}

/// Resolves header templates: secret references and `{{api_key}}`.
fn headers(
    runtime: &str,
    key: &str,
    headers: &std::collections::BTreeMap<String, String>,
    api_key: Option<&Secret>,
) -> Result<Vec<(HeaderName, Secret)>, AdapterError> {
    let mapping = |message: String| AdapterError::Mapping { runtime: runtime.to_owned(), key: key.to_owned(), message };
    let mut out = Vec::new();
    for (name, value) in headers {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| mapping(format!("{name:?} is not a header name")))?;
        let resolved = if SecretRef::is_reference(value) {
            SecretRef::parse(value)
                .and_then(|r| r.resolve())
                .map_err(|source| AdapterError::Secret { runtime: runtime.to_owned(), source })?
        } else if placeholders(value).contains(&"api_key") {
            let k = api_key
                .ok_or_else(|| mapping(format!("header {name} uses {{{{api_key}}}} but the runtime has no api_key")))?;
            Secret::new(value.replace("{{api_key}}", k.expose()).replace("{{ api_key }}", k.expose()))
        } else {
            Secret::new(value.clone())
        };
        if HeaderValue::from_str(resolved.expose()).is_err() {
            return Err(mapping(format!("the value of header {name} is not a valid header value")));
        }
        out.push((header, resolved));
    }
    Ok(out)
}

/// The placeholder values of a generation.
fn generate_vars(model: &ModelSpec, request: &GenerateRequest, streaming: bool) -> Map<String, Value> {
    let s = &request.sampling;
    let (prompt, messages, raw) = match &request.prompt {
        Prompt::Text { prompt, raw } => (prompt.clone(), json!([{"role": "user", "content": prompt}]), *raw),
        Prompt::Chat(m) => {
            let mut text: String = m.iter().map(|m| format!("{}: {}\n", m.role.as_str(), m.content)).collect();
            text.push_str("assistant:");
            let list = m.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
            (text, Value::Array(list), false)
        }
    };
    let mut vars = Map::new();
    vars.insert("model".into(), json!(model.upstream));
    vars.insert("prompt".into(), json!(prompt));
    vars.insert("messages".into(), messages);
    vars.insert("raw".into(), json!(raw));
    vars.insert("stream".into(), json!(streaming));
    let optional: [(&str, Option<Value>); 8] = [
        ("max_tokens", s.max_tokens.map(Value::from)),
        ("temperature", s.temperature.map(Value::from)),
        ("top_p", s.top_p.map(Value::from)),
        ("top_k", s.top_k.map(Value::from)),
        ("min_p", s.min_p.map(Value::from)),
        ("repeat_penalty", s.repeat_penalty.map(Value::from)),
        ("seed", s.seed.map(Value::from)),
        ("stop", (!s.stop.is_empty()).then(|| json!(s.stop))),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            vars.insert(k.into(), v);
        }
    }
    vars
}

/// Renders a TOML template into JSON; `None` means "drop this key" (an unset whole-value placeholder).
pub(crate) fn render(template: &toml::Value, vars: &Map<String, Value>) -> Option<Value> {
    Some(match template {
        toml::Value::String(s) => {
            let trimmed = s.trim();
            let whole = trimmed.starts_with("{{") && trimmed.ends_with("}}") && placeholders(trimmed).len() == 1;
            if whole {
                return vars.get(placeholders(trimmed)[0]).cloned();
            }
            let mut out = s.clone();
            for p in placeholders(s) {
                let text = match vars.get(p) {
                    Some(Value::String(v)) => v.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                out = out.replace(&format!("{{{{{p}}}}}"), &text).replace(&format!("{{{{ {p} }}}}"), &text);
            }
            Value::String(out)
        }
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().filter_map(|v| render(v, vars)).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.iter().filter_map(|(k, v)| Some((k.clone(), render(v, vars)?))).collect())
        }
    })
}

impl Runtime for RestAdapter {
    fn name(&self) -> &str {
        &self.remote.name
    }

    fn kind(&self) -> &'static str {
        "rest"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: true,
            completion: true,
            embeddings: self.embed.is_some(),
            tokenize: false,
            constrained: false,
            manages_models: false,
        }
    }

    fn load(&self, _model: &ModelSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            match self.health().await {
                Health::Unhealthy(reason) => {
                    Err(RuntimeError::Unavailable { adapter: self.remote.name.clone(), reason })
                }
                _ => Ok(()),
            }
        })
    }

    fn unload(&self, _model: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    /// With `health.path`: a 2xx answer there. Without: any HTTP answer from the base URL.
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let path = self.health_path.as_deref().unwrap_or("/");
            let rb = self.remote.bare(Method::GET, path).timeout(self.remote.timeout.min(Duration::from_secs(10)));
            let _flow = match self.remote.gate() {
                Ok(f) => f,
                Err(e) => return Health::Unhealthy(e.to_string()),
            };
            match rb.send().await {
                Ok(r) if r.status().is_success() || self.health_path.is_none() => Health::Ready,
                Ok(r) => Health::Unhealthy(format!("{path} answered {}", r.status())),
                Err(e) => Health::Unhealthy(self.remote.transport(e).to_string()),
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
            if request.sampling.constraint.is_some() {
                return Err(self.unsupported("constrained output"));
            }
            let g = &self.generate;
            let vars = generate_vars(&model, &request, g.response != ResponseMode::Json);
            let body = render(&toml::Value::Table(g.body.clone()), &vars).unwrap_or(Value::Null);
            let mut rb = self.request(g.method, &g.path, &model.upstream, &self.generate_headers);
            if g.method != HttpMethod::Get {
                rb = rb.json(&body);
            }
            let mut decoder = ShapeDecoder {
                shape: g.clone(),
                adapter: self.remote.name.clone(),
                usage: Usage::default(),
                finish: None,
                chunks: 0,
            };
            if g.response == ResponseMode::Json {
                let v = self.remote.json(rb).await?;
                let items = decoder.whole(&v);
                return Ok(Box::pin(futures_util::stream::iter(items)) as EventStream);
            }
            let resp = self.remote.send_stream(rb).await?;
            Ok(stream::decode(self.remote.body(resp), decoder, None, None))
        })
    }

    fn embed(&self, model: &ModelSpec, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>> {
        let model = model.clone();
        Box::pin(async move {
            let Some((e, headers)) = &self.embed else {
                return Err(self.unsupported("embeddings (declare [runtimes.NAME.embed])"));
            };
            let mut vars = Map::new();
            vars.insert("model".into(), json!(model.upstream));
            vars.insert("input".into(), json!(request.input));
            let body = render(&toml::Value::Table(e.body.clone()), &vars).unwrap_or(Value::Null);
            let mut rb = self.request(e.method, &e.path, &model.upstream, headers);
            if e.method != HttpMethod::Get {
                rb = rb.json(&body);
            }
            let v = self.remote.json(rb).await?;
            let mut vectors = stream::pointer(&v, &e.vectors)
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
                    message: format!("no array of {} vectors at {:?}", request.input.len(), e.vectors),
                })?;
            if request.normalize {
                stream::normalize(&mut vectors);
            }
            let prompt_tokens = stream::count_at(&v, e.prompt_tokens.as_deref()).unwrap_or(0);
            Ok(Embeddings {
                vectors,
                usage: Usage { prompt_tokens, completion_tokens: 0 },
                adapter: self.remote.name.clone(),
            })
        })
    }

    fn tokenize(&self, _model: &ModelSpec, _text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        Box::pin(async move { Err(self.unsupported("tokenize")) })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move { Ok(self.models.clone()) })
    }
}

/// Reads answers of the declared shape.
struct ShapeDecoder {
    shape: RestGenerate,
    adapter: String,
    usage: Usage,
    finish: Option<FinishReason>,
    chunks: u32,
}

impl ShapeDecoder {
    fn error(&self, v: &Value) -> Option<RuntimeError> {
        let e = stream::pointer(v, self.shape.error.as_deref()?)?;
        if e.is_null() || e == &Value::Bool(false) {
            return None;
        }
        let message = e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string());
        Some(RuntimeError::Upstream { adapter: self.adapter.clone(), status: 200, message })
    }

    /// Records usage and finish reason; returns the text of this object.
    fn absorb(&mut self, v: &Value) -> String {
        if let Some(n) = stream::count_at(v, self.shape.prompt_tokens.as_deref()) {
            self.usage.prompt_tokens = n;
        }
        if let Some(n) = stream::count_at(v, self.shape.completion_tokens.as_deref()) {
            self.usage.completion_tokens = n;
        }
        if let Some(r) = self.shape.finish_reason.as_deref().and_then(|p| stream::pointer(v, p)).and_then(Value::as_str)
        {
            self.finish = Some(if r.contains("length") || r.starts_with("max") {
                FinishReason::Length
            } else {
                FinishReason::Stop
            });
        }
        let text = stream::pointer(v, &self.shape.text).and_then(Value::as_str).unwrap_or("").to_owned();
        if !text.is_empty() {
            self.chunks += 1;
        }
        text
    }

    fn done(&self) -> Event {
        let mut usage = self.usage;
        if self.shape.completion_tokens.is_none() {
            usage.completion_tokens = self.chunks;
        }
        Event::Done { finish: self.finish.unwrap_or(FinishReason::Stop), usage, timings: None }
    }

    fn whole(&mut self, v: &Value) -> Vec<Result<Event, RuntimeError>> {
        if let Some(e) = self.error(v) {
            return vec![Err(e)];
        }
        if stream::pointer(v, &self.shape.text).and_then(Value::as_str).is_none() {
            let message = format!("the answer has no text at {:?}", self.shape.text);
            return vec![Err(RuntimeError::Upstream { adapter: self.adapter.clone(), status: 200, message })];
        }
        let text = self.absorb(v);
        let mut out = Vec::new();
        if !text.is_empty() {
            out.push(Ok(Event::Token(text)));
        }
        out.push(Ok(self.done()));
        out
    }
}

impl Decoder for ShapeDecoder {
    fn line(&mut self, line: &str) -> Step {
        let payload = match self.shape.response {
            ResponseMode::Sse => match stream::sse_data(line) {
                Some(d) if d.trim() == "[DONE]" => return Step::Done(self.done()),
                Some(d) => d,
                None => return Step::Skip,
            },
            _ => line,
        };
        if payload.trim().is_empty() {
            return Step::Skip;
        }
        let v: Value = match serde_json::from_str(payload) {
            Ok(v) => v,
            Err(e) => {
                let message = format!("stream item is not JSON: {e}");
                return Step::Fail(RuntimeError::Upstream { adapter: self.adapter.clone(), status: 200, message });
            }
        };
        if let Some(e) = self.error(&v) {
            return Step::Fail(e);
        }
        let text = self.absorb(&v);
        let is_done = self.shape.done.as_deref().and_then(|p| stream::pointer(&v, p)).is_some_and(|d| match d {
            Value::Bool(b) => *b,
            Value::Null => false,
            Value::String(s) => !s.is_empty() && s != "false",
            _ => true,
        });
        match (is_done, text.is_empty()) {
            (true, true) => Step::Done(self.done()),
            (true, false) => Step::TokenThenDone(text, self.done()),
            (false, true) => Step::Skip,
            (false, false) => Step::Token(text),
        }
    }

    fn eof(&mut self) -> Result<Event, RuntimeError> {
        if self.shape.done.is_none() {
            return Ok(self.done());
        }
        Err(RuntimeError::Unavailable {
            adapter: self.adapter.clone(),
            reason: "the stream ended before its done flag".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_substitute_json_values_and_drop_unset_keys() {
        let t: toml::Table = toml::from_str(
            r#"
            model = "{{model}}"
            n = "{{max_tokens}}"
            t = "{{ temperature }}"
            note = "for {{model}}: {{prompt}}"
            msgs = "{{messages}}"
            fixed = [1, "{{stop}}", true]
            "#,
        )
        .unwrap();
        let mut vars = Map::new();
        vars.insert("model".into(), json!("m\"x"));
        vars.insert("max_tokens".into(), json!(5));
        vars.insert("prompt".into(), json!("say \"hi\""));
        vars.insert("messages".into(), json!([{"role": "user", "content": "hi"}]));
        let v = render(&toml::Value::Table(t), &vars).unwrap();
        assert_eq!(
            v,
            json!({"model": "m\"x", "n": 5, "note": "for m\"x: say \"hi\"", "msgs": [{"role": "user", "content": "hi"}], "fixed": [1, true]})
        );
    }
}
