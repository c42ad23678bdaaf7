//! `/api/v1/models`: the local model registry (list, show, import, remove, pin, verify, gc).
//! Reads need `read`; writes need `models`. The registry is reached through
//! [`ondevice_registry::ModelService`], whose implementation keeps hashing and copying off the async
//! runtime.

use std::path::PathBuf;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ondevice_registry::{ImportMode, ModelRecord, ModelRef, VerifyStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, OptionalJson};
use crate::state::AppState;

/// A model reference in the schema: `name[:tag]` or `sha256:<64 hex>`, the grammar the registry
/// parses (a little stricter: at most 128 characters in all), so that generated clients and
/// schema-driven tests send names the daemon accepts.
pub struct ModelRefSchema;

/// `name[:tag]` or `sha256:<hex>`, as a regular expression.
pub const MODEL_REF_PATTERN: &str = r"^(sha256:[0-9a-f]{64}|[a-z0-9]([a-z0-9_-]|\.[a-z0-9_-])*\.?(/[a-z0-9]([a-z0-9_-]|\.[a-z0-9_-])*\.?)*(:[A-Za-z0-9]([A-Za-z0-9_-]|\.[A-Za-z0-9_-]){0,31}\.?)?)$";

impl utoipa::PartialSchema for ModelRefSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(MODEL_REF_PATTERN))
            .min_length(Some(1))
            .max_length(Some(128))
            .description(Some(
                "`name[:tag]` (lowercase letters, digits, `.`, `_`, `-`, `/`; tag default `latest`) or `sha256:<hex>`",
            ))
            .into()
    }
}

impl ToSchema for ModelRefSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ModelRef".into()
    }
}

/// A registered model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    /// `name:tag`.
    pub model: String,
    /// Content digest, `sha256:<hex>`.
    pub digest: String,
    /// File format, such as `gguf`.
    pub format: String,
    /// Architecture from the file's metadata, such as `llama`.
    pub architecture: Option<String>,
    /// Parameters (sum of tensor elements).
    pub parameter_count: Option<u64>,
    /// Quantization, such as `Q4_1`.
    pub quantization: Option<String>,
    /// Context length the model was trained for.
    pub context_length: Option<u64>,
    /// Bytes on disk.
    pub size: u64,
    /// Where it came from, such as `import:file.gguf`.
    pub source: String,
    /// License from the file's metadata.
    pub license: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last request that used it (recorded at most once a minute).
    pub last_used_at: Option<i64>,
    /// Never evicted when pinned.
    pub pinned: bool,
    /// Where the content came from, when recorded (a quantization's receipt and parent model).
    pub provenance: Option<ProvenanceView>,
}

/// Where a model's content came from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProvenanceView {
    /// The registry model it was made from, `name:tag` at the time.
    pub parent: Option<String>,
    /// That model's digest.
    pub parent_digest: Option<String>,
    /// The receipt of the tool that made it: `inputs` (each source file's name, `sha256`, `size`),
    /// `source_sha256`, `tool`, `llama_cpp`, `params`, `imatrix_sha256`, `output_sha256`,
    /// `output_size` and `quality` when measured.
    #[schema(value_type = Object)]
    pub receipt: serde_json::Value,
    /// Unix seconds when it was recorded.
    pub recorded_at: i64,
}

impl From<ondevice_registry::Provenance> for ProvenanceView {
    fn from(p: ondevice_registry::Provenance) -> Self {
        ProvenanceView {
            parent: p.parent,
            parent_digest: p.parent_digest.map(|d| d.to_string()),
            receipt: p.receipt,
            recorded_at: p.created_at,
        }
    }
}

impl From<ModelRecord> for ModelView {
    fn from(m: ModelRecord) -> Self {
        ModelView {
            model: m.reference(),
            digest: m.digest.to_string(),
            format: m.format,
            architecture: m.architecture,
            parameter_count: m.parameter_count,
            quantization: m.quantization,
            context_length: m.context_length,
            size: m.size,
            source: m.source,
            license: m.license,
            created_at: m.created_at,
            last_used_at: m.last_used_at,
            pinned: m.pinned,
            provenance: m.provenance.map(Into::into),
        }
    }
}

/// Body of `POST /api/v1/models/import`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// Absolute path of a GGUF file, a Hugging Face safetensors directory (`config.json` plus
    /// `*.safetensors`) or a bundle written by `ondevice models export`, on the daemon's machine
    /// and readable by the daemon's user.
    #[schema(value_type = String, pattern = "^/")]
    pub path: PathBuf,
    /// `name[:tag]` to register it as (default: from the file's metadata or name).
    #[schema(value_type = Option<ModelRefSchema>)]
    pub name: Option<String>,
    /// Hard-link the files into the blob store instead of cloning or copying them (no extra
    /// space; same filesystem only). Risk: the store then shares the files with their owner, and
    /// writing to an original in place silently changes the stored model (`verify` then reports
    /// it corrupt). Default false.
    #[serde(default)]
    pub link: bool,
}

/// Body of `POST /api/v1/models/verify`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Only this model (`name:tag` or `sha256:` digest); every model when absent.
    #[schema(value_type = Option<ModelRefSchema>)]
    pub name: Option<String>,
}

/// The result of re-hashing one model's blob.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    /// `name:tag`.
    pub model: String,
    /// The blob checked: the model's digest, or the failing file's for a directory model.
    pub digest: String,
    /// For a directory model whose file failed: that file's path.
    pub file: Option<String>,
    /// `ok`, `missing`, `corrupt` or `unreadable`.
    pub status: String,
    /// For `corrupt`: the digest of what is on disk; for `unreadable`: why.
    pub detail: Option<String>,
}

/// What garbage collection removed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GcView {
    /// Digests of blobs no model referenced.
    pub removed_blobs: Vec<String>,
    /// Stale partial or temporary files.
    pub removed_partials: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
}

fn parse_ref(s: &str) -> Result<ModelRef, ApiError> {
    s.parse::<ModelRef>().map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// Every registered model.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Models", body = Vec<ModelView>),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ModelView>>, ApiError> {
    let models = state.models().list().await?;
    Ok(Json(models.into_iter().map(ModelView::from).collect()))
}

/// One model, by `name:tag` or `sha256:` digest (URL-encode `/` as `%2F`).
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    security(("bearer" = ["read"])),
    params(("name" = ModelRefSchema, Path, description = "`name[:tag]` or `sha256:<hex>`")),
    responses(
        (status = 200, description = "The model", body = ModelView),
        (status = 400, description = "Invalid name", body = crate::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelView>, ApiError> {
    let r = parse_ref(&name)?;
    Ok(Json(state.models().show(r).await?.into()))
}

/// Removes a model (its blob is freed by `gc` once nothing references it).
#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models",
    security(("bearer" = ["models"])),
    params(("name" = ModelRefSchema, Path, description = "`name[:tag]` or `sha256:<hex>`")),
    responses(
        (status = 200, description = "The removed models", body = Vec<ModelView>),
        (status = 404, description = "No such model", body = crate::error::ErrorBody),
        (status = 400, description = "Invalid model reference", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn remove(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Vec<ModelView>>, ApiError> {
    let r = parse_ref(&name)?;
    let removed = state.models().remove(r).await?;
    tracing::info!(model = %name, "model removed");
    Ok(Json(removed.into_iter().map(ModelView::from).collect()))
}

/// Imports a GGUF file or a Hugging Face safetensors directory (validated first; stored as a
/// copy-on-write clone where the filesystem offers one, else a copy, or a hard link with `link`),
/// or an exported bundle (digests checked; restored bit for bit) from the daemon's filesystem.
/// Content the store already holds needs no free space.
#[utoipa::path(post, path = "/api/v1/models/import", tag = "models",
    security(("bearer" = ["models"])),
    request_body = ImportRequest,
    responses(
        (status = 201, description = "Imported", body = ModelView),
        (status = 400, description = "Not a valid GGUF file, or an invalid name; nothing was written", body = crate::error::ErrorBody),
        (status = 507, description = "No space left for the model; nothing was registered", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<(StatusCode, Json<ModelView>), ApiError> {
    if !req.path.is_absolute() {
        return Err(ApiError::InvalidRequest(format!("{} is not an absolute path", req.path.display())));
    }
    let name = req.name.as_deref().map(parse_ref).transpose()?;
    let mode = if req.link { ImportMode::Link } else { ImportMode::Copy };
    let record = state.models().import(req.path, name, mode).await?;
    tracing::info!(model = %record.reference(), digest = %record.digest, "model imported");
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// Body of `PUT /api/v1/models/{name}/pin`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// `true`: never evicted to make room for a download; `false`: evictable again.
    pub pinned: bool,
}

/// Pins or unpins a model (pinned models are never evicted when `[registry] evict = true`).
#[utoipa::path(put, path = "/api/v1/models/{name}/pin", tag = "models",
    security(("bearer" = ["models"])),
    params(("name" = ModelRefSchema, Path, description = "`name[:tag]` or `sha256:<hex>`")),
    request_body = PinRequest,
    responses(
        (status = 200, description = "The models as they are now", body = Vec<ModelView>),
        (status = 400, description = "Invalid name", body = crate::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn pin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PinRequest>,
) -> Result<Json<Vec<ModelView>>, ApiError> {
    let r = parse_ref(&name)?;
    let changed = state.models().set_pinned(r, req.pinned).await?;
    tracing::info!(model = %name, pinned = req.pinned, "model pin changed");
    Ok(Json(changed.into_iter().map(ModelView::from).collect()))
}

/// Re-hashes model blobs and reports corruption.
#[utoipa::path(post, path = "/api/v1/models/verify", tag = "models",
    security(("bearer" = ["models"])),
    request_body(content = Option<VerifyRequest>, description = "Optional: without a body, every model is verified"),
    responses(
        (status = 200, description = "One report per model", body = Vec<VerifyView>),
        (status = 400, description = "Invalid model reference or body", body = crate::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    OptionalJson(req): OptionalJson<VerifyRequest>,
) -> Result<Json<Vec<VerifyView>>, ApiError> {
    let req = req.unwrap_or_default();
    let name = req.name.as_deref().map(parse_ref).transpose()?;
    let reports = state.models().verify(name).await?;
    Ok(Json(
        reports
            .into_iter()
            .map(|r| {
                let (status, detail) = match r.status {
                    VerifyStatus::Ok => ("ok", None),
                    VerifyStatus::Missing => ("missing", None),
                    VerifyStatus::Corrupt { actual } => ("corrupt", Some(actual.to_string())),
                    VerifyStatus::Unreadable { error } => ("unreadable", Some(error)),
                };
                VerifyView {
                    model: r.model,
                    digest: r.digest.to_string(),
                    file: r.file,
                    status: status.to_owned(),
                    detail,
                }
            })
            .collect(),
    ))
}

/// Deletes blobs no model references and stale partial files.
#[utoipa::path(post, path = "/api/v1/models/gc", tag = "models",
    security(("bearer" = ["models"])),
    responses(
        (status = 200, description = "What was removed", body = GcView),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn gc(State(state): State<AppState>) -> Result<Json<GcView>, ApiError> {
    let report = state.models().gc().await?;
    Ok(Json(GcView {
        removed_blobs: report.removed_blobs.iter().map(ToString::to_string).collect(),
        removed_partials: report.removed_partials.iter().map(|p| p.display().to_string()).collect(),
        freed_bytes: report.freed_bytes,
    }))
}

/// A `Write` that sends 1 MiB pieces into a channel (the export runs on the blocking pool and
/// streams to the client).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20));
        self.tx.blocking_send(Ok(piece)).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// Streams a model as a bundle: a tar with `manifest.json` (metadata, sha256 and size of each
/// file) and the blob, for `ondevice models import` on another machine.
#[utoipa::path(get, path = "/api/v1/models/{name}/export", tag = "models",
    security(("bearer" = ["read"])),
    params(("name" = ModelRefSchema, Path, description = "`name[:tag]` or `sha256:<hex>`")),
    responses(
        (status = 200, description = "The bundle (`application/x-tar`)", content_type = "application/x-tar", body = Vec<u8>),
        (status = 404, description = "No such model", body = crate::error::ErrorBody),
        (status = 400, description = "Invalid model reference", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let r = parse_ref(&name)?;
    let m = state.models().show(r.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let models = state.models().clone();
    tokio::spawn(async move {
        let w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(1 << 20) };
        if let Err(e) = models.export(r, Box::new(w)).await {
            tracing::warn!(error = %e, "export failed midway");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let file = format!("{}.tar", m.reference().replace(['/', ':'], "-"));
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = axum::response::Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-tar"));
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
