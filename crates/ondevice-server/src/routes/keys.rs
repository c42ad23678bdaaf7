//! `/api/v1/keys`: create, list and revoke API keys (admin scope).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ondevice_auth::{KeyInfo, Scope, Scopes};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

/// An API key as listed (never the secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Public id (the part after `odk_`).
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Scopes: `admin`, `models`, `infer`, `read`.
    pub scopes: Vec<String>,
    /// RFC 3339 time of creation.
    pub created_at: String,
    /// RFC 3339 time of the last accepted use (updated at most once a minute).
    pub last_used_at: Option<String>,
    /// RFC 3339 time of revocation.
    pub revoked_at: Option<String>,
}

/// Body of `POST /api/v1/keys`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A name for people: 1 to 64 letters, digits, `.`, `_`, `-`. Default: `key-<id>`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: Option<String>,
    /// At least one of `admin`, `models`, `infer`, `read`.
    #[schema(value_type = Vec<ScopeName>, min_items = 1)]
    pub scopes: Vec<String>,
}

/// A scope a key can hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeName {
    /// Everything, including key management.
    Admin,
    /// Registry writes: import, pull, remove, pin.
    Models,
    /// Generation and embeddings.
    Infer,
    /// Reading status, models, jobs and metrics.
    Read,
}

/// Answer of `POST /api/v1/keys`: the only time the key is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The stored key.
    #[serde(flatten)]
    pub info: KeyView,
    /// The key to send as `Authorization: Bearer <key>`. Store it now; it cannot be shown again.
    pub key: String,
}

fn rfc3339(t: i64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string()
}

impl From<KeyInfo> for KeyView {
    fn from(k: KeyInfo) -> Self {
        KeyView {
            id: k.id.to_string(),
            name: k.name,
            scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            created_at: rfc3339(k.created_at),
            last_used_at: k.last_used_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
        }
    }
}

/// Every API key, revoked ones included.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Keys", body = Vec<KeyView>),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<KeyView>> {
    Json(state.verifier().list_keys().into_iter().map(KeyView::from).collect())
}

/// Creates a key and returns it once.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys",
    security(("bearer" = ["admin"])),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Created; the key is in `key`", body = CreatedKey),
        (status = 400, description = "Bad name or scope", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let scopes: Scopes = req
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let verifier = state.verifier().clone();
    let (info, key) = tokio::task::spawn_blocking(move || verifier.create_key(req.name.as_deref(), scopes)).await??;
    tracing::info!(key_id = %info.id, name = %info.name, scopes = %info.scopes.to_list(), "api key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { info: info.into(), key })))
}

/// Revokes a key; effective immediately on every surface. The last active admin key cannot be
/// revoked (409): create another admin key first.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Revoked", body = KeyView),
        (status = 404, description = "No such key", body = crate::error::ErrorBody),
        (status = 409, description = "The key is the last active admin key", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    let verifier = state.verifier().clone();
    let info = tokio::task::spawn_blocking(move || verifier.revoke(&id)).await??;
    let sessions = state.sessions().end_key(info.id);
    tracing::info!(key_id = %info.id, console_sessions_ended = sessions, "api key revoked");
    Ok(Json(info.into()))
}
