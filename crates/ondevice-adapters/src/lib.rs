//! Runtime adapters of the daemon: each module implements [`ondevice_runtime::Runtime`] for one family
//! of runtimes, and none depends on another (they share only the small helpers in `stream` and `http`).
//!
//! | module       | kind(s)                   | talks to                                                   |
//! |--------------|---------------------------|------------------------------------------------------------|
//! | [`openai`]   | `openai`, `llama-server`  | any OpenAI-compatible base URL (SSE streaming)             |
//! | [`ollama`]   | `ollama`                  | Ollama's documented `/api/*` (NDJSON streaming)            |
//! | [`rest`]     | `rest`                    | a REST API whose shape is declared in `[runtimes.NAME]`    |
//! | [`embedded`] | `embedded`                | `ondevice worker` processes over Unix sockets or named pipes ([`ondevice_runtime::wire`]) |
//!
//! The orchestrator builds the remote adapters from config with [`from_config`]; the embedded adapter
//! takes a [`embedded::WorkerLauncher`] that the binary implements with the supervisor (this crate
//! never spawns processes).
//!
//! Error mapping (all adapters): connection failures → `Unavailable`, 5xx → `Upstream` (fallback-worthy),
//! 429/503 → `Overloaded` with the server's `Retry-After`, 400/422 → `InvalidRequest`, other 4xx →
//! `Upstream`, slow answers → `Timeout`. API keys never appear in errors or logs.
#![warn(missing_docs)]

pub mod embedded;
mod error;
mod http;
mod ipc;
pub mod ollama;
pub mod openai;
pub mod rest;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use ondevice_config::Secret;
use ondevice_config::runtimes::{RuntimeConfig, RuntimeKind};
use ondevice_runtime::Runtime;

pub use error::AdapterError;

/// Connection options shared by the HTTP adapters.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `http://` or `https://` URL of the server.
    pub base_url: String,
    /// Sent as `Authorization: Bearer` (REST: `{{api_key}}` in headers).
    pub api_key: Option<Secret>,
    /// Longest a request may take; for streams, the longest silence between two chunks.
    pub timeout: Duration,
    /// Longest a TCP connection may take to open.
    pub connect_timeout: Duration,
}

impl HttpOptions {
    /// Options with the config defaults (300 s timeout, 5 s connect timeout) and no key.
    pub fn new(base_url: impl Into<String>) -> Self {
        HttpOptions {
            base_url: base_url.into(),
            api_key: None,
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The options of a `[runtimes.NAME]` entry, with its `api_key` already resolved by the caller.
    pub fn from_config(config: &RuntimeConfig, api_key: Option<Secret>) -> Self {
        HttpOptions {
            base_url: config.base_url.clone(),
            api_key,
            timeout: Duration::from_secs(config.timeout_s),
            connect_timeout: Duration::from_secs(config.connect_timeout_s),
        }
    }
}

/// Builds the adapter for a `[runtimes.NAME]` entry. `api_key` is `config.api_key` resolved
/// ([`ondevice_config::SecretRef::resolve`]); header secrets of REST runtimes are resolved here.
pub fn from_config(
    name: &str,
    config: &RuntimeConfig,
    api_key: Option<Secret>,
) -> Result<Arc<dyn Runtime>, AdapterError> {
    let options = HttpOptions::from_config(config, api_key);
    Ok(match config.kind {
        RuntimeKind::Openai => Arc::new(openai::OpenAiAdapter::new(name, options)?),
        RuntimeKind::LlamaServer => Arc::new(openai::OpenAiAdapter::llama_server(name, options)?),
        RuntimeKind::Ollama => Arc::new(ollama::OllamaAdapter::new(name, options)?),
        RuntimeKind::Rest => Arc::new(rest::RestAdapter::from_config(name, config, options)?),
    })
}
