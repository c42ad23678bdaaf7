//! `ondevice.v1.VectorService`: collections over gRPC (list, get, create, delete, documents,
//! streamed query hits, and `Index`, which starts an `index` job and streams it until it
//! finishes). Scopes come from the method table in `grpc.rs`; domain errors map through
//! `ApiError` like HTTP.

use std::pin::Pin;

use futures_util::Stream;
use ondevice_proto::v1 as pb;
use ondevice_proto::v1::vector_service_server::VectorService as VectorGrpc;
use ondevice_vector::chunk::Format;
use ondevice_vector::{
    CollectionRecord, CreateCollection, Distance, DocumentInput, Filter, QueryInput, QueryRequest, TokenPolicy,
    VectorError,
};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) struct VectorImpl {
    pub state: AppState,
}

fn status(e: impl Into<ApiError>) -> Status {
    e.into().to_status()
}

fn collection(r: CollectionRecord) -> pb::Collection {
    let s = r.spec;
    pb::Collection {
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
        documents: r.documents,
        chunks: r.chunks,
        index_bytes: r.index_bytes.unwrap_or(0),
        created_at: r.created_at,
    }
}

fn json_object(text: &str, what: &str) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    if text.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(status(ApiError::InvalidRequest(format!("{what} must be a JSON object")))),
    }
}

type HitStream = Pin<Box<dyn Stream<Item = Result<pb::Hit, Status>> + Send>>;

#[tonic::async_trait]
impl VectorGrpc for VectorImpl {
    async fn list_collections(
        &self,
        _req: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let all = self.state.require_vectors().map_err(status)?.list().await.map_err(status)?;
        Ok(Response::new(pb::ListCollectionsResponse { collections: all.into_iter().map(collection).collect() }))
    }

    async fn get_collection(&self, req: Request<pb::GetCollectionRequest>) -> Result<Response<pb::Collection>, Status> {
        let name = req.into_inner().name;
        let rec = self.state.require_vectors().map_err(status)?.show(&name).await.map_err(status)?;
        Ok(Response::new(collection(rec)))
    }

    async fn create_collection(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let r = req.into_inner();
        let d = CreateCollection::new(&r.name, &r.model);
        let mut c = d.clone();
        c.backend = (!r.backend.is_empty()).then_some(r.backend);
        if !r.distance.is_empty() {
            c.distance = Distance::parse(&r.distance).map_err(status)?;
        }
        if r.chunk_tokens > 0 {
            c.chunking.max_tokens = r.chunk_tokens;
        }
        if let Some(o) = r.chunk_overlap {
            c.chunking.overlap_tokens = o;
        }
        if r.max_input_tokens > 0 {
            c.max_input_tokens = r.max_input_tokens;
        }
        c.token_policy = match r.token_policy.as_str() {
            "" | "truncate" => TokenPolicy::Truncate,
            "error" => TokenPolicy::Error,
            other => {
                return Err(status(ApiError::InvalidRequest(format!(
                    "unknown token_policy {other:?}: use truncate or error"
                ))));
            }
        };
        let rec = self.state.require_vectors().map_err(status)?.create(c).await.map_err(status)?;
        Ok(Response::new(collection(rec)))
    }

    async fn delete_collection(
        &self,
        req: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let name = req.into_inner().name;
        let vectors = self.state.require_vectors().map_err(status)?;
        let before = vectors.show(&name).await.map_err(status)?;
        if !vectors.delete(&name).await.map_err(status)? {
            return Err(status(VectorError::NotFound(name)));
        }
        Ok(Response::new(collection(before)))
    }

    async fn upsert_documents(
        &self,
        req: Request<pb::UpsertDocumentsRequest>,
    ) -> Result<Response<pb::UpsertDocumentsResponse>, Status> {
        let r = req.into_inner();
        let mut docs = Vec::with_capacity(r.documents.len());
        for d in r.documents {
            docs.push(DocumentInput {
                id: d.id,
                text: d.text,
                source: (!d.source.is_empty()).then_some(d.source),
                metadata: json_object(&d.metadata_json, "metadata_json")?,
                format: if d.format.is_empty() { Format::Text } else { Format::parse(&d.format).map_err(status)? },
            });
        }
        let out = self.state.require_vectors().map_err(status)?.upsert(&r.collection, docs).await.map_err(status)?;
        Ok(Response::new(pb::UpsertDocumentsResponse {
            documents: out.documents,
            chunks: out.chunks,
            unchanged: out.unchanged,
        }))
    }

    async fn delete_documents(
        &self,
        req: Request<pb::DeleteDocumentsRequest>,
    ) -> Result<Response<pb::DeleteDocumentsResponse>, Status> {
        let r = req.into_inner();
        let deleted = self
            .state
            .require_vectors()
            .map_err(status)?
            .delete_documents(&r.collection, r.ids)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteDocumentsResponse { deleted }))
    }

    type QueryStream = HitStream;

    async fn query(&self, req: Request<pb::QueryRequest>) -> Result<Response<HitStream>, Status> {
        let r = req.into_inner();
        let input = match (r.query.is_empty(), r.vector.is_empty()) {
            (false, true) => QueryInput::Text(r.query),
            (true, false) => QueryInput::Vector(r.vector),
            _ => return Err(status(ApiError::InvalidRequest("send either query (text) or vector".into()))),
        };
        let filter = if r.filter_json.is_empty() {
            Filter::default()
        } else {
            let v: serde_json::Value = serde_json::from_str(&r.filter_json)
                .map_err(|e| status(ApiError::InvalidRequest(format!("filter_json: {e}"))))?;
            Filter::from_json(&v).map_err(status)?
        };
        let k = if r.top_k == 0 { 5 } else { r.top_k as usize };
        let hits = self
            .state
            .require_vectors()
            .map_err(status)?
            .query(&r.collection, QueryRequest { input, k, filter })
            .await
            .map_err(status)?;
        let items: Vec<Result<pb::Hit, Status>> = hits
            .into_iter()
            .map(|h| {
                Ok(pb::Hit {
                    document_id: h.document_id,
                    chunk: h.chunk,
                    text: h.text,
                    source: h.source.unwrap_or_default(),
                    metadata_json: serde_json::Value::Object(h.metadata).to_string(),
                    score: h.score,
                    distance: h.distance,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(items))))
    }

    type IndexStream = super::jobs::JobStream;

    async fn index(&self, req: Request<pb::IndexRequest>) -> Result<Response<Self::IndexStream>, Status> {
        let r = req.into_inner();
        let paths = r.paths.into_iter().map(std::path::PathBuf::from).collect();
        let job = self.state.require_vectors().map_err(status)?.index(&r.collection, paths).await.map_err(status)?;
        Ok(Response::new(super::jobs::watch_stream(&self.state, job).await?))
    }
}
