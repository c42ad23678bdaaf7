//! Domain types of the contract: requests, events, results and status records.
//!
//! These are not wire types: each surface (OpenAI, Ollama, native, gRPC, the worker protocol) converts
//! to and from them explicitly.

use std::path::PathBuf;
use std::time::Duration;

/// What a runtime needs to know about the model it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name clients use (`smollm2:latest`).
    pub name: String,
    /// The name the runtime knows it by (a remote server's model id); defaults to `name`.
    pub upstream: String,
    /// A local GGUF file, for runtimes that load files (the embedded engine).
    pub path: Option<PathBuf>,
    /// Context length to allocate; `None`: the runtime's default.
    pub context_length: Option<u32>,
    /// Size in bytes on disk, when known (for the memory budget).
    pub size_bytes: Option<u64>,
}

impl ModelSpec {
    /// A spec for a model a remote runtime knows by the same name.
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        Self { upstream: name.clone(), name, path: None, context_length: None, size_bytes: None }
    }
}

/// A chat role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

impl Role {
    /// The conventional lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses a conventional role name.
    pub fn parse(s: &str) -> Result<Self, crate::RuntimeError> {
        match s {
            "system" | "developer" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            other => Err(crate::RuntimeError::InvalidRequest {
                message: format!("unknown role {other:?}: use system, user, assistant or tool"),
            }),
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// The input of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template by the runtime.
    Chat(Vec<ChatMessage>),
    /// Plain text. With `raw`, sent as-is; otherwise the runtime may wrap it as one user turn
    /// (Ollama's `/api/generate` semantics). OpenAI `/v1/completions` uses `raw = true`.
    Text {
        /// The prompt text.
        prompt: String,
        /// Skip the chat template.
        raw: bool,
    },
}

/// Sampling and stopping parameters. `None` means the runtime's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens (0: off).
    pub top_k: Option<u32>,
    /// Nucleus sampling threshold.
    pub top_p: Option<f32>,
    /// Minimum probability relative to the most likely token.
    pub min_p: Option<f32>,
    /// Penalty for repeated tokens (1.0: off).
    pub repeat_penalty: Option<f32>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Maximum tokens to generate.
    pub max_tokens: Option<u32>,
    /// Stop when any of these strings is produced (not included in the output).
    pub stop: Vec<String>,
    /// Constrain the output.
    pub constraint: Option<Constraint>,
}

/// An output constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A GBNF grammar (llama.cpp syntax).
    Grammar(String),
    /// A JSON object (OpenAI's `json_object`, Ollama's `format: "json"`).
    Json,
    /// JSON matching this JSON schema.
    JsonSchema(serde_json::Value),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The model name the client used.
    pub model: String,
    /// What to continue.
    pub prompt: Prompt,
    /// How to sample and when to stop.
    pub sampling: Sampling,
    /// How long to keep the model loaded after this request (Ollama's `keep_alive`); `None`: config.
    pub keep_alive: Option<Duration>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The client went away or asked to stop.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Timing of one generation, measured by the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Prompt processing time.
    pub prompt: Duration,
    /// Generation time after the first token.
    pub generation: Duration,
}

/// One event of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text produced (one or more tokens, always valid UTF-8 at chunk boundaries).
    Token(String),
    /// The last event.
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// Token counts.
        usage: Usage,
        /// Timings, when the runtime reports them.
        timings: Option<Timings>,
    },
}

/// A started generation, as returned by [`crate::Inference::generate`].
pub struct Generation {
    /// The runtime instance that answers (for the `x-ondevice-adapter` header).
    pub adapter: String,
    /// The model name as resolved (`name:tag`).
    pub model: String,
    /// The token stream.
    pub events: crate::EventStream,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").field("adapter", &self.adapter).field("model", &self.model).finish()
    }
}

/// An embedding request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// The model name the client used.
    pub model: String,
    /// Texts to embed.
    pub input: Vec<String>,
    /// Scale each vector to unit length.
    pub normalize: bool,
}

/// Embedding vectors, one per input, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The vectors.
    pub vectors: Vec<Vec<f32>>,
    /// Prompt token count.
    pub usage: Usage,
    /// The runtime instance that answered.
    pub adapter: String,
}

/// What an adapter supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Chat with a template.
    pub chat: bool,
    /// Raw text completion.
    pub completion: bool,
    /// Embeddings.
    pub embeddings: bool,
    /// Tokenization.
    pub tokenize: bool,
    /// Grammar / JSON-constrained output.
    pub constrained: bool,
    /// Loads and unloads models on request (otherwise models are managed by the remote side).
    pub manages_models: bool,
}

/// Health of an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Serving.
    Ready,
    /// Alive but not serving yet (starting, loading).
    Starting,
    /// Not serving; why.
    Unhealthy(String),
}

impl Health {
    /// Lowercase name for status output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Starting => "starting",
            Health::Unhealthy(_) => "unhealthy",
        }
    }

    /// Why it is not ready; `None` when ready.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Ready => None,
            Health::Starting => Some("starting"),
            Health::Unhealthy(why) => Some(why),
        }
    }
}

/// A model a client can name.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// `name:tag`.
    pub name: String,
    /// Registry digest (`sha256:…`), when the model is in the registry.
    pub digest: Option<String>,
    /// Bytes on disk, when known.
    pub size_bytes: Option<u64>,
    /// Unix seconds the model was added, when known.
    pub created: Option<i64>,
    /// Model family / architecture, when known.
    pub family: Option<String>,
    /// Quantization, when known.
    pub quantization: Option<String>,
    /// Parameter count, when known.
    pub parameters: Option<u64>,
    /// The runtimes that may serve it, in fallback order.
    pub runtimes: Vec<String>,
}

/// A model held by a runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    /// `name:tag`.
    pub name: String,
    /// The runtime holding it.
    pub runtime: String,
    /// Bytes it is accounted for in the memory budget.
    pub size_bytes: u64,
    /// Unix seconds of the last request.
    pub last_used: i64,
    /// Unix seconds when keep-alive unloads it; `None`: never.
    pub expires_at: Option<i64>,
}

/// A runtime as seen by the orchestrator.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeStatus {
    /// Instance name.
    pub name: String,
    /// Adapter kind.
    pub kind: String,
    /// Last health check.
    pub health: Health,
    /// Circuit breaker: `closed` (serving), `open` (skipped until `retry_at`), `half-open` (one trial).
    pub circuit: String,
    /// Consecutive failures counted by the breaker.
    pub failures: u32,
    /// Models it currently holds.
    pub loaded: Vec<String>,
}
