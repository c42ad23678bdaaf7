//! `/api/v1/runtimes`: the configured runtimes with their health and circuit state, the loaded
//! models (read), and hot load / unload of a model (models scope).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ondevice_runtime::{LoadedModel, RuntimeStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson};
use crate::generation::with_adapter;
use crate::state::AppState;

/// Runtimes and loaded models.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimesView {
    /// Each configured runtime.
    pub runtimes: Vec<RuntimeView>,
    /// Models loaded now, most recently used first.
    pub loaded: Vec<LoadedView>,
}

/// A runtime as the orchestrator sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimeView {
    /// Instance name (named in `x-ondevice-adapter`).
    pub name: String,
    /// Adapter kind: `embedded`, `llama-server`, `openai`, `ollama` or `rest`.
    pub kind: String,
    /// `ready`, `starting` or `unhealthy`.
    pub health: String,
    /// Why it is unhealthy.
    pub reason: Option<String>,
    /// Circuit breaker: `closed`, `open` or `half-open`.
    pub circuit: String,
    /// Consecutive failures.
    pub failures: u32,
    /// Models it holds.
    pub loaded: Vec<String>,
}

impl From<RuntimeStatus> for RuntimeView {
    fn from(r: RuntimeStatus) -> Self {
        let reason = match &r.health {
            ondevice_runtime::Health::Unhealthy(why) => Some(why.clone()),
            _ => None,
        };
        RuntimeView {
            name: r.name,
            kind: r.kind,
            health: r.health.as_str().to_owned(),
            reason,
            circuit: r.circuit,
            failures: r.failures,
            loaded: r.loaded,
        }
    }
}

/// A model held by a runtime.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoadedView {
    /// `name:tag`.
    pub model: String,
    /// The runtime holding it.
    pub runtime: String,
    /// Bytes accounted for in the memory budget.
    pub size: u64,
    /// Unix seconds of the last request.
    pub last_used: i64,
    /// Unix seconds when keep-alive unloads it; null: never.
    pub expires_at: Option<i64>,
}

impl From<LoadedModel> for LoadedView {
    fn from(m: LoadedModel) -> Self {
        LoadedView {
            model: m.name,
            runtime: m.runtime,
            size: m.size_bytes,
            last_used: m.last_used,
            expires_at: m.expires_at,
        }
    }
}

/// Body of `POST /api/v1/runtimes/load` and `/unload`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRequest {
    /// `name[:tag]` or `sha256:<hex>`.
    #[schema(min_length = 1)]
    pub model: String,
}

/// Result of an unload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnloadView {
    /// The model.
    pub model: String,
    /// Whether it was loaded (and is not any more).
    pub unloaded: bool,
}

fn named(req: &ModelRequest) -> Result<&str, ApiError> {
    let m = req.model.trim();
    if m.is_empty() {
        return Err(ApiError::InvalidRequest("model must name a model".to_owned()));
    }
    Ok(m)
}

/// The configured runtimes and the loaded models.
#[utoipa::path(get, path = "/api/v1/runtimes", tag = "runtimes",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Runtimes and loaded models", body = RuntimesView),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<RuntimesView>, ApiError> {
    let inference = state.require_inference()?;
    let runtimes = inference.runtimes().await.into_iter().map(RuntimeView::from).collect();
    let loaded = inference.loaded().await.into_iter().map(LoadedView::from).collect();
    Ok(Json(RuntimesView { runtimes, loaded }))
}

/// Loads a model now (idempotent) and says which runtime holds it.
#[utoipa::path(post, path = "/api/v1/runtimes/load", tag = "runtimes",
    security(("bearer" = ["models"])),
    request_body = ModelRequest,
    responses(
        (status = 200, description = "Loaded", body = LoadedView,
            headers(("x-ondevice-adapter" = String, description = "The runtime holding it"))),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtime available", body = crate::error::ErrorBody),
        (status = 507, description = "Over the memory budget", body = crate::error::ErrorBody)))]
pub async fn load(State(state): State<AppState>, ApiJson(req): ApiJson<ModelRequest>) -> Result<Response, ApiError> {
    let inference = state.require_inference()?;
    let loaded = inference.load(named(&req)?).await?;
    tracing::info!(model = %loaded.name, runtime = %loaded.runtime, "model loaded on request");
    let runtime = loaded.runtime.clone();
    Ok(with_adapter(Json(LoadedView::from(loaded)).into_response(), &runtime))
}

/// Unloads a model from every runtime holding it.
#[utoipa::path(post, path = "/api/v1/runtimes/unload", tag = "runtimes",
    security(("bearer" = ["models"])),
    request_body = ModelRequest,
    responses(
        (status = 200, description = "Whether it was loaded", body = UnloadView),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn unload(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ModelRequest>,
) -> Result<Json<UnloadView>, ApiError> {
    let inference = state.require_inference()?;
    let model = named(&req)?.to_owned();
    let unloaded = inference.unload(&model).await?;
    tracing::info!(model = %model, unloaded, "model unload requested");
    Ok(Json(UnloadView { model, unloaded }))
}
