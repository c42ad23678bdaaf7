//! Ollama's model management endpoints, mapped onto the registry: `POST /api/show` and
//! `GET /api/version` (read), `POST /api/pull` (a pull job, its progress streamed as Ollama's
//! NDJSON status lines), `DELETE /api/delete`, `POST /api/copy` and `HEAD /api/blobs/{digest}`
//! (models). What has no counterpart here (`/api/create`, `/api/push`, uploading a blob) answers
//! 501 `not_implemented`, saying what to use instead.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ondevice_jobs::{JobSnapshot, JobState};
use ondevice_registry::jobs::PullDetail;
use ondevice_registry::{ModelRecord, ModelRef};
use ondevice_runtime::ModelEntry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::wire::Details;
use super::{NDJSON, details, rfc3339_of};
use crate::error::{AnyJson, ApiError};
use crate::state::AppState;

/// Body of `POST /api/show`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ShowRequest {
    /// Model name (`name` is accepted too, as older clients send it).
    #[serde(alias = "name")]
    #[schema(value_type = crate::routes::models::ModelRefSchema)]
    pub model: String,
    /// Accepted; the answer is the same.
    #[serde(default)]
    pub verbose: bool,
}

/// Answer of `POST /api/show`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShowResponse {
    /// A Modelfile-like description (`FROM` line).
    pub modelfile: String,
    /// Model parameters (none are set by ondevice).
    pub parameters: String,
    /// The chat template (the engine applies the model's own; not repeated here).
    pub template: String,
    /// License from the file's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Format, family, parameter size and quantization.
    pub details: Details,
    /// GGUF-style metadata keys: `general.architecture`, `general.parameter_count`,
    /// `<arch>.context_length`.
    #[schema(value_type = Object)]
    pub model_info: serde_json::Map<String, serde_json::Value>,
    /// What the model can do: `completion`, `embedding`.
    pub capabilities: Vec<String>,
    /// RFC 3339 time it was added.
    pub modified_at: String,
}

/// Answer of `GET /api/version`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionResponse {
    /// ondevice's version.
    pub version: String,
}

/// Body of `POST /api/pull`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PullRequestIn {
    /// A catalog name (`ondevice models pull` names) or an `https://` URL of a GGUF file
    /// (`name` is accepted too).
    #[serde(alias = "name")]
    #[schema(min_length = 1)]
    pub model: String,
    /// Accepted and ignored: downloads always use TLS verification.
    #[serde(default)]
    pub insecure: bool,
    /// Stream NDJSON progress (default true).
    pub stream: Option<bool>,
}

/// One line of `POST /api/pull` progress (Ollama's shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PullProgress {
    /// `pulling manifest`, `downloading`, `verifying sha256 digest`, `success`, ...
    pub status: String,
    /// The file's digest, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes in all, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
    /// The pull job following the download (ondevice extension): `/api/v1/jobs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Body of `DELETE /api/delete`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteRequest {
    /// Model name (`name` is accepted too).
    #[serde(alias = "name")]
    #[schema(value_type = crate::routes::models::ModelRefSchema)]
    pub model: String,
}

/// Body of `POST /api/copy`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CopyRequest {
    /// The model to copy.
    #[schema(value_type = crate::routes::models::ModelRefSchema)]
    pub source: String,
    /// The new name.
    #[schema(value_type = crate::openapi::ModelNameSchema)]
    pub destination: String,
}

fn model_ref(s: &str) -> Result<ModelRef, ApiError> {
    s.parse::<ModelRef>().map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// The entry a client's name means: exact, or with the default tag.
pub(crate) fn find_entry<'a>(models: &'a [ModelEntry], name: &str) -> Option<&'a ModelEntry> {
    let tagged = if name.contains(':') { name.to_owned() } else { format!("{name}:latest") };
    models.iter().find(|m| m.name == name || m.name == tagged)
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("model {name:?} not found: see GET /api/tags, or pull it with POST /api/pull"))
}

/// Details of a model, from the registry when it is there.
#[utoipa::path(post, path = "/api/show", tag = "ollama",
    security(("bearer" = ["read"])),
    request_body = ShowRequest,
    responses(
        (status = 200, description = "The model", body = ShowResponse),
        (status = 400, description = "Invalid request", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::error::ErrorBody),
        (status = 503, description = "No runtimes", body = crate::error::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<ShowRequest>,
) -> Result<Json<ShowResponse>, ApiError> {
    let models = state.require_inference()?.models().await?;
    let entry = find_entry(&models, &req.model).ok_or_else(|| not_found(&req.model))?;
    let record: Option<ModelRecord> = match entry.digest.as_ref().and_then(|_| entry.name.parse::<ModelRef>().ok()) {
        Some(r) => Some(state.models().show(r).await?),
        None => None,
    };
    let mut info = serde_json::Map::new();
    let arch = entry.family.clone().or_else(|| record.as_ref().and_then(|r| r.architecture.clone()));
    if let Some(a) = &arch {
        info.insert("general.architecture".into(), a.clone().into());
    }
    if let Some(n) = entry.parameters {
        info.insert("general.parameter_count".into(), n.into());
    }
    if let (Some(a), Some(ctx)) = (&arch, record.as_ref().and_then(|r| r.context_length)) {
        info.insert(format!("{a}.context_length"), ctx.into());
    }
    let gguf = record.as_ref().is_some_and(|r| r.format == "gguf");
    let capabilities =
        if gguf || record.is_none() { vec!["completion".to_owned(), "embedding".to_owned()] } else { Vec::new() };
    Ok(Json(ShowResponse {
        modelfile: format!("FROM {}\n", entry.name),
        parameters: String::new(),
        template: String::new(),
        license: record.as_ref().and_then(|r| r.license.clone()),
        details: details(Some(entry)),
        model_info: info,
        capabilities,
        modified_at: rfc3339_of(entry.created.unwrap_or(0)),
    }))
}

/// The daemon's version.
#[utoipa::path(get, path = "/api/version", tag = "ollama",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The version", body = VersionResponse),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn version() -> Json<VersionResponse> {
    Json(VersionResponse { version: env!("CARGO_PKG_VERSION").to_owned() })
}

/// Removes a model from the registry (its blob is freed by `gc`).
#[utoipa::path(delete, path = "/api/delete", tag = "ollama",
    security(("bearer" = ["models"])),
    request_body = DeleteRequest,
    responses(
        (status = 200, description = "Removed (empty body)"),
        (status = 400, description = "Invalid name", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<DeleteRequest>,
) -> Result<StatusCode, ApiError> {
    let removed = state.models().remove(model_ref(&req.model)?).await?;
    tracing::info!(model = %req.model, count = removed.len(), "model removed (ollama api)");
    Ok(StatusCode::OK)
}

/// Registers a model under a second name (same blobs, nothing copied).
#[utoipa::path(post, path = "/api/copy", tag = "ollama",
    security(("bearer" = ["models"])),
    request_body = CopyRequest,
    responses(
        (status = 200, description = "Copied (empty body)"),
        (status = 400, description = "Invalid name", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::error::ErrorBody)))]
pub async fn copy(State(state): State<AppState>, AnyJson(req): AnyJson<CopyRequest>) -> Result<StatusCode, ApiError> {
    let (from, to) = (model_ref(&req.source)?, model_ref(&req.destination)?);
    let record = state.models().copy(from, to).await?;
    tracing::info!(from = %req.source, to = %record.reference(), "model copied (ollama api)");
    Ok(StatusCode::OK)
}

fn progress(status: &str) -> PullProgress {
    PullProgress { status: status.to_owned(), digest: None, total: None, completed: None, job: None }
}

/// The progress line of a job snapshot, and whether it is the last.
fn pull_line(job: &JobSnapshot) -> (String, bool) {
    let mut lines = Vec::new();
    let done = job.state.is_terminal();
    match job.state {
        JobState::Queued => lines.push(PullProgress { job: Some(job.id.clone()), ..progress("pulling manifest") }),
        JobState::Running => {
            let d = PullDetail::of(job);
            lines.push(PullProgress {
                digest: d.digest,
                total: d.total_bytes,
                completed: Some(d.done_bytes),
                job: Some(job.id.clone()),
                ..progress("downloading")
            });
        }
        JobState::Succeeded => {
            let d = PullDetail::of(job);
            lines.push(PullProgress { digest: d.digest.clone(), ..progress("verifying sha256 digest") });
            lines.push(progress("writing manifest"));
            lines.push(progress("success"));
        }
        JobState::Failed | JobState::Cancelled => {
            let why = job.error.clone().unwrap_or_else(|| format!("the pull was {}", job.state.as_str()));
            let e = ApiError::Upstream(format!("pull job {} {}: {why}", job.id, job.state.as_str()));
            return (super::line(&e.body()), true);
        }
    }
    (lines.iter().map(super::line).collect(), done)
}

/// Pulls a model (a `pull` job; joins one already running for it), streaming its progress.
#[utoipa::path(post, path = "/api/pull", tag = "ollama",
    security(("bearer" = ["models"])),
    request_body = PullRequestIn,
    responses(
        (status = 200, description = "NDJSON progress lines ending with `{\"status\": \"success\"}` (or one `{\"error\": ...}` line); without streaming, the last line",
            content((PullProgress = "application/x-ndjson"), (PullProgress = "application/json"))),
        (status = 400, description = "Invalid name or URL, or a refused destination", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody),
        (status = 404, description = "Not in any catalog", body = crate::error::ErrorBody),
        (status = 502, description = "The download failed (without streaming)", body = crate::error::ErrorBody)))]
pub async fn pull(State(state): State<AppState>, AnyJson(req): AnyJson<PullRequestIn>) -> Result<Response, ApiError> {
    let job = state.require_pulls()?.pull(&req.model, None).await?;
    let jobs = state.require_jobs()?.clone();
    let rx = jobs.watch(&job.id);
    let shutdown = state.shutdown_token().clone();
    if req.stream == Some(false) {
        let last = match rx {
            Some(mut rx) => {
                tokio::select! {
                    () = shutdown.cancelled() => return Err(ApiError::Overloaded { retry_after_s: 5 }),
                    r = rx.wait_for(|j| j.state.is_terminal()) => r.map(|j| j.clone()).unwrap_or(job),
                }
            }
            None => jobs.get(&job.id).await?,
        };
        return match last.state {
            JobState::Succeeded => Ok(Json(progress("success")).into_response()),
            _ => Err(ApiError::Upstream(format!(
                "pull job {} {}: {}",
                last.id,
                last.state.as_str(),
                last.error.unwrap_or_default()
            ))),
        };
    }
    let first = format!("{}{}", super::line(&progress("pulling manifest")), pull_line(&job).0);
    let lines =
        futures_util::stream::unfold((Some(first), rx, job.state.is_terminal()), move |(pending, mut rx, ended)| {
            let shutdown = shutdown.clone();
            async move {
                if let Some(text) = pending {
                    let end = ended || rx.is_none();
                    return Some((text, (None, rx, end)));
                }
                if ended {
                    return None;
                }
                let r = rx.as_mut()?;
                tokio::select! {
                    () = shutdown.cancelled() => None,
                    changed = r.changed() => {
                        changed.ok()?;
                        if !r.borrow().state.is_terminal() {
                            // At most four lines a second; the end of the job is sent at once.
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                                _ = r.wait_for(|j| j.state.is_terminal()) => {}
                            }
                        }
                        let j = r.borrow_and_update().clone();
                        let (text, end) = pull_line(&j);
                        Some((text, (None, rx, end)))
                    }
                }
            }
        });
    let mut resp = crate::generation::streaming_response(lines, NDJSON, "");
    resp.headers_mut().remove(crate::generation::ADAPTER_HEADER);
    Ok(resp)
}

/// Whether the registry holds a blob (a model with this digest).
#[utoipa::path(head, path = "/api/blobs/{digest}", tag = "ollama",
    security(("bearer" = ["models"])),
    params(("digest" = crate::openapi::BlobDigestSchema, Path, description = "`sha256:<hex>`")),
    responses(
        (status = 200, description = "A model with this digest exists"),
        (status = 400, description = "Not a digest"),
        (status = 401, description = "Missing or invalid key"),
        (status = 404, description = "No model with this digest")))]
pub async fn blob_exists(State(state): State<AppState>, Path(digest): Path<String>) -> Result<StatusCode, ApiError> {
    let r = model_ref(&digest)?;
    if !matches!(r, ModelRef::Digest(_)) {
        return Err(ApiError::InvalidRequest(format!("{digest:?} is not a digest: use sha256:<64 hex digits>")));
    }
    state.models().show(r).await?;
    Ok(StatusCode::OK)
}

/// Uploading a blob is not supported.
#[utoipa::path(post, path = "/api/blobs/{digest}", tag = "ollama",
    security(("bearer" = ["models"])),
    params(("digest" = crate::openapi::BlobDigestSchema, Path, description = "`sha256:<hex>`")),
    responses(
        (status = 501, description = "Not supported: import files with `ondevice models import`", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn blob_upload(Path(_digest): Path<String>) -> ApiError {
    ApiError::NotImplemented(
        "uploading blobs is not supported: import a GGUF file on the daemon's machine with `ondevice models import FILE --name NAME` (POST /api/v1/models/import)".to_owned(),
    )
}

/// Creating a model from a Modelfile is not supported.
#[utoipa::path(post, path = "/api/create", tag = "ollama",
    security(("bearer" = ["models"])),
    responses(
        (status = 501, description = "Not supported: import GGUF files instead", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn create() -> ApiError {
    ApiError::NotImplemented(
        "creating models from a Modelfile is not supported: import a GGUF file with `ondevice models import FILE --name NAME` (POST /api/v1/models/import), or name another with POST /api/copy".to_owned(),
    )
}

/// Pushing a model to a registry is not supported.
#[utoipa::path(post, path = "/api/push", tag = "ollama",
    security(("bearer" = ["models"])),
    responses(
        (status = 501, description = "Not supported: export a bundle instead", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn push() -> ApiError {
    ApiError::NotImplemented(
        "pushing models to a registry is not supported: write a bundle with `ondevice models export NAME --output FILE` (GET /api/v1/models/{name}/export) and import it elsewhere".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ModelEntry {
        ModelEntry {
            name: name.to_owned(),
            digest: None,
            size_bytes: None,
            created: None,
            family: None,
            quantization: None,
            parameters: None,
            runtimes: Vec::new(),
        }
    }

    #[test]
    fn names_find_their_entry_with_the_default_tag() {
        let models = [entry("smollm2:latest"), entry("team/m:v1")];
        assert_eq!(find_entry(&models, "smollm2").map(|m| m.name.as_str()), Some("smollm2:latest"));
        assert_eq!(find_entry(&models, "smollm2:latest").map(|m| m.name.as_str()), Some("smollm2:latest"));
        assert_eq!(find_entry(&models, "team/m:v1").map(|m| m.name.as_str()), Some("team/m:v1"));
        assert!(find_entry(&models, "team/m").is_none());
        assert!(find_entry(&models, "smollm2:v2").is_none());
    }
}
