//! `ondevice.v1.ModelsService`: the registry and pulls over gRPC. Scopes come from the method
//! table in `grpc.rs` (reads need `read`; PullModel, RemoveModel, PinModel and QuantizeModel need `models`). Domain errors map through `ApiError` like HTTP.

use ondevice_proto::v1 as pb;
use ondevice_proto::v1::models_service_server::ModelsService;
use ondevice_registry::{ModelRecord, ModelRef};
use tonic::{Request, Response, Status};

use super::jobs::JobStream;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) struct ModelsImpl {
    pub state: AppState,
}

fn status(e: impl Into<ApiError>) -> Status {
    e.into().to_status()
}

fn parse_ref(s: &str) -> Result<ModelRef, Status> {
    s.parse::<ModelRef>().map_err(|e| status(ApiError::InvalidRequest(e.to_string())))
}

fn model(m: ModelRecord) -> pb::Model {
    pb::Model {
        model: m.reference(),
        digest: m.digest.to_string(),
        format: m.format,
        architecture: m.architecture.unwrap_or_default(),
        parameter_count: m.parameter_count.unwrap_or(0),
        quantization: m.quantization.unwrap_or_default(),
        context_length: m.context_length.unwrap_or(0),
        size: m.size,
        source: m.source,
        license: m.license.unwrap_or_default(),
        created_at: m.created_at,
        pinned: m.pinned,
        last_used_at: m.last_used_at.unwrap_or(0),
        provenance_json: m
            .provenance
            .map(|p| serde_json::to_string(&crate::routes::models::ProvenanceView::from(p)).unwrap_or_default())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ModelsService for ModelsImpl {
    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.state.models().list().await.map_err(status)?;
        Ok(Response::new(pb::ListModelsResponse { models: models.into_iter().map(model).collect() }))
    }

    async fn get_model(&self, req: Request<pb::GetModelRequest>) -> Result<Response<pb::Model>, Status> {
        let r = parse_ref(&req.into_inner().name)?;
        Ok(Response::new(model(self.state.models().show(r).await.map_err(status)?)))
    }

    type PullModelStream = JobStream;

    async fn pull_model(&self, req: Request<pb::PullModelRequest>) -> Result<Response<JobStream>, Status> {
        let req = req.into_inner();
        let name = if req.name.is_empty() { None } else { Some(parse_ref(&req.name)?) };
        let started = self.state.require_pulls().map_err(status)?.pull(&req.model, name).await.map_err(status)?;
        Ok(Response::new(super::jobs::watch_stream(&self.state, started).await?))
    }

    type QuantizeModelStream = JobStream;

    async fn quantize_model(&self, req: Request<pb::QuantizeModelRequest>) -> Result<Response<JobStream>, Status> {
        let r = req.into_inner();
        let some = |s: String| if s.is_empty() { None } else { Some(s) };
        let params = ondevice_quantize::job::QuantizeParams {
            source: r.source,
            quant_type: r.r#type,
            name: some(r.name),
            imatrix: some(r.imatrix).map(Into::into),
            make_imatrix: r.make_imatrix,
            allow_requantize: r.allow_requantize,
            tensor_types: r.tensor_types,
            output_tensor_type: some(r.output_tensor_type),
            token_embedding_type: some(r.token_embedding_type),
            no_quality: r.no_quality,
        };
        let started = self.state.require_quantize().map_err(status)?.quantize(params).await.map_err(status)?;
        Ok(Response::new(super::jobs::watch_stream(&self.state, started).await?))
    }

    async fn remove_model(
        &self,
        req: Request<pb::RemoveModelRequest>,
    ) -> Result<Response<pb::RemoveModelResponse>, Status> {
        let r = parse_ref(&req.into_inner().name)?;
        let removed = self.state.models().remove(r).await.map_err(status)?;
        Ok(Response::new(pb::RemoveModelResponse { removed: removed.into_iter().map(model).collect() }))
    }

    async fn pin_model(&self, req: Request<pb::PinModelRequest>) -> Result<Response<pb::PinModelResponse>, Status> {
        let req = req.into_inner();
        let r = parse_ref(&req.name)?;
        let models = self.state.models().set_pinned(r, req.pinned).await.map_err(status)?;
        tracing::info!(model = %req.name, pinned = req.pinned, "model pin changed");
        Ok(Response::new(pb::PinModelResponse { models: models.into_iter().map(model).collect() }))
    }
}
