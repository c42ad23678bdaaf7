//! `/api/v1/status`: version, uptime, listen address and workers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::{AppState, WorkerView};

/// The daemon's status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusResponse {
    /// ondevice version.
    pub version: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The address the daemon listens on.
    pub listen_address: String,
    /// Whether the listener uses TLS.
    pub tls: bool,
    /// Whether API keys are required.
    pub auth_enabled: bool,
    /// Whether `/readyz` answers ready.
    pub ready: bool,
    /// Supervised workers with state, restarts, last exit and sandbox protection.
    pub workers: Vec<WorkerView>,
    /// What the host's sandbox can enforce (cgroups, landlock, seccomp, namespaces, ...).
    pub sandbox: serde_json::Value,
}

/// Status of the daemon and its workers.
#[utoipa::path(get, path = "/api/v1/status", tag = "daemon",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Daemon status", body = StatusResponse),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn status(State(state): State<AppState>) -> Json<StatusResponse> {
    Json(state.status())
}
