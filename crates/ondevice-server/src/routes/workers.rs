//! `/api/v1/workers/{name}/restart`: restart a supervised worker, closing an open circuit.

use axum::Json;
use axum::extract::{Path, State};

use crate::error::ApiError;
use crate::state::{AppState, WorkerView};

/// Restarts a worker now (also after it was given up), and returns its status.
#[utoipa::path(post, path = "/api/v1/workers/{name}/restart", tag = "daemon",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Worker name")),
    responses(
        (status = 200, description = "Restart requested; the worker's status", body = WorkerView),
        (status = 404, description = "No such worker", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn restart(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<WorkerView>, ApiError> {
    restart_named(&state, &name).await.map(Json)
}

/// Shared by the HTTP route and the control socket.
pub(crate) async fn restart_named(state: &AppState, name: &str) -> Result<WorkerView, ApiError> {
    let source = state.status_source().clone();
    source.restart_worker(name).await?;
    tracing::info!(worker = name, "worker restart requested");
    source
        .workers()
        .into_iter()
        .find(|w| w.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no worker named {name:?}")))
}
