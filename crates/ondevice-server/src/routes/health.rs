//! Public probes (`/healthz`, `/readyz`), the OpenAPI document and the Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Liveness or readiness, without details.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeResponse {
    /// `ok`, `ready` or `not_ready`.
    pub status: &'static str,
}

/// Liveness of the daemon itself.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The daemon is alive", body = ProbeResponse)))]
pub async fn healthz() -> Json<ProbeResponse> {
    Json(ProbeResponse { status: "ok" })
}

/// Readiness: the listener is up and every required worker is ready. No details without a key.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready to serve", body = ProbeResponse),
        (status = 503, description = "Not ready (starting, stopping, or a required worker is not ready)", body = ProbeResponse)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.status().ready {
        (StatusCode::OK, Json(ProbeResponse { status: "ready" }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(ProbeResponse { status: "not_ready" }))
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.inner.openapi_json.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Prometheus metrics: requests by route and status, latency, auth failures, uptime.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics().render(&state.status_source().workers()),
    )
}
