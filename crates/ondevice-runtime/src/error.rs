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
}
