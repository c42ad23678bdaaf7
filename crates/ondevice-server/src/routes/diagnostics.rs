//! Diagnostics bundles (admin scope): `POST /api/v1/diagnostics/bundle` starts (or joins) a
//! `diagnostics` job; when it succeeds, its detail names the download,
//! `GET /api/v1/diagnostics/bundles/{id}`, which serves the redacted `.tar.gz`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::routes::jobs::JobView;
use crate::state::AppState;

/// Starts a diagnostics bundle job (a running one is joined).
#[utoipa::path(post, path = "/api/v1/diagnostics/bundle", tag = "diagnostics",
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The bundle job; its detail names the download when it succeeds", body = JobView),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "Diagnostics are not available", body = crate::error::ErrorBody)))]
pub async fn bundle(State(state): State<AppState>) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let job = state.require_diagnostics()?.start_bundle().await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// Downloads the bundle a finished diagnostics job made.
#[utoipa::path(get, path = "/api/v1/diagnostics/bundles/{id}", tag = "diagnostics",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The diagnostics job's id")),
    responses(
        (status = 200, description = "The bundle (.tar.gz with manifest.json)", content_type = "application/gzip", body = Vec<u8>),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such bundle (not finished, failed, or pruned)", body = crate::error::ErrorBody)))]
pub async fn download(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let path = state.require_diagnostics()?.bundle_path(&id)?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| ApiError::Internal(format!("cannot read the bundle: {e}")))?;
    let disposition = format!("attachment; filename=\"ondevice-diagnostics-{id}.tar.gz\"");
    Ok(([(header::CONTENT_TYPE, "application/gzip".to_owned()), (header::CONTENT_DISPOSITION, disposition)], bytes))
}
