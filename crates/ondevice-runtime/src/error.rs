//! The contract's error type. The server maps it to HTTP statuses and gRPC codes in one place.

use std::time::Duration;

/// Why a runtime or the orchestrator could not serve a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// No runtime knows this model.
    #[error("model {model:?} not found: pull or import it first (ondevice models list)")]
    ModelNotFound {
        /// The name the client used.
        model: String,
    },
    /// The request is malformed or asks for something impossible.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The request exceeds a configured limit (inputs per request, tokens per input, ...); the
    /// message names the limit and how to stay within it. HTTP 413.
    #[error("{message}")]
    TooLarge {
        /// Which limit, how far over it, and what to do.
        message: String,
    },
    /// The adapter cannot do this (for example embeddings on a chat-only remote).
    #[error("runtime {adapter:?} does not support {what}")]
    Unsupported {
        /// Adapter instance name.
        adapter: String,
        /// The missing capability.
        what: String,
    },
    /// The runtime cannot be reached or is not running. The orchestrator falls back on this.
    #[error("runtime {adapter:?} is unavailable: {reason}")]
    Unavailable {
        /// Adapter instance name.
        adapter: String,
        /// What happened (connection refused, worker exited, circuit open).
        reason: String,
    },
    /// Too many requests queued; retry later.
    #[error("overloaded: {what}; retry in {retry_after:?}")]
    Overloaded {
        /// Which limit was hit.
        what: String,
        /// When a retry makes sense.
        retry_after: Duration,
    },
    /// The model does not fit the configured memory budget even after evicting idle models.
    #[error(
        "model {model:?} needs {needed} bytes but the memory budget allows {budget}: raise [inference] memory_budget or unload models"
    )]
    OverBudget {
        /// The model.
        model: String,
        /// Its size.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// The remote runtime answered with an error.
    #[error("runtime {adapter:?} answered {status}: {message}")]
    Upstream {
        /// Adapter instance name.
        adapter: String,
        /// The remote status code.
        status: u16,
        /// The remote message (credentials are never included).
        message: String,
    },
    /// The engine failed while loading or generating.
    #[error("engine error: {message}")]
    Engine {
        /// What the engine reported.
        message: String,
    },
    /// The runtime did not answer in time.
    #[error("runtime {adapter:?} timed out after {after:?}")]
    Timeout {
        /// Adapter instance name.
        adapter: String,
        /// The limit.
        after: Duration,
    },
}

impl RuntimeError {
    /// Whether another runtime in the fallback chain should be tried (nothing was streamed yet).
    pub fn is_fallback(&self) -> bool {
        matches!(self, RuntimeError::Unavailable { .. } | RuntimeError::Timeout { .. })
            || matches!(self, RuntimeError::Upstream { status, .. } if *status >= 500)
    }

    /// A stable machine-readable code for wire errors.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::ModelNotFound { .. } => "model_not_found",
            RuntimeError::InvalidRequest { .. } => "invalid_request",
            RuntimeError::TooLarge { .. } => "too_large",
            RuntimeError::Unsupported { .. } => "unsupported",
            RuntimeError::Unavailable { .. } => "runtime_unavailable",
            RuntimeError::Overloaded { .. } => "overloaded",
            RuntimeError::OverBudget { .. } => "over_budget",
            RuntimeError::Upstream { .. } => "upstream_error",
            RuntimeError::Engine { .. } => "engine_error",
            RuntimeError::Timeout { .. } => "timeout",
        }
    }

    /// The error a worker's wire `code` and `message` stand for: the inverse of
    /// [`RuntimeError::code`], the one table both directions use. The wire carries one message, so
    /// the fields it lacks come from the caller: `adapter` (the adapter that called the worker) and
    /// `after` (the limit that call gave the worker). `over_budget` carries sizes the wire does not,
    /// and an unknown code is the worker's own failure: both become [`RuntimeError::Engine`].
    pub fn from_code(code: &str, message: String, adapter: &str, after: Duration) -> RuntimeError {
        let adapter = adapter.to_owned();
        match code {
            "model_not_found" => RuntimeError::ModelNotFound { model: message },
            "invalid_request" => RuntimeError::InvalidRequest { message },
            "too_large" => RuntimeError::TooLarge { message },
            "unsupported" => RuntimeError::Unsupported { adapter, what: message },
            "runtime_unavailable" => RuntimeError::Unavailable { adapter, reason: message },
            "overloaded" => RuntimeError::Overloaded { what: message, retry_after: Duration::from_secs(1) },
            "upstream_error" => RuntimeError::Upstream { adapter, status: 502, message },
            "timeout" => RuntimeError::Timeout { adapter, after },
            _ => RuntimeError::Engine { message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, once.
    fn all() -> Vec<RuntimeError> {
        let adapter = "embedded".to_owned();
        vec![
            RuntimeError::ModelNotFound { model: "m".into() },
            RuntimeError::InvalidRequest { message: "bad".into() },
            RuntimeError::TooLarge { message: "big".into() },
            RuntimeError::Unsupported { adapter: adapter.clone(), what: "embeddings".into() },
            RuntimeError::Unavailable { adapter: adapter.clone(), reason: "gone".into() },
            RuntimeError::Overloaded { what: "queue".into(), retry_after: Duration::from_secs(1) },
            RuntimeError::OverBudget { model: "m".into(), needed: 2, budget: 1 },
            RuntimeError::Upstream { adapter: adapter.clone(), status: 502, message: "no".into() },
            RuntimeError::Engine { message: "boom".into() },
            RuntimeError::Timeout { adapter, after: Duration::from_secs(30) },
        ]
    }

    #[test]
    fn wire_codes_map_back_to_the_same_code() {
        for e in all() {
            let back = RuntimeError::from_code(e.code(), e.to_string(), "embedded", Duration::from_secs(30));
            let expected = if matches!(e, RuntimeError::OverBudget { .. }) { "engine_error" } else { e.code() };
            assert_eq!(back.code(), expected, "{e:?} came back as {back:?}");
        }
        let timeout = RuntimeError::from_code("timeout", "late".into(), "embedded", Duration::from_secs(30));
        assert_eq!(timeout, RuntimeError::Timeout { adapter: "embedded".into(), after: Duration::from_secs(30) });
        let unknown = RuntimeError::from_code("what", "x".into(), "embedded", Duration::ZERO);
        assert_eq!(unknown, RuntimeError::Engine { message: "x".into() });
    }
}
