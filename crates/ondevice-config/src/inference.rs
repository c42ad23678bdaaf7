//! `[engine]` (the embedded llama.cpp engine workers) and `[inference]` (the orchestrator: keep-alive,
//! loaded-model limits, memory budget, admission queue, circuit breakers, per-model fallback chains).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::ByteSize;
use crate::workers::SandboxConfig;

/// `[engine]`: how the daemon runs embedded engine workers (`ondevice worker`, one per loaded model).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// CPU threads per worker; 0 means the number of physical cores. Overridden by
    /// `ONDEVICE_ENGINE_THREADS`.
    pub threads: u32,
    /// Context length (tokens) of each sequence; capped at the model's training context.
    pub context_length: u32,
    /// Sequences a worker runs at once (continuous batching); more requests wait in its queue.
    pub parallel: u32,
    /// Sandbox of the engine workers. The model file is always mounted read-only and the worker's
    /// runtime directory writable; `network = "none"` by default because a worker needs no network.
    pub sandbox: SandboxConfig,
    /// Seconds a starting worker gets to load its model and answer its health check.
    pub load_timeout_s: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            threads: 0,
            context_length: 4096,
            parallel: 4,
            sandbox: SandboxConfig { network: crate::workers::NetworkMode::None, ..SandboxConfig::default() },
            load_timeout_s: 120,
        }
    }
}

/// `[inference]`: how model names map to runtimes and how loaded models are managed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceSettings {
    /// How long a model stays loaded after its last request (`"5m"`, `"30s"`, `"0s"` unloads at
    /// once, `"forever"` never). A request's `keep_alive` overrides it.
    pub keep_alive: String,
    /// Models loaded at once across runtimes that load models; the least recently used idle one is
    /// unloaded to make room.
    pub max_loaded_models: u32,
    /// Memory the loaded models may take together (file sizes), e.g. `"8GiB"`; unset: no budget.
    pub memory_budget: Option<ByteSize>,
    /// Generations and embeddings running at once across all models.
    pub max_concurrent: u32,
    /// Requests that may wait for a free slot; beyond it the daemon answers 503 with `Retry-After`.
    pub queue_depth: u32,
    /// Most tokens one generation may produce, on every surface (OpenAI, Ollama, WebSocket,
    /// gRPC). A request that asks for more, or sets no limit, is clamped to it: the answer then ends
    /// with finish reason `length`. (`/v1/completions` without `max_tokens` generates 16, as
    /// OpenAI documents.)
    pub max_tokens: u32,
    /// Most inputs one embeddings request may have; more answers 413 naming this limit.
    pub max_embed_inputs: u32,
    /// Most tokens one embeddings input may have (embedded engine); longer inputs answer 413
    /// naming this limit before any work is done. The engine embeds at most 2048 tokens (or the
    /// model's training context) at once whatever this says.
    pub max_embed_input_tokens: u32,
    /// Runtimes tried, in order, for registry models without their own `[inference.models]` entry.
    /// `embedded` is the built-in llama.cpp engine.
    pub default_runtimes: Vec<String>,
    /// Circuit breaker applied to every runtime.
    pub breaker: BreakerSettings,
    /// Per-model routing: `[inference.models."NAME:TAG"] runtimes = ["embedded", "llama", "lan"]`.
    pub models: BTreeMap<String, ModelRoute>,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings {
            keep_alive: "5m".to_owned(),
            max_loaded_models: 3,
            memory_budget: None,
            max_concurrent: 16,
            queue_depth: 64,
            max_tokens: 4096,
            max_embed_inputs: 2048,
            max_embed_input_tokens: 2048,
            default_runtimes: vec!["embedded".to_owned()],
            breaker: BreakerSettings::default(),
            models: BTreeMap::new(),
        }
    }
}

/// `[inference.breaker]`: after `failures` consecutive failures a runtime is skipped for `open_s`
/// seconds, then one trial request decides whether it serves again.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// Seconds the circuit stays open before a trial request.
    pub open_s: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings { failures: 3, open_s: 30 }
    }
}

/// `[inference.models."NAME:TAG"]`: the fallback chain of one model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRoute {
    /// Runtimes tried in order (`embedded` or names of `[runtimes.NAME]`); the first that answers
    /// serves the request, and the answer names it in the `x-ondevice-adapter` header.
    pub runtimes: Vec<String>,
    /// The model's name on the remote runtimes, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// A parsed keep-alive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload after this long idle.
    For(std::time::Duration),
    /// Never unload for idleness.
    Forever,
}

impl KeepAlive {
    /// Parses `"5m"`, `"30s"`, `"1h"`, `"0"`, `"forever"`/`"-1"` (Ollama's spelling), or plain
    /// seconds.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "forever" || t.starts_with('-') {
            return Ok(KeepAlive::Forever);
        }
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(KeepAlive::For(std::time::Duration::from_secs(secs)));
        }
        humantime::parse_duration(t)
            .map(KeepAlive::For)
            .map_err(|e| format!("{s:?} is not a duration ({e}): write \"5m\", \"30s\", \"0\" or \"forever\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_spellings() {
        assert_eq!(KeepAlive::parse("5m"), Ok(KeepAlive::For(std::time::Duration::from_secs(300))));
        assert_eq!(KeepAlive::parse("0"), Ok(KeepAlive::For(std::time::Duration::ZERO)));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("forever"), Ok(KeepAlive::Forever));
        assert!(KeepAlive::parse("soon").unwrap_err().contains("not a duration"));
    }
}
