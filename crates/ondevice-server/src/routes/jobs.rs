//! Pulls and background jobs: `POST /api/v1/models/pull` (models scope) starts or joins a pull
//! job; `/api/v1/jobs` lists, shows and cancels jobs; `/api/v1/jobs/{id}/events` streams a job's
//! progress as Server-Sent Events until it finishes; `/api/v1/catalog` lists pullable models.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use ondevice_jobs::{JobFilter, JobSnapshot, JobState};
use ondevice_registry::ModelRef;
use ondevice_registry::catalog::CatalogEntry;
use ondevice_registry::jobs::PullDetail;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

/// A background job of any kind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// `pull`, `quantize`, `index`, ...
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// How far it is.
    pub progress: ProgressView,
    /// Why it failed.
    pub error: Option<String>,
    /// What the job is about; its shape depends on `kind`.
    #[schema(schema_with = job_detail_schema)]
    pub detail: JobDetail,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
}

/// Progress of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    /// Units done.
    pub done: u64,
    /// Units in all, once known.
    pub total: Option<u64>,
    /// What a unit is: `bytes`, `tensors`, `documents`, ...
    pub unit: String,
    /// What the job is doing now.
    pub message: Option<String>,
}

/// The kind-specific detail of a job: `anyOf`, not `oneOf`, in the schema, since the detail of a
/// kind with a typed view is also a JSON object; `kind` tells which applies.
fn job_detail_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Ref, Schema};
    Schema::AnyOf(
        AnyOfBuilder::new()
            .item(Ref::from_schema_name("PullDetailView"))
            .item(
                ObjectBuilder::new()
                    .description(Some("A kind without a typed detail: its JSON object as the job wrote it")),
            )
            .description(Some("What the job is about; its shape depends on `kind` (`pull`: `PullDetailView`)"))
            .build(),
    )
}

/// The kind-specific detail of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum JobDetail {
    /// `kind: "pull"`.
    Pull(PullDetailView),
    /// A kind without a typed detail yet: its JSON object as the job wrote it.
    Other(serde_json::Map<String, serde_json::Value>),
}

/// Detail of a `pull` job (the fields a pull job showed before jobs were generic).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PullDetailView {
    /// The model being pulled, `name:tag`.
    pub model: String,
    /// Where from: `catalog:NAME` or the URL (query hidden).
    pub source: String,
    /// Bytes to download, once known.
    pub total_bytes: Option<u64>,
    /// Bytes downloaded so far.
    pub done_bytes: u64,
    /// Recent download speed.
    pub bytes_per_second: u64,
    /// The registered digest, on success.
    pub digest: Option<String>,
}

impl From<JobSnapshot> for JobView {
    fn from(j: JobSnapshot) -> Self {
        let detail = match j.kind.as_str() {
            "pull" => {
                let d = PullDetail::of(&j);
                JobDetail::Pull(PullDetailView {
                    model: d.model,
                    source: d.source,
                    total_bytes: d.total_bytes,
                    done_bytes: d.done_bytes,
                    bytes_per_second: d.bytes_per_second,
                    digest: d.digest,
                })
            }
            _ => match j.detail {
                serde_json::Value::Object(m) => JobDetail::Other(m),
                _ => JobDetail::Other(serde_json::Map::new()),
            },
        };
        JobView {
            id: j.id,
            kind: j.kind,
            state: j.state.as_str().to_owned(),
            progress: ProgressView {
                done: j.progress.done,
                total: j.progress.total,
                unit: j.progress.unit,
                message: j.progress.message,
            },
            error: j.error,
            detail,
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
        }
    }
}

/// Filters of `GET /api/v1/jobs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only jobs of this kind (`pull`, `quantize`, `index`, ...).
    pub kind: Option<String>,
    /// Only jobs in this state.
    #[param(value_type = Option<JobStateName>)]
    pub state: Option<String>,
}

/// A job's state, as filters name it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStateName {
    /// Waiting for a slot of its resource class.
    Queued,
    /// Running now.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobsQuery {
    /// The queue's filter; an unknown state is a 400.
    pub fn filter(&self) -> Result<JobFilter, ApiError> {
        let state = match self.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "unknown job state {s:?}: use queued, running, succeeded, failed or cancelled"
                ))
            })?),
        };
        Ok(JobFilter { kind: self.kind.clone().filter(|k| !k.is_empty()), state })
    }
}

/// Body of `POST /api/v1/models/pull`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// A catalog name (`name[:tag]`) or an `https://` / `http://` URL of a GGUF file.
    #[schema(min_length = 1)]
    pub model: String,
    /// Register it as `name[:tag]` (default: the catalog name, or the URL's file name).
    #[schema(value_type = Option<crate::routes::models::ModelRefSchema>)]
    pub name: Option<String>,
}

/// A model the catalogs offer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CatalogView {
    /// `name:tag` to pull.
    pub model: String,
    /// One line for people.
    pub description: Option<String>,
    /// License.
    pub license: Option<String>,
    /// Download size in bytes.
    pub size: u64,
    /// Content digest.
    pub digest: String,
    /// Mirrors (queries hidden).
    pub urls: Vec<String>,
    /// Which catalog lists it.
    pub catalog: String,
    /// Whether a model with this digest is already registered.
    pub present: bool,
}

/// The catalogs' models and any catalog that could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CatalogResponse {
    /// Pullable models, by name.
    pub models: Vec<CatalogView>,
    /// Catalog sources that failed (the others are listed).
    pub problems: Vec<String>,
}

/// Starts a pull (or joins the running pull of the same model) and returns its job.
#[utoipa::path(post, path = "/api/v1/models/pull", tag = "models",
    security(("bearer" = ["models"])),
    request_body = PullRequest,
    responses(
        (status = 202, description = "The pull job; follow it at /api/v1/jobs/{id}/events", body = JobView),
        (status = 400, description = "Invalid name or URL, or a refused destination", body = crate::error::ErrorBody),
        (status = 404, description = "Not in any catalog", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn pull(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let pulls = state.require_pulls()?;
    let name = req
        .name
        .as_deref()
        .map(str::parse::<ModelRef>)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let job = pulls.pull(&req.model, name).await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// Models the bundled and configured catalogs offer (`ondevice models list --available`).
#[utoipa::path(get, path = "/api/v1/catalog", tag = "models",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Pullable models", body = CatalogResponse),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn catalog(State(state): State<AppState>) -> Result<Json<CatalogResponse>, ApiError> {
    let catalog = state.require_pulls()?.catalog().await;
    let present: std::collections::BTreeSet<String> =
        state.models().list().await?.into_iter().map(|m| m.digest.to_string()).collect();
    let view = |e: &CatalogEntry| CatalogView {
        model: e.name.to_string(),
        description: e.description.clone(),
        license: e.license.clone(),
        size: e.file.size,
        digest: e.file.digest.to_string(),
        urls: e.file.urls.iter().map(ondevice_registry::safety::redact_url).collect(),
        catalog: e.source.clone(),
        present: present.contains(&e.file.digest.to_string()),
    };
    Ok(Json(CatalogResponse { models: catalog.entries().map(view).collect(), problems: catalog.problems.clone() }))
}

/// Jobs, oldest first, optionally of one kind and/or in one state (finished jobs are kept for
/// `[jobs] keep_finished_days`, at most `[jobs] keep_finished` of them).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    security(("bearer" = ["read"])),
    params(JobsQuery),
    responses(
        (status = 200, description = "Jobs", body = Vec<JobView>),
        (status = 400, description = "Unknown state or query parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let filter = query.filter()?;
    Ok(Json(state.require_jobs()?.list(&filter).await?.into_iter().map(JobView::from).collect()))
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.require_jobs()?.get(&id).await?.into()))
}

/// Cancels a queued or running job (a pull's partial download is deleted) and returns it once
/// it stopped.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    security(("bearer" = ["models"])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The cancelled job", body = JobView),
        (status = 409, description = "The job already finished", body = crate::error::ErrorBody),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let job = state.require_jobs()?.cancel(&id).await?;
    tracing::info!(job = %id, "job cancelled");
    Ok(Json(job.into()))
}

/// One Server-Sent Event of `/api/v1/jobs/{id}/events`, as the schema describes the stream:
/// `event: job`, and in `data` a [`JobView`] as JSON.
pub struct JobEvent;

impl utoipa::PartialSchema for JobEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .description(Some("One event of the stream: `event: job`, `data`: a JobView as JSON"))
            .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["job"])))
            .required("event")
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .description(Some("The job (a JobView) as JSON")),
            )
            .required("data")
            .into()
    }
}

impl ToSchema for JobEvent {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push((JobView::name().into_owned(), <JobView as utoipa::PartialSchema>::schema()));
        <JobView as ToSchema>::schemas(schemas);
    }
}

/// The job's progress as Server-Sent Events: `event: job` with a [`JobView`] in `data`, sent at
/// once and then on change (at most four a second), ending after the job finishes.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "`text/event-stream` of `event: job` with a JobView as `data`", content_type = "text/event-stream", body = JobEvent),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let jobs = state.require_jobs()?;
    let first = jobs.get(&id).await?;
    let rx = jobs.watch(&id);
    let shutdown = state.shutdown_token().clone();
    let event = |j: JobSnapshot| Event::default().event("job").json_data(JobView::from(j)).unwrap_or_default();
    let stream = futures_util::stream::unfold((Some(first), rx, false), move |(pending, mut rx, ended)| {
        let shutdown = shutdown.clone();
        async move {
            if let Some(j) = pending {
                let end = j.state.is_terminal() || rx.is_none();
                return Some((Ok(event(j)), (None, rx, end)));
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
                        // At most four progress events a second, the newest value winning; the
                        // end of the job is sent at once.
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(250)) => {}
                            _ = r.wait_for(|j| j.state.is_terminal()) => {}
                        }
                    }
                    let j = r.borrow_and_update().clone();
                    let end = j.state.is_terminal();
                    Some((Ok(event(j)), (None, rx, end)))
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
