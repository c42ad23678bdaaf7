//! The typed settings: one struct per config section, each field documented (the docs become the
//! JSON schema and the reference page). Unknown keys are errors everywhere.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, ListenAddr};

/// The whole ondevice configuration (`config.toml`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The listener: address, TLS, allowed hosts, CORS and request limits.
    pub server: ServerSettings,
    /// Authentication of every API surface.
    pub auth: AuthSettings,
    /// Logging to stderr and to rotating files under `$ONDEVICE_HOME/logs`.
    pub log: LogSettings,
    /// Supervised worker processes, by name (`[workers.NAME]`).
    pub workers: std::collections::BTreeMap<String, crate::workers::WorkerConfig>,
    /// The embedded llama.cpp engine workers.
    pub engine: crate::inference::EngineSettings,
    /// Model routing, keep-alive, loaded-model limits, memory budget and fallback.
    pub inference: crate::inference::InferenceSettings,
    /// External model runtimes, by name (`[runtimes.NAME]`): OpenAI-compatible servers, llama-server,
    /// Ollama and config-declared REST APIs.
    pub runtimes: std::collections::BTreeMap<String, crate::runtimes::RuntimeConfig>,
    /// Model pulls: allowed private hosts, quota, download queue, catalogs and credentials.
    pub registry: crate::registry::RegistrySettings,
    /// Background jobs: concurrency per resource class, retention of finished jobs.
    pub jobs: crate::jobs::JobsSettings,
    /// The vector store: default backend for collections and the PostgreSQL connection.
    pub vector: crate::vector::VectorSettings,
    /// Outbound connections: the offline switch.
    pub network: crate::network::NetworkSettings,
    /// The opt-in usage report: endpoint and interval (consent is given with `ondevice telemetry enable`).
    pub telemetry: crate::telemetry::TelemetrySettings,
    /// The web console at `/ui/`: on or off, and how long its browser sessions last.
    pub ui: crate::ui::UiSettings,
}

/// `[server]`: the single listener serving HTTP, WebSocket and gRPC.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on, `IP:PORT`. Overridden by `ONDEVICE_LISTEN` and `serve --listen`.
    #[schemars(with = "String")]
    pub listen: ListenAddr,
    /// Extra host names accepted in the `Host` header besides the listen address, `localhost`,
    /// `127.0.0.1` and `[::1]` (protection against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed by CORS, such as `"http://localhost:3000"`. None by default.
    pub cors_origins: Vec<String>,
    /// Largest accepted request body (1KiB to 1GiB), also the largest WebSocket message; larger
    /// bodies get 413, larger WebSocket messages close the socket with code 1009.
    pub body_limit: ByteSize,
    /// Requests handled at once; beyond it the daemon answers 503 with `Retry-After`.
    pub max_concurrent_requests: u32,
    /// Seconds that in-flight requests and streams get to finish on SIGTERM/SIGINT.
    pub shutdown_grace_s: u64,
    /// Serve HTTPS (and gRPC over TLS) with this certificate and key.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: ListenAddr::default(),
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            body_limit: ByteSize::mib(16),
            max_concurrent_requests: 512,
            shutdown_grace_s: 10,
            tls: None,
        }
    }
}

/// `[server.tls]`: PEM files for TLS with rustls.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[auth]`: API keys are required on every surface unless disabled here.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Require API keys. `false` is accepted only when listening on a loopback address.
    pub enabled: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings { enabled: true }
    }
}

/// Format of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: expected \"text\" or \"json\"")),
        }
    }
}

/// `[log]`: structured logs (tracing).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`. Overridden by `ONDEVICE_LOG_FORMAT` and `--log-format`.
    pub format: LogFormat,
    /// Filter directives such as `info` or `info,ondevice_server=debug`. Overridden by
    /// `ONDEVICE_LOG` and `--log-level`.
    pub level: String,
    /// Also write daily-rotated JSON logs to `$ONDEVICE_HOME/logs`.
    pub file: bool,
    /// Rotated log files kept.
    pub max_files: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Text, level: "info".to_owned(), file: true, max_files: 7 }
    }
}
