//! `/api/v1/prompts`: versioned prompt packs. Reads (`read`): list, show, render, diff, test,
//! export. Writes (`models`): publish (from files or an archive), rollback, delete. The library is
//! reached through [`ondevice_prompts::PromptService`]; a daemon without it answers 503.
//!
//! A reference in a path is `name`, `name@1.2.0`, `name@^1.2` (percent-encode `^` as `%5E`) or
//! `name@label`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ondevice_prompts::archive::VerifyingKey;
use ondevice_prompts::library::{PackSummary, Published, VersionInfo};
use ondevice_prompts::service::{PackDetail, RenderRequest as DomainRender, RenderResult};
use ondevice_prompts::{PackRef, PromptService};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

/// One published version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromptVersionView {
    /// Pack name.
    pub name: String,
    /// Semver version.
    pub version: String,
    /// Content digest, `sha256:<hex>`.
    pub digest: String,
    /// One line.
    pub description: String,
    /// Labels pointing at this version.
    pub labels: Vec<String>,
    /// ed25519 public key (hex) of the archive's signer, for imported signed packs.
    pub signer: Option<String>,
    /// Unix seconds.
    pub published_at: i64,
}

impl From<VersionInfo> for PromptVersionView {
    fn from(v: VersionInfo) -> Self {
        PromptVersionView {
            name: v.name,
            version: v.version,
            digest: v.digest,
            description: v.description,
            labels: v.labels,
            signer: v.signer,
            published_at: v.published_at,
        }
    }
}

/// One pack.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromptPackView {
    /// Pack name.
    pub name: String,
    /// The version a bare name resolves to (`production`, else the highest).
    pub current: Option<String>,
    /// Description of the current version.
    pub description: String,
    /// Label → version.
    pub labels: BTreeMap<String, String>,
    /// Every version, oldest first.
    pub versions: Vec<String>,
}

impl From<PackSummary> for PromptPackView {
    fn from(p: PackSummary) -> Self {
        PromptPackView {
            name: p.name,
            current: p.current,
            description: p.description,
            labels: p.labels,
            versions: p.versions,
        }
    }
}

/// One label move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelMoveView {
    /// Label.
    pub label: String,
    /// Where it points now (`null`: removed).
    pub version: Option<String>,
    /// Where it pointed before.
    pub previous: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// One version in full.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromptDetailView {
    /// The version resolved.
    pub version: PromptVersionView,
    /// Every version of the pack, oldest first.
    pub versions: Vec<PromptVersionView>,
    /// Label moves, oldest first.
    pub history: Vec<LabelMoveView>,
    /// The manifest (`pack.toml`) as JSON.
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    /// Files, path → text.
    pub files: BTreeMap<String, String>,
}

impl From<PackDetail> for PromptDetailView {
    fn from(d: PackDetail) -> Self {
        PromptDetailView {
            version: d.version.into(),
            versions: d.versions.into_iter().map(Into::into).collect(),
            history: d
                .history
                .into_iter()
                .map(|m| LabelMoveView { label: m.label, version: m.version, previous: m.previous, at: m.at })
                .collect(),
            manifest: serde_json::to_value(&d.manifest).unwrap_or_default(),
            files: d.files,
        }
    }
}

/// Body of a render.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptRenderRequest {
    /// Variables by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Count tokens with this model's tokenizer (otherwise an estimate of four characters a token).
    pub model: Option<String>,
    /// Most prompt tokens (default: the pack's `[budget] tokens`, else none).
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub budget: Option<usize>,
    /// Embedding model for `extractive` compression (default: the pack's `[model] embedding`).
    pub embedding_model: Option<String>,
}

/// One rendered message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromptMessageView {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Plain content.
    pub content: String,
}

/// What compression did to one variable.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SectionView {
    /// The variable.
    pub variable: String,
    /// `head`, `tail`, `middle` or `extractive`.
    pub policy: String,
    /// Its tokens before.
    pub tokens_before: usize,
    /// Its tokens after.
    pub tokens_after: usize,
}

/// What fitting the budget did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompressionView {
    /// The budget.
    pub budget: usize,
    /// Prompt tokens before.
    pub tokens_before: usize,
    /// Prompt tokens after (at most `budget`).
    pub tokens_after: usize,
    /// Variables that changed.
    pub sections: Vec<SectionView>,
}

/// A rendered pack.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromptRenderView {
    /// Pack name.
    pub name: String,
    /// Version rendered.
    pub version: String,
    /// Its digest.
    pub digest: String,
    /// The messages, to send as a chat.
    pub messages: Vec<PromptMessageView>,
    /// Prompt tokens of the whole conversation with its framing.
    pub tokens: usize,
    /// `model:NAME` or `estimate`.
    pub tokenizer: String,
    /// Present when a budget applied.
    pub compression: Option<CompressionView>,
}

impl From<RenderResult> for PromptRenderView {
    fn from(r: RenderResult) -> Self {
        PromptRenderView {
            name: r.name,
            version: r.version,
            digest: r.digest,
            messages: r
                .messages
                .into_iter()
                .map(|m| PromptMessageView { role: m.role.as_str().to_owned(), content: m.content })
                .collect(),
            tokens: r.tokens,
            tokenizer: r.tokenizer,
            compression: r.compression.map(|c| CompressionView {
                budget: c.budget,
                tokens_before: c.tokens_before,
                tokens_after: c.tokens_after,
                sections: c
                    .sections
                    .into_iter()
                    .map(|s| SectionView {
                        variable: s.variable,
                        policy: format!("{:?}", s.policy).to_lowercase(),
                        tokens_before: s.tokens_before,
                        tokens_after: s.tokens_after,
                    })
                    .collect(),
            }),
        }
    }
}

/// Body of a publish: the pack's files, or an archive.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Files of the pack directory, path → text (`pack.toml`, templates, `tests/*.toml`).
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// Or: an archive made by `ondevice prompts export` (its JSON text).
    #[serde(default)]
    pub archive: Option<String>,
    /// With an archive: accept it only when signed by one of these ed25519 public keys (hex).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Labels to move to the new version (default: the manifest's, else `production`; for an
    /// archive, the manifest's only).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A lint finding.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FindingView {
    /// `warning` or `error`.
    pub severity: String,
    /// Short code such as `unused-variable`.
    pub code: String,
    /// Where.
    pub location: String,
    /// What, and what to do.
    pub message: String,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishView {
    /// The version.
    pub version: PromptVersionView,
    /// `false` when the same content was already published.
    pub created: bool,
    /// Lint warnings.
    pub warnings: Vec<FindingView>,
}

impl From<Published> for PublishView {
    fn from(p: Published) -> Self {
        PublishView {
            version: p.version.into(),
            created: p.created,
            warnings: p
                .warnings
                .into_iter()
                .map(|f| FindingView {
                    severity: format!("{:?}", f.severity).to_lowercase(),
                    code: f.code.to_owned(),
                    location: f.location,
                    message: f.message,
                })
                .collect(),
        }
    }
}

/// Body of a rollback.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to serve when a request names no version.
    #[schema(value_type = crate::openapi::VersionSchema)]
    pub version: String,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackView {
    /// The version now served.
    pub version: PromptVersionView,
    /// The version served before.
    pub previous: Option<String>,
}

/// Query of a diff.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The other reference.
    #[param(value_type = crate::openapi::PackRefSchema)]
    pub to: String,
}

/// A unified diff.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiffView {
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Unified diff of every file; empty when identical.
    pub diff: String,
}

/// One pack test's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TestView {
    /// Test name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What differs.
    pub failure: Option<String>,
}

fn service(state: &AppState) -> Result<&Arc<dyn PromptService>, ApiError> {
    state.require_prompts()
}

fn reference(s: &str) -> Result<PackRef, ApiError> {
    s.parse::<PackRef>().map_err(ApiError::from)
}

/// Every pack with its versions and labels.
#[utoipa::path(get, path = "/api/v1/prompts", tag = "prompts",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Packs, by name", body = Vec<PromptPackView>),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<PromptPackView>>, ApiError> {
    let packs = service(&state)?.list().await?;
    Ok(Json(packs.into_iter().map(Into::into).collect()))
}

/// One version with the pack's versions, label history and files.
#[utoipa::path(get, path = "/api/v1/prompts/{reference}", tag = "prompts",
    security(("bearer" = ["read"])),
    params(("reference" = crate::openapi::PackRefSchema, Path, description = "`name`, `name@1.2.0`, `name@^1.2` or `name@label`")),
    responses(
        (status = 200, description = "The version", body = PromptDetailView),
        (status = 400, description = "Malformed reference", body = crate::error::ErrorBody),
        (status = 404, description = "No such pack or version", body = crate::error::ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(r): Path<String>) -> Result<Json<PromptDetailView>, ApiError> {
    let d = service(&state)?.show(reference(&r)?).await?;
    Ok(Json(d.into()))
}

/// Renders a version with variables; with `budget`, compresses to fit it (never more tokens).
#[utoipa::path(post, path = "/api/v1/prompts/{reference}/render", tag = "prompts",
    security(("bearer" = ["read"])),
    params(("reference" = crate::openapi::PackRefSchema, Path, description = "`name`, `name@1.2.0`, `name@^1.2` or `name@label`")),
    request_body = PromptRenderRequest,
    responses(
        (status = 200, description = "The messages and their token count", body = PromptRenderView),
        (status = 400, description = "Bad variables, a template error, or a budget too small", body = crate::error::ErrorBody),
        (status = 404, description = "No such pack, version or model", body = crate::error::ErrorBody)))]
pub async fn render(
    State(state): State<AppState>,
    Path(r): Path<String>,
    ApiJson(req): ApiJson<PromptRenderRequest>,
) -> Result<Json<PromptRenderView>, ApiError> {
    let request = DomainRender {
        reference: reference(&r)?,
        variables: req.variables,
        model: req.model,
        budget: req.budget,
        embedding_model: req.embedding_model,
    };
    Ok(Json(service(&state)?.render(request).await?.into()))
}

/// Unified diff between two versions (`?to=REFERENCE`).
#[utoipa::path(get, path = "/api/v1/prompts/{reference}/diff", tag = "prompts",
    security(("bearer" = ["read"])),
    params(("reference" = crate::openapi::PackRefSchema, Path, description = "From"), DiffQuery),
    responses(
        (status = 200, description = "The diff", body = DiffView),
        (status = 404, description = "No such pack or version", body = crate::error::ErrorBody)))]
pub async fn diff(
    State(state): State<AppState>,
    Path(r): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<DiffView>, ApiError> {
    let text = service(&state)?.diff(reference(&r)?, reference(&q.to)?).await?;
    Ok(Json(DiffView { from: r, to: q.to, diff: text }))
}

/// Runs a version's tests (`tests/*.toml`).
#[utoipa::path(post, path = "/api/v1/prompts/{reference}/test", tag = "prompts",
    security(("bearer" = ["read"])),
    params(("reference" = crate::openapi::PackRefSchema, Path, description = "`name`, `name@1.2.0`, `name@^1.2` or `name@label`")),
    responses(
        (status = 200, description = "Outcomes, by test name", body = Vec<TestView>),
        (status = 404, description = "No such pack or version", body = crate::error::ErrorBody)))]
pub async fn test(State(state): State<AppState>, Path(r): Path<String>) -> Result<Json<Vec<TestView>>, ApiError> {
    let outcomes = service(&state)?.test(reference(&r)?).await?;
    Ok(Json(
        outcomes
            .into_iter()
            .map(|t| TestView { name: t.name, passed: t.failure.is_none(), failure: t.failure })
            .collect(),
    ))
}

/// An unsigned archive of one version (`ondevice prompts export --sign-key` signs it locally).
#[utoipa::path(get, path = "/api/v1/prompts/{reference}/export", tag = "prompts",
    security(("bearer" = ["read"])),
    params(("reference" = crate::openapi::PackRefSchema, Path, description = "`name`, `name@1.2.0`, `name@^1.2` or `name@label`")),
    responses(
        (status = 200, description = "The archive (JSON)", body = Object),
        (status = 404, description = "No such pack or version", body = crate::error::ErrorBody)))]
pub async fn export(State(state): State<AppState>, Path(r): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = service(&state)?.export(reference(&r)?).await?;
    let v = serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(v))
}

/// Publishes a pack from its files, or imports an archive (signature checked).
#[utoipa::path(post, path = "/api/v1/prompts", tag = "prompts",
    security(("bearer" = ["models"])),
    request_body = PublishRequest,
    responses(
        (status = 201, description = "Published", body = PublishView),
        (status = 200, description = "The same content was already published", body = PublishView),
        (status = 400, description = "Malformed pack, lint errors, failing tests or a bad signature", body = crate::error::ErrorBody),
        (status = 409, description = "The version exists with other content", body = crate::error::ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<(StatusCode, Json<PublishView>), ApiError> {
    let svc = service(&state)?;
    let published = match (req.files, req.archive) {
        (Some(files), None) => svc.publish(files, req.labels).await?,
        (None, Some(archive)) => {
            if !req.labels.is_empty() {
                return Err(ApiError::InvalidRequest(
                    "labels cannot be given with an archive: move them after the import with rollback".into(),
                ));
            }
            let trusted = req.trusted_keys.iter().map(|k| VerifyingKey::from_hex(k)).collect::<Result<Vec<_>, _>>()?;
            svc.import(archive.into_bytes(), trusted).await?
        }
        _ => return Err(ApiError::InvalidRequest("give exactly one of `files` or `archive`".into())),
    };
    let status = if published.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(published.into())))
}

/// Makes VERSION the one served when a request names no version (moves `production`).
#[utoipa::path(post, path = "/api/v1/prompts/{name}/rollback", tag = "prompts",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::PackNameSchema, Path, description = "Pack name")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "The version now served", body = RollbackView),
        (status = 404, description = "No such pack or version", body = crate::error::ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<Json<RollbackView>, ApiError> {
    let (now, previous) = service(&state)?.rollback(name, req.version).await?;
    Ok(Json(RollbackView { version: now.into(), previous }))
}

/// Deletes one version (its labels go with it; the blob is freed by the next gc).
#[utoipa::path(delete, path = "/api/v1/prompts/{name}/versions/{version}", tag = "prompts",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::PackNameSchema, Path, description = "Pack name"), ("version" = crate::openapi::VersionSchema, Path, description = "Version")),
    responses(
        (status = 200, description = "The deleted version", body = PromptVersionView),
        (status = 404, description = "No such pack or version", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<PromptVersionView>, ApiError> {
    Ok(Json(service(&state)?.delete(name, version).await?.into()))
}
