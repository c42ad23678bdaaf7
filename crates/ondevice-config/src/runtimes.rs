//! `[runtimes.NAME]`: external model runtimes the daemon routes models to. The orchestrator builds one
//! adapter per entry (crate `ondevice-adapters`); the embedded engine needs no entry.
//!
//! ```toml
//! [runtimes.lan-vllm]
//! kind = "openai"                       # openai | llama-server | ollama | rest
//! base_url = "http://192.168.1.20:8000" # with or without a trailing /v1
//! api_key = "env:VLLM_API_KEY"          # or "file:/etc/ondevice/vllm.key"; literal keys are refused
//! models = ["qwen2.5:7b", { name = "llama3:8b", upstream = "meta-llama/Meta-Llama-3-8B-Instruct" }]
//! timeout_s = 300
//! health = { period_s = 10, timeout_s = 2 }
//!
//! # A REST runtime declared entirely here: no code change needed.
//! [runtimes.my-rest]
//! kind = "rest"
//! base_url = "http://127.0.0.1:9000"
//! api_key = "env:MY_REST_KEY"
//! models = ["tiny"]
//! [runtimes.my-rest.generate]
//! path = "/v2/infer"
//! headers = { Authorization = "Bearer {{api_key}}", X-Tenant = "ondevice" }
//! body = { model = "{{model}}", input = "{{prompt}}", opts = { max_new = "{{max_tokens}}", temp = "{{temperature}}" } }
//! response = "ndjson"                   # json | ndjson | sse
//! text = "/delta/text"                  # JSON pointers (RFC 6901) into each line / event / body
//! done = "/finished"
//! prompt_tokens = "/usage/in"
//! completion_tokens = "/usage/out"
//! [runtimes.my-rest.embed]
//! path = "/v2/embed"
//! body = { texts = "{{input}}" }
//! vectors = "/vectors"
//! ```
//!
//! In `body`, a string that is exactly one placeholder (`"{{max_tokens}}"`) is replaced by the JSON value
//! (a number, an array, an object), and the key is dropped when the value is unset; placeholders inside a
//! longer string are replaced by their text. See [`PLACEHOLDERS`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::SecretRef;

/// Placeholders allowed in REST templates, with what they become.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("model", "the upstream model name (string)"),
    ("prompt", "the prompt text; a chat is rendered as \"role: content\" lines ending with \"assistant:\""),
    ("messages", "the chat as [{role, content}, ...]; a text prompt becomes one user message"),
    ("raw", "whether the text prompt skips the chat template (bool)"),
    ("max_tokens", "maximum tokens to generate (number)"),
    ("temperature", "sampling temperature (number)"),
    ("top_p", "nucleus threshold (number)"),
    ("top_k", "top-k (number)"),
    ("min_p", "min-p (number)"),
    ("repeat_penalty", "repetition penalty (number)"),
    ("seed", "sampling seed (number)"),
    ("stop", "stop strings (array of strings)"),
    ("stream", "true for the ndjson and sse response modes (bool)"),
    ("input", "texts to embed (array of strings, embed only)"),
    ("api_key", "the runtime's resolved api_key (headers only)"),
];

/// Which adapter serves a runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// Any OpenAI-compatible server (vLLM, LocalAI, another ondevice, llama-server).
    Openai,
    /// llama.cpp's `llama-server`: OpenAI-compatible, plus `/health` and `/tokenize`.
    LlamaServer,
    /// An Ollama server.
    Ollama,
    /// A REST API described by the `generate` (and optional `embed`) mapping.
    Rest,
}

impl RuntimeKind {
    /// The adapter kind's name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Openai => "openai",
            RuntimeKind::LlamaServer => "llama-server",
            RuntimeKind::Ollama => "ollama",
            RuntimeKind::Rest => "rest",
        }
    }
}

/// One external runtime.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `openai`, `llama-server`, `ollama` or `rest`.
    pub kind: RuntimeKind,
    /// `http://` or `https://` URL of the server (for `openai`, with or without the trailing `/v1`).
    #[serde(deserialize_with = "http_url")]
    pub base_url: String,
    /// API key sent as `Authorization: Bearer` (REST: available as `{{api_key}}` in headers):
    /// `"env:VARIABLE"` or `"file:/path"`. Literal keys are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretRef>,
    /// Models this runtime serves: names, or `{ name, upstream }` when the runtime knows the model by
    /// another name.
    #[serde(default)]
    pub models: Vec<ModelMapping>,
    /// Seconds a request may take (for streams: the longest silence between two chunks).
    #[serde(default = "default_timeout_s")]
    #[schemars(range(min = 1))]
    pub timeout_s: u64,
    /// Seconds to wait for a TCP connection.
    #[serde(default = "default_connect_timeout_s")]
    #[schemars(range(min = 1))]
    pub connect_timeout_s: u64,
    /// How the orchestrator checks the runtime's health.
    #[serde(default)]
    pub health: HealthCheck,
    /// `rest` only: how to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<RestGenerate>,
    /// `rest` only: how to embed (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<RestEmbed>,
}

fn default_timeout_s() -> u64 {
    300
}

fn default_connect_timeout_s() -> u64 {
    5
}

fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(url),
        _ => Err(serde::de::Error::custom(format!(
            "base_url must be an http:// or https:// URL such as \"http://127.0.0.1:8080\", got {url:?}"
        ))),
    }
}

/// A model a runtime serves: `"name"` or `{ name = "name", upstream = "id-on-the-runtime" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(untagged)]
pub enum ModelMapping {
    /// Same name on both sides.
    Name(String),
    /// A client-facing name mapped to the runtime's own model id.
    Mapped {
        /// The name clients use.
        name: String,
        /// The runtime's model id.
        upstream: String,
    },
}

impl ModelMapping {
    /// The name clients use.
    pub fn name(&self) -> &str {
        match self {
            ModelMapping::Name(n) | ModelMapping::Mapped { name: n, .. } => n,
        }
    }

    /// The name the runtime knows.
    pub fn upstream(&self) -> &str {
        match self {
            ModelMapping::Name(n) | ModelMapping::Mapped { upstream: n, .. } => n,
        }
    }
}

impl<'de> Deserialize<'de> for ModelMapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ModelMapping;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model name or { name = \"...\", upstream = \"...\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelMapping, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("model names must not be empty"));
                }
                Ok(ModelMapping::Name(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ModelMapping, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Raw {
                    name: String,
                    upstream: String,
                }
                let r = Raw::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if r.name.trim().is_empty() || r.upstream.trim().is_empty() {
                    return Err(serde::de::Error::custom("model name and upstream must not be empty"));
                }
                Ok(ModelMapping::Mapped { name: r.name, upstream: r.upstream })
            }
        }
        d.deserialize_any(V)
    }
}

/// `health = { ... }`: periodic health checks of a runtime.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Seconds between checks.
    pub period_s: u64,
    /// Seconds a check may take.
    pub timeout_s: u64,
    /// Consecutive failures before the runtime counts as unhealthy.
    pub failure_threshold: u32,
    /// `rest` only: path answered with 2xx when healthy (default: a TCP connect check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck { period_s: 10, timeout_s: 2, failure_threshold: 3, path: None }
    }
}

/// How a REST runtime's answer arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMode {
    /// One JSON body with the whole answer.
    #[default]
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Server-sent events: one JSON object per `data:` line.
    Sse,
}

/// HTTP method of a REST call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// GET (no body is sent).
    Get,
}

/// `[runtimes.NAME.generate]`: the request and the response shape of a generation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestGenerate {
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Path appended to `base_url`, starting with `/`; may contain `{{model}}`.
    pub path: String,
    /// Extra headers. A value that is `"env:NAME"` or `"file:PATH"` is a secret reference;
    /// `{{api_key}}` inside a value becomes the runtime's `api_key`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON request body template (a TOML table) with `{{placeholders}}`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub body: toml::Table,
    /// `json`, `ndjson` or `sse`.
    #[serde(default)]
    pub response: ResponseMode,
    /// JSON pointer to the generated text (in the body, or in each line / event when streaming).
    pub text: String,
    /// JSON pointer to a flag that is true on the last line / event (streaming modes); without it,
    /// the stream ends with the body (or an SSE `[DONE]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// JSON pointer to the finish reason (values containing `length` or starting with `max` mean length, anything else stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// JSON pointer to the prompt token count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<String>,
    /// JSON pointer to the generated token count (without it, streamed chunks are counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<String>,
    /// JSON pointer to an error message; when present in a body, line or event, the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `[runtimes.NAME.embed]`: the request and the response shape of embeddings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestEmbed {
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Path appended to `base_url`.
    pub path: String,
    /// Extra headers (as in `generate`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON request body template; `{{input}}` is the array of texts.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub body: toml::Table,
    /// JSON pointer to the array of vectors.
    pub vectors: String,
    /// JSON pointer to the prompt token count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<String>,
}

/// Placeholders (without braces) used in `text`, in order of appearance.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    out
}

/// Checks one runtime; `Err((key suffix, message))` names the offending key below `runtimes.NAME`.
pub(crate) fn validate(rt: &RuntimeConfig) -> Result<(), (String, String)> {
    if rt.timeout_s == 0 {
        return Err(("timeout_s".into(), "must be at least 1".into()));
    }
    if rt.connect_timeout_s == 0 {
        return Err(("connect_timeout_s".into(), "must be at least 1".into()));
    }
    for (key, value) in [
        ("period_s", rt.health.period_s),
        ("timeout_s", rt.health.timeout_s),
        ("failure_threshold", u64::from(rt.health.failure_threshold)),
    ] {
        if value == 0 {
            return Err((format!("health.{key}"), "must be at least 1".into()));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &rt.models {
        if !seen.insert(m.name()) {
            return Err(("models".into(), format!("model {:?} is listed twice", m.name())));
        }
    }
    if rt.kind != RuntimeKind::Rest {
        for (key, present) in [("generate", rt.generate.is_some()), ("embed", rt.embed.is_some())] {
            if present {
                return Err((key.into(), format!("only kind = \"rest\" takes a {key} mapping; remove it")));
            }
        }
        if rt.health.path.is_some() {
            return Err(("health.path".into(), "only kind = \"rest\" takes a health path".into()));
        }
        return Ok(());
    }
    let Some(g) = &rt.generate else {
        return Err((
            "generate".into(),
            "kind = \"rest\" needs a [runtimes.NAME.generate] table with path, body and text".into(),
        ));
    };
    if let Some(p) = &rt.health.path {
        check_path("health.path", p)?;
    }
    check_path("generate.path", &g.path)?;
    check_template("generate", &g.headers, &g.body, &["input"])?;
    for (key, ptr) in [
        ("text", Some(&g.text)),
        ("done", g.done.as_ref()),
        ("finish_reason", g.finish_reason.as_ref()),
        ("prompt_tokens", g.prompt_tokens.as_ref()),
        ("completion_tokens", g.completion_tokens.as_ref()),
        ("error", g.error.as_ref()),
    ] {
        if let Some(p) = ptr {
            check_pointer(&format!("generate.{key}"), p)?;
        }
    }
    if let Some(e) = &rt.embed {
        check_path("embed.path", &e.path)?;
        check_template("embed", &e.headers, &e.body, &[])?;
        check_pointer("embed.vectors", &e.vectors)?;
        if let Some(p) = &e.prompt_tokens {
            check_pointer("embed.prompt_tokens", p)?;
        }
    }
    Ok(())
}

fn check_path(key: &str, path: &str) -> Result<(), (String, String)> {
    if !path.starts_with('/') {
        return Err((key.into(), format!("{path:?} must start with /")));
    }
    for p in placeholders(path) {
        if p != "model" {
            return Err((key.into(), format!("only {{{{model}}}} may appear in a path, not {{{{{p}}}}}")));
        }
    }
    Ok(())
}

fn check_pointer(key: &str, ptr: &str) -> Result<(), (String, String)> {
    if !(ptr.is_empty() || ptr.starts_with('/')) {
        return Err((
            key.into(),
            format!("{ptr:?} is not a JSON pointer: write \"/field/0/sub\" (or \"\" for the root)"),
        ));
    }
    Ok(())
}

fn check_template(
    section: &str,
    headers: &BTreeMap<String, String>,
    body: &toml::Table,
    forbidden: &[&str],
) -> Result<(), (String, String)> {
    let known = |p: &str| PLACEHOLDERS.iter().any(|(n, _)| *n == p);
    for (name, value) in headers {
        let key = format!("{section}.headers");
        if SecretRef::is_reference(value) {
            SecretRef::parse(value).map_err(|e| (key.clone(), format!("header {name}: {e}")))?;
        }
        for p in placeholders(value) {
            if !known(p) {
                return Err((key, format!("header {name}: unknown placeholder {{{{{p}}}}}")));
            }
        }
    }
    let mut strings = Vec::new();
    collect_strings(&toml::Value::Table(body.clone()), &mut strings);
    for s in strings {
        for p in placeholders(&s) {
            let list = || PLACEHOLDERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            if !known(p) || p == "api_key" || forbidden.contains(&p) {
                return Err((
                    format!("{section}.body"),
                    format!("unknown placeholder {{{{{p}}}}} in {s:?}: use one of {}", list()),
                ));
            }
        }
    }
    Ok(())
}

fn collect_strings(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        toml::Value::Table(t) => t.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}
