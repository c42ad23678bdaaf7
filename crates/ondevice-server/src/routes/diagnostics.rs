//! Diagnostics bundles (admin scope): `POST /api/v1/diagnostics/bundle` starts (or joins) a
//! `diagnostics` job; when it succeeds, its detail names the download,
//! `GET /api/v1/diagnostics/bundles/{id}`, which serves the redacted `.tar.gz`.
//!
//! Read-only views (admin scope: they show machine details): `GET /api/v1/diagnostics/doctor`
//! (the checks of `ondevice diag doctor --json`, computed by the daemon about itself),
//! `GET /api/v1/telemetry` and `GET /api/v1/telemetry/preview` (as `ondevice telemetry status |
//! preview --json`). Telemetry is turned on or off only with the CLI, at the machine: consent is
//! not an API call.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use ondevice_diagnostics::doctor::Check;
use ondevice_diagnostics::telemetry::{Preview, State as TelemetryState, Status};
use serde::Serialize;
use utoipa::ToSchema;

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

/// One doctor check.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    /// Short name (`disk space`).
    pub name: String,
    /// `ok`, `warn`, `fail` or `skip`.
    #[schema(example = "ok")]
    pub status: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (absent when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl From<Check> for CheckView {
    fn from(c: Check) -> Self {
        CheckView { name: c.name, status: c.status.as_str().to_owned(), detail: c.detail, fix: c.fix }
    }
}

/// The doctor's checks, as `ondevice diag doctor --json` prints them.
#[derive(Debug, Serialize, ToSchema)]
pub struct DoctorView {
    /// Every check, in order.
    pub checks: Vec<CheckView>,
}

/// Runs the doctor's checks in the daemon (models are re-hashed: this takes a while with big models).
#[utoipa::path(get, path = "/api/v1/diagnostics/doctor", tag = "diagnostics",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The checks, each with its fix unless it passed", body = DoctorView),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "Diagnostics are not available", body = crate::error::ErrorBody)))]
pub async fn doctor(State(state): State<AppState>) -> Result<Json<DoctorView>, ApiError> {
    let checks = state.require_inspect()?.doctor().await?;
    Ok(Json(DoctorView { checks: checks.into_iter().map(CheckView::from).collect() }))
}

/// Telemetry's state, as `ondevice telemetry status --json` prints it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryView {
    /// `on`, `off` (the default), `stale` (consent for an older report) or
    /// `disabled_by_environment`.
    #[schema(example = "off")]
    pub state: String,
    /// Whether reports are made and sent.
    pub sending: bool,
    /// `DO_NOT_TRACK` or `ONDEVICE_TELEMETRY` when one turns telemetry off.
    pub disabled_by: Option<String>,
    /// The report version of this build.
    pub report_version: u32,
    /// The report version consented to (0: never).
    pub consented_version: u32,
    /// The random install id (created on first enable).
    pub install_id: Option<String>,
    /// Where reports go (`file PATH` or `scheme://host:port`).
    pub endpoint: String,
    /// Seconds between reports.
    pub interval_s: u64,
    /// Whether offline mode blocks sending.
    pub offline: bool,
    /// Events queued and not yet acknowledged.
    pub pending: usize,
}

impl From<Status> for TelemetryView {
    fn from(s: Status) -> Self {
        let state = match s.state {
            TelemetryState::On => "on",
            TelemetryState::Off => "off",
            TelemetryState::Stale => "stale",
            TelemetryState::DisabledByEnvironment => "disabled_by_environment",
        };
        TelemetryView {
            state: state.to_owned(),
            sending: s.sending,
            disabled_by: s.disabled_by.map(str::to_owned),
            report_version: s.report_version,
            consented_version: s.consented_version,
            install_id: s.install_id,
            endpoint: s.endpoint,
            interval_s: s.interval_s,
            offline: s.offline,
            pending: s.pending,
        }
    }
}

/// Telemetry's status (read-only: `ondevice telemetry enable|disable` at the machine changes it).
#[utoipa::path(get, path = "/api/v1/telemetry", tag = "diagnostics",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Telemetry's state, consent and endpoint", body = TelemetryView),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "Diagnostics are not available", body = crate::error::ErrorBody)))]
pub async fn telemetry(State(state): State<AppState>) -> Result<Json<TelemetryView>, ApiError> {
    Ok(Json(state.require_inspect()?.telemetry_status().await?.into()))
}

/// What telemetry would send, as `ondevice telemetry preview --json` prints it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelemetryPreviewView {
    /// Queued events, as they will be sent.
    #[schema(value_type = Vec<Object>)]
    pub queued: Vec<serde_json::Value>,
    /// The next report (its `report_version`, bucketed machine facts, request counts); its
    /// `event_id` is drawn when it is made.
    #[schema(value_type = Object)]
    pub next: serde_json::Value,
}

impl From<Preview> for TelemetryPreviewView {
    fn from(p: Preview) -> Self {
        TelemetryPreviewView { queued: p.queued, next: p.next }
    }
}

/// The queued telemetry events and the next report, exactly as they would be sent.
#[utoipa::path(get, path = "/api/v1/telemetry/preview", tag = "diagnostics",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Queued events and the next report", body = TelemetryPreviewView),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 503, description = "Diagnostics are not available", body = crate::error::ErrorBody)))]
pub async fn telemetry_preview(State(state): State<AppState>) -> Result<Json<TelemetryPreviewView>, ApiError> {
    Ok(Json(state.require_inspect()?.telemetry_preview().await?.into()))
}
