//! `ondevice.v1.ModelsService`: the registry and pulls over gRPC. Scopes come from the method
//! table in `grpc.rs` (reads need `read`; PullModel, RemoveModel, PinModel and CancelJob need
//! `models`). Domain errors map through `ApiError` like HTTP.

use std::pin::Pin;

use futures_util::Stream;
use ondevice_proto::v1 as pb;
use ondevice_proto::v1::models_service_server::ModelsService;
use ondevice_registry::jobs::JobInfo;
use ondevice_registry::{ModelRecord, ModelRef};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) struct ModelsImpl {
    pub state: AppState,
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

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
    }
}

fn job(j: JobInfo) -> pb::Job {
    pb::Job {
        id: j.id,
        kind: j.kind.to_owned(),
        model: j.model,
        source: j.source,
        state: j.state.as_str().to_owned(),
        total_bytes: j.total_bytes.unwrap_or(0),
        done_bytes: j.done_bytes,
        bytes_per_second: j.bytes_per_second,
        error: j.error.unwrap_or_default(),
        digest: j.digest.unwrap_or_default(),
        created_at: j.created_at,
        updated_at: j.updated_at,
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
        let jobs = self.state.require_jobs().map_err(status)?.clone();
        let started = jobs.pull(&req.model, name).await.map_err(status)?;
        let rx = jobs.watch(&started.id);
        let shutdown = self.state.shutdown_token().clone();
        let (tx, out) = tokio::sync::mpsc::channel(8);
        self.state.tasks().spawn(async move {
            let terminal = started.state.is_terminal();
            if tx.send(Ok(job(started))).await.is_err() || terminal {
                return;
            }
            let Some(mut rx) = rx else { return };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let j = rx.borrow_and_update().clone();
                let end = j.state.is_terminal();
                if tx.send(Ok(job(j))).await.is_err() || end {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
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

    async fn list_jobs(&self, _req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self.state.require_jobs().map_err(status)?.list().await.map_err(status)?;
        Ok(Response::new(pb::ListJobsResponse { jobs: jobs.into_iter().map(job).collect() }))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        let info = self.state.require_jobs().map_err(status)?.cancel(&id).await.map_err(status)?;
        Ok(Response::new(job(info)))
    }
}
