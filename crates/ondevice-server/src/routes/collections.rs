//! Vector collections: `/api/v1/collections` (create, list, show, delete), documents upsert and
//! delete, `POST /api/v1/collections/{name}/query` (top-k with scores, chunk text and source),
//! indexing files (an `index` job) and moving a collection to another model (a `reembed` job).
//! Queries and reads need `read`; every write needs `models`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ondevice_vector::chunk::Format;
use ondevice_vector::{
    ChunkingSettings, CollectionRecord, CreateCollection, Distance, DocumentInput, Filter, Hit, IndexParams,
    QueryInput, QueryRequest, TokenPolicy,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson};
use crate::routes::jobs::JobView;
use crate::state::AppState;

/// A collection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollectionView {
    /// Its name.
    pub name: String,
    /// `embedded` or `pgvector`.
    pub backend: String,
    /// The embedding model as named at creation.
    pub model: String,
    /// The model pinned: registry digest, or `runtime:RUNTIME/MODEL`.
    pub model_digest: String,
    /// Vector length.
    pub dimension: u32,
    /// `cosine`, `dot` or `l2`.
    pub distance: String,
    /// Chunk size in the model's tokens.
    pub chunk_tokens: u32,
    /// Tokens shared by neighbouring chunks.
    pub chunk_overlap: u32,
    /// Longest text sent to the model.
    pub max_input_tokens: u32,
    /// `truncate` or `error` for longer texts.
    pub token_policy: String,
    /// HNSW `M`.
    pub hnsw_m: u32,
    /// HNSW `efConstruction`.
    pub hnsw_ef_construction: u32,
    /// HNSW `ef` at query time.
    pub hnsw_ef_search: u32,
    /// Documents stored.
    pub documents: u64,
    /// Chunks (vectors) stored.
    pub chunks: u64,
    /// Bytes of the ANN index, when known.
    pub index_bytes: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<CollectionRecord> for CollectionView {
    fn from(r: CollectionRecord) -> Self {
        let s = r.spec;
        CollectionView {
            name: s.name,
            backend: r.backend.to_owned(),
            model: s.model,
            model_digest: s.model_digest,
            dimension: s.dimension,
            distance: s.distance.as_str().to_owned(),
            chunk_tokens: s.chunking.max_tokens,
            chunk_overlap: s.chunking.overlap_tokens,
            max_input_tokens: s.max_input_tokens,
            token_policy: match s.token_policy {
                TokenPolicy::Truncate => "truncate",
                TokenPolicy::Error => "error",
            }
            .to_owned(),
            hnsw_m: s.index.m,
            hnsw_ef_construction: s.index.ef_construction,
            hnsw_ef_search: s.index.ef_search,
            documents: r.documents,
            chunks: r.chunks,
            index_bytes: r.index_bytes,
            created_at: r.created_at,
        }
    }
}

/// Every collection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectionList {
    /// By name.
    pub collections: Vec<CollectionView>,
}

/// A new collection. Everything but `name` and `model` has a default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionBody {
    /// 1-64 letters, digits, `_`, `.` or `-`, starting with a letter or digit.
    #[schema(value_type = crate::openapi::CollectionNameSchema)]
    pub name: String,
    /// The embedding model (`name:tag`, `sha256:` digest, or a model a configured runtime serves).
    #[schema(value_type = crate::routes::models::ModelRefSchema)]
    pub model: String,
    /// `embedded` (default unless `[vector] backend` says otherwise) or `pgvector`.
    #[schema(value_type = Option<String>, pattern = "^(embedded|pgvector)$")]
    pub backend: Option<String>,
    /// `cosine` (default), `dot` or `l2`.
    #[schema(value_type = Option<String>, pattern = "^(cosine|dot|l2)$")]
    pub distance: Option<String>,
    /// Chunk size in the model's tokens (default 256), at most `max_input_tokens`.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub chunk_tokens: Option<u32>,
    /// Overlap in tokens (default 32), smaller than `chunk_tokens`.
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub chunk_overlap: Option<u32>,
    /// Longest text sent to the model (default 512).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub max_input_tokens: Option<u32>,
    /// `truncate` (default) or `error`.
    #[schema(value_type = Option<String>, pattern = "^(truncate|error)$")]
    pub token_policy: Option<String>,
    /// HNSW `M` (default 16).
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub hnsw_m: Option<u32>,
    /// HNSW `efConstruction` (default 128).
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub hnsw_ef_construction: Option<u32>,
    /// HNSW `ef` at query time (default 96).
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub hnsw_ef_search: Option<u32>,
}

/// A document given as text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentBody {
    /// Id in the collection (1-1024 bytes, no control characters); a document with the same id
    /// is replaced.
    #[schema(min_length = 1, max_length = 1024, pattern = "^[^\\x00-\\x1f\\x7f]+$")]
    pub id: String,
    /// Its content.
    pub text: String,
    /// Where it came from (shown with hits).
    pub source: Option<String>,
    /// A JSON object that filters match.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// `text` (default), `markdown`, `code` or `html`.
    #[schema(value_type = Option<String>, pattern = "^(text|markdown|code|html)$")]
    pub format: Option<String>,
}

/// Documents to write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertBody {
    /// 1 to 1000 documents.
    #[schema(min_items = 1, max_items = 1000)]
    pub documents: Vec<DocumentBody>,
}

/// What a write did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UpsertView {
    /// Documents written.
    pub documents: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Documents skipped because the same content was stored.
    pub unchanged: u64,
}

/// Documents to delete.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteDocumentsBody {
    /// Document ids.
    pub ids: Vec<String>,
}

/// How many documents were deleted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeletedView {
    /// Documents that existed.
    pub deleted: u64,
}

/// A query: `query` (text, embedded with the collection's model) or `vector`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// Text to search for.
    pub query: Option<String>,
    /// A vector of the collection's dimension.
    pub vector: Option<Vec<f32>>,
    /// Hits to return, 1-1000 (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::routes::lenient::opt_int")]
    pub top_k: Option<usize>,
    /// Metadata filter: `{"key": value}` (equal) or `{"key": [v1, v2]}` (any of); every key must
    /// match. `top_k` hits come back whenever that many chunks pass.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
}

/// One hit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HitView {
    /// The document id.
    pub document_id: String,
    /// The chunk's position in its document.
    pub chunk: u32,
    /// The chunk's text.
    pub text: String,
    /// The document's source.
    pub source: Option<String>,
    /// The document's metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Higher is closer (cosine similarity for cosine collections).
    pub score: f32,
    /// The backend's distance (smaller is closer).
    pub distance: f32,
}

impl From<Hit> for HitView {
    fn from(h: Hit) -> Self {
        HitView {
            document_id: h.document_id,
            chunk: h.chunk,
            text: h.text,
            source: h.source,
            metadata: h.metadata,
            score: h.score,
            distance: h.distance,
        }
    }
}

/// Query results, closest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryView {
    /// The collection.
    pub collection: String,
    /// Hits.
    pub hits: Vec<HitView>,
}

/// Files and directories to index (paths on the daemon's machine).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexBody {
    /// Files and directories.
    pub paths: Vec<String>,
}

/// The model to move a collection to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    /// The new embedding model.
    pub model: String,
}

fn parse_policy(s: &str) -> Result<TokenPolicy, ApiError> {
    match s {
        "truncate" => Ok(TokenPolicy::Truncate),
        "error" => Ok(TokenPolicy::Error),
        other => Err(ApiError::InvalidRequest(format!("unknown token_policy {other:?}: use truncate or error"))),
    }
}

/// Creates a collection: pins the model's digest and measures its dimension with one embedding.
#[utoipa::path(post, path = "/api/v1/collections", tag = "collections",
    security(("bearer" = ["models"])),
    request_body = CreateCollectionBody,
    responses(
        (status = 201, description = "The collection", body = CollectionView),
        (status = 400, description = "Invalid name or settings, or an unconfigured backend", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown embedding model", body = crate::error::ErrorBody),
        (status = 409, description = "A collection with this name exists", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<CreateCollectionBody>,
) -> Result<(StatusCode, Json<CollectionView>), ApiError> {
    let d = CreateCollection::new(&b.name, &b.model);
    let req = CreateCollection {
        backend: b.backend,
        distance: match b.distance.as_deref() {
            Some(s) => Distance::parse(s)?,
            None => Distance::Cosine,
        },
        chunking: ChunkingSettings {
            max_tokens: b.chunk_tokens.unwrap_or(d.chunking.max_tokens),
            overlap_tokens: b.chunk_overlap.unwrap_or(d.chunking.overlap_tokens),
        },
        max_input_tokens: b.max_input_tokens.unwrap_or(d.max_input_tokens),
        token_policy: b.token_policy.as_deref().map(parse_policy).transpose()?.unwrap_or(d.token_policy),
        index: IndexParams {
            m: b.hnsw_m.unwrap_or(d.index.m),
            ef_construction: b.hnsw_ef_construction.unwrap_or(d.index.ef_construction),
            ef_search: b.hnsw_ef_search.unwrap_or(d.index.ef_search),
        },
        ..d
    };
    let rec = state.require_vectors()?.create(req).await?;
    Ok((StatusCode::CREATED, Json(rec.into())))
}

/// Every collection.
#[utoipa::path(get, path = "/api/v1/collections", tag = "collections",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Collections by name", body = CollectionList),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<CollectionList>, ApiError> {
    let all = state.require_vectors()?.list().await?;
    Ok(Json(CollectionList { collections: all.into_iter().map(CollectionView::from).collect() }))
}

/// One collection with its counts and index size.
#[utoipa::path(get, path = "/api/v1/collections/{name}", tag = "collections",
    security(("bearer" = ["read"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    responses(
        (status = 200, description = "The collection", body = CollectionView),
        (status = 404, description = "No such collection", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<CollectionView>, ApiError> {
    Ok(Json(state.require_vectors()?.show(&name).await?.into()))
}

/// Deletes a collection with its documents and index.
#[utoipa::path(delete, path = "/api/v1/collections/{name}", tag = "collections",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    responses(
        (status = 200, description = "The removed collection, as it was", body = CollectionView),
        (status = 404, description = "No such collection", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<CollectionView>, ApiError> {
    let vectors = state.require_vectors()?;
    let before = vectors.show(&name).await?;
    if vectors.delete(&name).await? {
        Ok(Json(before.into()))
    } else {
        Err(ondevice_vector::VectorError::NotFound(name).into())
    }
}

/// Writes documents: chunks, embeds and stores each (a document with the same id is replaced;
/// one with the same content is skipped).
#[utoipa::path(post, path = "/api/v1/collections/{name}/documents", tag = "collections",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    request_body = UpsertBody,
    responses(
        (status = 200, description = "What was written", body = UpsertView),
        (status = 400, description = "Invalid document, format or input too long", body = crate::error::ErrorBody),
        (status = 404, description = "No such collection", body = crate::error::ErrorBody),
        (status = 409, description = "The collection's model now names other weights", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn upsert(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<UpsertBody>,
) -> Result<Json<UpsertView>, ApiError> {
    if b.documents.is_empty() || b.documents.len() > 1000 {
        return Err(ApiError::InvalidRequest("send 1 to 1000 documents per request".into()));
    }
    let docs = b
        .documents
        .into_iter()
        .map(|d| {
            Ok(DocumentInput {
                id: d.id,
                text: d.text,
                source: d.source,
                metadata: d.metadata.unwrap_or_default(),
                format: d.format.as_deref().map(Format::parse).transpose()?.unwrap_or(Format::Text),
            })
        })
        .collect::<Result<Vec<_>, ondevice_vector::VectorError>>()?;
    let out = state.require_vectors()?.upsert(&name, docs).await?;
    Ok(Json(UpsertView { documents: out.documents, chunks: out.chunks, unchanged: out.unchanged }))
}

/// Deletes documents by id.
#[utoipa::path(post, path = "/api/v1/collections/{name}/documents/delete", tag = "collections",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    request_body = DeleteDocumentsBody,
    responses(
        (status = 200, description = "How many existed", body = DeletedView),
        (status = 404, description = "No such collection", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn delete_documents(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<DeleteDocumentsBody>,
) -> Result<Json<DeletedView>, ApiError> {
    let deleted = state.require_vectors()?.delete_documents(&name, b.ids).await?;
    Ok(Json(DeletedView { deleted }))
}

/// The `top_k` chunks closest to a text or a vector, with scores, chunk text and source.
#[utoipa::path(post, path = "/api/v1/collections/{name}/query", tag = "collections",
    security(("bearer" = ["read"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    request_body = QueryBody,
    responses(
        (status = 200, description = "Hits, closest first", body = QueryView),
        (status = 400, description = "Neither or both of query and vector, bad top_k, filter or dimension", body = crate::error::ErrorBody),
        (status = 404, description = "No such collection", body = crate::error::ErrorBody),
        (status = 409, description = "The collection's model now names other weights", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<QueryBody>,
) -> Result<Json<QueryView>, ApiError> {
    let input = match (b.query, b.vector) {
        (Some(q), None) => QueryInput::Text(q),
        (None, Some(v)) => QueryInput::Vector(v),
        _ => return Err(ApiError::InvalidRequest("send either \"query\" (text) or \"vector\"".into())),
    };
    let filter = match &b.filter {
        Some(f) => Filter::from_json(f)?,
        None => Filter::default(),
    };
    let req = QueryRequest { input, k: b.top_k.unwrap_or(5), filter };
    let hits = state.require_vectors()?.query(&name, req).await?;
    Ok(Json(QueryView { collection: name, hits: hits.into_iter().map(HitView::from).collect() }))
}

/// Indexes files and directories on the daemon's machine into the collection (an `index` job:
/// unchanged files are skipped; follow it at /api/v1/jobs/{id}/events).
#[utoipa::path(post, path = "/api/v1/collections/{name}/index", tag = "collections",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    request_body = IndexBody,
    responses(
        (status = 202, description = "The index job", body = JobView),
        (status = 400, description = "No paths, or an unsupported file", body = crate::error::ErrorBody),
        (status = 404, description = "No such collection or path", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn index(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<IndexBody>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let paths = b.paths.into_iter().map(std::path::PathBuf::from).collect();
    let job = state.require_vectors()?.index(&name, paths).await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// Moves a collection to another embedding model (a `reembed` job); queries answer from the
/// current index until the job finishes.
#[utoipa::path(post, path = "/api/v1/collections/{name}/model", tag = "collections",
    security(("bearer" = ["models"])),
    params(("name" = crate::openapi::CollectionNameSchema, Path, description = "Collection name")),
    request_body = ModelBody,
    responses(
        (status = 202, description = "The reembed job", body = JobView),
        (status = 404, description = "No such collection or model", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid key", body = crate::error::ErrorBody),
        (status = 403, description = "Key lacks the scope", body = crate::error::ErrorBody)))]
pub async fn set_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<ModelBody>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let job = state.require_vectors()?.set_model(&name, b.model).await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// Vector store metrics in the OpenMetrics text format, for `/metrics`: texts and tokens
/// embedded, time spent embedding (texts over seconds is embeddings per second), cache hits, the
/// query latency histogram (HTTP and gRPC queries alike, by backend and by text or vector input),
/// each collection's chunks and index bytes, and each running index job's progress.
pub(crate) async fn metrics_text(state: &AppState) -> String {
    use std::fmt::Write as _;
    let Ok(vectors) = state.require_vectors() else { return String::new() };
    let s = vectors.stats();
    let mut out = String::new();
    for (name, help, value) in [
        (
            "ondevice_vector_embedded_texts",
            "Texts embedded for collections (embedding cache misses).",
            s.embedded as f64,
        ),
        (
            "ondevice_vector_embedded_tokens",
            "Input tokens embedded for collections, as the runtimes report them.",
            s.embedded_tokens as f64,
        ),
        ("ondevice_vector_embed_seconds", "Seconds spent in embedding requests for collections.", s.embed_seconds),
        ("ondevice_vector_embedding_cache_hits", "Texts answered from the embedding cache.", s.cache_hits as f64),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {value}");
    }
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    out.push_str("# HELP ondevice_vector_query_seconds Time to answer a collection query (embedding a text query included).\n# TYPE ondevice_vector_query_seconds histogram\n");
    for q in &s.queries {
        let labels = format!("backend=\"{}\",input=\"{}\"", q.backend, q.input);
        let bounds = ondevice_vector::metrics::QUERY_BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_owned()]);
        for (le, n) in bounds.zip(&q.cumulative) {
            let _ = writeln!(out, "ondevice_vector_query_seconds_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "ondevice_vector_query_seconds_sum{{{labels}}} {}", q.sum_seconds);
        let _ = writeln!(out, "ondevice_vector_query_seconds_count{{{labels}}} {}", q.count);
    }
    out.push_str("# HELP ondevice_vector_index_job_files Files of a running index job: found by the walk (total) and finished (done).\n# TYPE ondevice_vector_index_job_files gauge\n");
    for j in &s.index_jobs {
        for (what, n) in [("total", j.files_total), ("done", j.files_done)] {
            let _ = writeln!(
                out,
                "ondevice_vector_index_job_files{{job=\"{}\",collection=\"{}\",state=\"{what}\"}} {n}",
                label(&j.job),
                label(&j.collection)
            );
        }
    }
    out.push_str("# HELP ondevice_vector_index_job_chunks Chunks a running index job has written.\n# TYPE ondevice_vector_index_job_chunks gauge\n");
    for j in &s.index_jobs {
        let _ = writeln!(
            out,
            "ondevice_vector_index_job_chunks{{job=\"{}\",collection=\"{}\"}} {}",
            label(&j.job),
            label(&j.collection),
            j.chunks
        );
    }
    let Ok(all) = vectors.list().await else { return out };
    out.push_str(
        "# HELP ondevice_vector_chunks Chunks (vectors) stored in a collection.\n# TYPE ondevice_vector_chunks gauge\n",
    );
    for c in &all {
        let _ = writeln!(
            out,
            "ondevice_vector_chunks{{collection=\"{}\",backend=\"{}\"}} {}",
            label(&c.spec.name),
            c.backend,
            c.chunks
        );
    }
    out.push_str("# HELP ondevice_vector_index_bytes Bytes of a collection's ANN index.\n# TYPE ondevice_vector_index_bytes gauge\n");
    for c in &all {
        let _ = writeln!(
            out,
            "ondevice_vector_index_bytes{{collection=\"{}\",backend=\"{}\"}} {}",
            label(&c.spec.name),
            c.backend,
            c.index_bytes.unwrap_or(0)
        );
    }
    out
}
