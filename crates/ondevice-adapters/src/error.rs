//! Errors of building an adapter (bad URL, bad mapping, unreadable secret). Errors of serving a request
//! are the contract's [`ondevice_runtime::RuntimeError`].

/// An adapter could not be built from its options.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The base URL is not a usable http(s) URL.
    #[error("runtime {runtime:?}: base_url {url:?} is not an http:// or https:// URL: {reason}")]
    BadUrl {
        /// Runtime instance name.
        runtime: String,
        /// The URL as given (without credentials).
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The HTTP client could not be initialised (TLS roots, for example).
    #[error("runtime {runtime:?}: cannot build the HTTP client: {reason}")]
    Client {
        /// Runtime instance name.
        runtime: String,
        /// What failed.
        reason: String,
    },
    /// A REST mapping cannot be used.
    #[error("runtime {runtime:?}: {key}: {message}")]
    Mapping {
        /// Runtime instance name.
        runtime: String,
        /// The config key (`generate.headers`, …).
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A secret reference in the mapping could not be resolved.
    #[error("runtime {runtime:?}: {source}")]
    Secret {
        /// Runtime instance name.
        runtime: String,
        /// The resolution error.
        source: ondevice_config::SecretError,
    },
}
