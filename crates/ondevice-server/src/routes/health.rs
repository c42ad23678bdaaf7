//! Public probes (`/healthz`, `/readyz`), the OpenAPI document and the Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Liveness or readiness. `details` only for a request carrying a valid key.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeResponse {
    /// `ok` (liveness), `ready`, `degraded` (serving, but a runtime failed and a fallback answers or a
    /// circuit is open) or `not_ready`.
    pub status: &'static str,
    /// Why the daemon is degraded or not ready; present only with a valid key (any scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<ReadyDetails>,
}

/// Readiness details for authenticated callers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyDetails {
    /// Why inference is degraded (open circuits, recent fallbacks), if it is.
    pub degraded: Option<String>,
    /// Required workers that are not ready.
    pub workers_not_ready: Vec<String>,
}

/// Liveness of the daemon itself.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The daemon is alive", body = ProbeResponse)))]
pub async fn healthz() -> Json<ProbeResponse> {
    Json(ProbeResponse { status: "ok", details: None })
}

/// Readiness: the listener is up and every required worker is ready; `degraded` (still 200) while
/// inference runs on a fallback runtime or a runtime's circuit is open. Details only with a valid key.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready to serve (`ready` or `degraded`)", body = ProbeResponse),
        (status = 503, description = "Not ready (starting, stopping, or a required worker is not ready)", body = ProbeResponse)))]
pub async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let ready = state.status().ready;
    let degraded = state.inference().and_then(|i| i.degraded());
    let status = match (ready, &degraded) {
        (false, _) => "not_ready",
        (true, Some(_)) => "degraded",
        (true, None) => "ready",
    };
    let authenticated = (headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key"))
        && crate::middleware::authenticate(&state, &headers, ondevice_auth::Scope::Read, "http").is_ok();
    let details = authenticated.then(|| ReadyDetails {
        degraded,
        workers_not_ready: state
            .status_source()
            .workers()
            .into_iter()
            .filter(|w| w.required && !w.ready)
            .map(|w| w.name)
            .collect(),
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(ProbeResponse { status, details }))
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
        (status = 200, description = "Metrics in the OpenMetrics text format (`application/openmetrics-text; version=1.0.0`), which Prometheus scrapes", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = state.metrics().render(&state.status_source().workers());
    let mut vectors = crate::routes::collections::metrics_text(&state).await;
    let mut jobs: std::collections::BTreeMap<(String, String), u64> = std::collections::BTreeMap::new();
    if let Ok(j) = state.require_jobs() {
        for s in j.list(&ondevice_jobs::JobFilter::default()).await.unwrap_or_default() {
            *jobs.entry((s.kind.clone(), s.state.as_str().to_owned())).or_default() += 1;
        }
    }
    let jobs: Vec<(String, String, u64)> = jobs.into_iter().map(|((k, s), n)| (k, s, n)).collect();
    let runtimes = match state.inference() {
        Some(i) => i.runtimes().await,
        None => Vec::new(),
    };
    crate::metrics::render_services(&mut vectors, &jobs, &runtimes);
    body.insert_str(body.rfind("# EOF").unwrap_or(body.len()), &vectors);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}
