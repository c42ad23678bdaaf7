//! The runtime contract: what every model runtime (the embedded llama.cpp engine worker, llama-server,
//! vLLM / OpenAI-compatible servers, Ollama, config-declared REST runtimes) offers the daemon, and what
//! the orchestrator offers the API surfaces.
//!
//! - [`Runtime`]: one adapter instance (load, unload, health, generate as a token-event stream, embed,
//!   tokenize, capabilities).
//! - [`Inference`]: the facade the HTTP/WebSocket/gRPC surfaces call; the orchestrator implements it by
//!   routing each model to a chain of runtimes.
//! - [`wire`]: the JSON protocol between the daemon and an `ondevice worker` process.
//!
//! This crate is deliberately tiny: serde, thiserror and `futures-core` only. Implementations live in
//! sibling crates that never depend on each other.
#![warn(missing_docs)]

mod error;
mod types;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

pub use error::RuntimeError;
pub use types::*;

/// A boxed, sendable future: the trait objects below return these so they stay `dyn`-compatible.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stream of generation events. It ends after exactly one [`Event::Done`], or after an `Err`.
/// Dropping it cancels the generation (the runtime frees the sequence's slot).
pub type EventStream = Pin<Box<dyn futures_core::Stream<Item = Result<Event, RuntimeError>> + Send>>;

/// One runtime adapter instance (for example "the embedded engine" or "llama-server at URL").
///
/// Methods take `&self`; adapters are shared behind `Arc` and handle their own concurrency.
pub trait Runtime: Send + Sync {
    /// The instance name from config (for example `embedded`, `lan-vllm`); named in the
    /// `x-ondevice-adapter` response header and in `/api/v1/runtimes`.
    fn name(&self) -> &str;
    /// The adapter kind (`embedded`, `llama-server`, `openai`, `ollama`, `rest`).
    fn kind(&self) -> &'static str;
    /// What this adapter can do.
    fn capabilities(&self) -> Capabilities;
    /// Makes `model` ready to serve. Idempotent: loading a loaded model succeeds at once.
    fn load(&self, model: &ModelSpec) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Releases `model`. Unloading a model that is not loaded succeeds.
    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Liveness and readiness of the adapter (its process or remote server).
    fn health(&self) -> BoxFuture<'_, Health>;
    /// Starts a generation; the stream yields tokens as the runtime produces them.
    fn generate(&self, model: &ModelSpec, request: GenerateRequest)
    -> BoxFuture<'_, Result<EventStream, RuntimeError>>;
    /// Embeds each input.
    fn embed(&self, model: &ModelSpec, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>>;
    /// Token ids of `text` under `model`'s vocabulary.
    fn tokenize(&self, model: &ModelSpec, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>>;
    /// Token ids of `prompt` exactly as a generation would see them (a chat rendered with the
    /// model's own chat template). Runtimes that cannot say answer `Unsupported` (the default).
    fn tokenize_prompt(&self, model: &ModelSpec, prompt: &Prompt) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let _ = (model, prompt);
        let e =
            RuntimeError::Unsupported { adapter: self.name().to_owned(), what: "counting a prompt's tokens".into() };
        Box::pin(async move { Err(e) })
    }
    /// Models the runtime itself offers (remote runtimes list theirs; the embedded engine, none).
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>>;
}

/// What the API surfaces need: generation, embeddings and model/runtime management by model name.
/// Implemented by the orchestrator; the surfaces depend only on this trait.
pub trait Inference: Send + Sync {
    /// Routes `request.model` to a runtime and starts generating.
    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, RuntimeError>>;
    /// Routes `request.model` to a runtime and embeds.
    fn embed(&self, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, RuntimeError>>;
    /// Token ids of `text` under `model`.
    fn tokenize(&self, model: &str, text: &str) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>>;
    /// Token ids of `prompt` as a generation with `model` would see them (its chat template
    /// applied); `Unsupported` when the runtime serving `model` cannot say (the default).
    fn tokenize_prompt(&self, model: &str, prompt: Prompt) -> BoxFuture<'_, Result<Vec<u32>, RuntimeError>> {
        let _ = prompt;
        let e = RuntimeError::Unsupported { adapter: model.to_owned(), what: "counting a prompt's tokens".into() };
        Box::pin(async move { Err(e) })
    }
    /// Every model a client can name: registry models and models declared for runtimes.
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelEntry>, RuntimeError>>;
    /// Models currently loaded, most recently used first.
    fn loaded(&self) -> BoxFuture<'_, Vec<LoadedModel>>;
    /// Each configured runtime with its health and circuit state.
    fn runtimes(&self) -> BoxFuture<'_, Vec<RuntimeStatus>>;
    /// Loads `model` now (hot load); returns which runtime holds it.
    fn load(&self, model: &str) -> BoxFuture<'_, Result<LoadedModel, RuntimeError>>;
    /// Unloads `model` from every runtime holding it; `false` when it was not loaded.
    fn unload(&self, model: &str) -> BoxFuture<'_, Result<bool, RuntimeError>>;
    /// `None` when healthy; otherwise why the daemon is degraded (shown in `/readyz` details).
    fn degraded(&self) -> Option<String>;
}
