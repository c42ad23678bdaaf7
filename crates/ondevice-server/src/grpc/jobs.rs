//! `ondevice.v1.JobsService`: background jobs of every kind over gRPC (List, Get, Cancel, Watch).
//! Scopes come from the method table in `grpc.rs` (reads need `read`, Cancel needs `models`).

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use ondevice_jobs::JobSnapshot;
use ondevice_proto::v1 as pb;
use ondevice_proto::v1::jobs_service_server::JobsService;
use ondevice_registry::jobs::PullDetail;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::routes::jobs::JobsQuery;
use crate::state::AppState;

pub(super) struct JobsImpl {
    pub state: AppState,
}

/// A stream of a job's states.
pub(super) type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

fn status(e: impl Into<ApiError>) -> Status {
    e.into().to_status()
}

/// The gRPC form of a job.
pub(super) fn job_message(j: JobSnapshot) -> pb::Job {
    let detail = match j.kind.as_str() {
        "pull" => {
            let d = PullDetail::of(&j);
            Some(pb::job::Detail::Pull(pb::PullDetail {
                model: d.model,
                source: d.source,
                total_bytes: d.total_bytes.unwrap_or(0),
                done_bytes: d.done_bytes,
                bytes_per_second: d.bytes_per_second,
                digest: d.digest.unwrap_or_default(),
            }))
        }
        _ => None,
    };
    pb::Job {
        detail_json: j.detail.to_string(),
        detail,
        id: j.id,
        kind: j.kind,
        state: j.state.as_str().to_owned(),
        error: j.error.unwrap_or_default(),
        created_at: j.created_at,
        updated_at: j.updated_at,
        finished_at: j.finished_at.unwrap_or(0),
        progress: Some(pb::JobProgress {
            done: j.progress.done,
            total: j.progress.total,
            unit: j.progress.unit,
            message: j.progress.message.unwrap_or_default(),
        }),
    }
}

/// Streams job `first` and then its changes (at most four a second, the newest winning) until it
/// finishes, the client goes away or the daemon stops.
pub(super) async fn watch_stream(state: &AppState, first: JobSnapshot) -> Result<JobStream, Status> {
    let rx = state.require_jobs().map_err(status)?.watch(&first.id);
    let shutdown = state.shutdown_token().clone();
    let (tx, out) = tokio::sync::mpsc::channel(8);
    state.tasks().spawn(async move {
        let terminal = first.state.is_terminal();
        if tx.send(Ok(job_message(first))).await.is_err() || terminal {
            return;
        }
        let Some(mut rx) = rx else { return };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
            if !rx.borrow().state.is_terminal() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = rx.wait_for(|j| j.state.is_terminal()) => {}
                }
            }
            let j = rx.borrow_and_update().clone();
            let end = j.state.is_terminal();
            if tx.send(Ok(job_message(j))).await.is_err() || end {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
}

#[tonic::async_trait]
impl JobsService for JobsImpl {
    async fn list(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = req.into_inner();
        let query = JobsQuery { kind: Some(req.kind), state: Some(req.state) };
        let filter = query.filter().map_err(status)?;
        let jobs = self.state.require_jobs().map_err(status)?.list(&filter).await.map_err(status)?;
        Ok(Response::new(pb::ListJobsResponse { jobs: jobs.into_iter().map(job_message).collect() }))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        let job = self.state.require_jobs().map_err(status)?.get(&id).await.map_err(status)?;
        Ok(Response::new(job_message(job)))
    }

    async fn cancel(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        let job = self.state.require_jobs().map_err(status)?.cancel(&id).await.map_err(status)?;
        tracing::info!(job = %id, state = job.state.as_str(), "job cancelled");
        Ok(Response::new(job_message(job)))
    }

    type WatchStream = JobStream;

    async fn watch(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<JobStream>, Status> {
        let id = req.into_inner().id;
        let first = self.state.require_jobs().map_err(status)?.get(&id).await.map_err(status)?;
        Ok(Response::new(watch_stream(&self.state, first).await?))
    }
}
