//! The engine's own error type (loading and setup). Request-time failures use the contract's
//! [`ondevice_runtime::RuntimeError`], so the daemon sees the same codes from every runtime.

use std::path::PathBuf;

use ondevice_runtime::RuntimeError;

/// Why the engine could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be loaded (missing, truncated, corrupt or unsupported).
    #[error("cannot load model {path:?}: {reason}: check that the file is a complete GGUF model")]
    Load {
        /// The model file.
        path: PathBuf,
        /// What llama.cpp or the file system reported.
        reason: String,
    },
    /// The inference context could not be created (usually not enough memory for the KV cache).
    #[error("cannot create the inference context ({what}): {reason}: lower --ctx or --parallel")]
    Context {
        /// Which context (generation, embeddings).
        what: &'static str,
        /// What llama.cpp reported.
        reason: String,
    },
    /// A setting is out of range.
    #[error("invalid engine setting: {0}")]
    Config(String),
    /// The engine thread is gone (it panicked or was shut down).
    #[error("the engine thread has stopped")]
    Stopped,
    /// The worker socket could not be served.
    #[error("cannot serve the worker socket {path:?}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<EngineError> for RuntimeError {
    fn from(e: EngineError) -> Self {
        RuntimeError::Engine { message: e.to_string() }
    }
}
