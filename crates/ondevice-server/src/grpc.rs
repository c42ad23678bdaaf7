//! gRPC on the same listener: `ondevice.v1.StatusService` (read), `ondevice.v1.InferenceService`
//! (infer, in `grpc/inference.rs`), `ondevice.v1.ModelsService` (read; writes check models, in
//! `grpc/models.rs`), the standard `grpc.health.v1.Health` (public) and server
//! reflection (v1 and v1alpha). Every service but health goes through [`AuthInterceptor`], which
//! calls the same verifier as the HTTP layer.

mod inference;
mod models;

use std::pin::Pin;

use axum::Router;
use futures_util::Stream;
use ondevice_auth::{Presented, Scope};
use ondevice_proto::v1::inference_service_server::InferenceServiceServer;
use ondevice_proto::v1::models_service_server::ModelsServiceServer;
use ondevice_proto::v1::status_service_server::{StatusService, StatusServiceServer};
use ondevice_proto::v1::{Event, GetStatusRequest, GetStatusResponse, WatchEventsRequest, WorkerStatus};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::state::{AppState, DaemonEvent};

/// Checks the `authorization` (or `x-api-key`) metadata for a scope, for one gRPC service.
#[derive(Clone)]
pub struct AuthInterceptor {
    state: AppState,
    scope: Scope,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let md = req.metadata();
        let presented = Presented {
            authorization: md.get("authorization").map(|v| v.as_bytes()),
            x_api_key: md.get("x-api-key").map(|v| v.as_bytes()),
            websocket_protocol: None,
        };
        match self.state.verifier().authorize(&presented, self.scope) {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Ok(req)
            }
            Err(e) => {
                self.state.metrics().auth_failure("grpc", e.reason());
                Err(ApiError::from(e).to_status())
            }
        }
    }
}

struct StatusImpl {
    state: AppState,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

fn status_message(state: &AppState) -> GetStatusResponse {
    let s = state.status();
    GetStatusResponse {
        version: s.version,
        uptime_seconds: s.uptime_seconds,
        listen_address: s.listen_address,
        ready: s.ready,
        auth_enabled: s.auth_enabled,
        workers: s
            .workers
            .into_iter()
            .map(|w| WorkerStatus {
                last_exit: w
                    .last_exit
                    .as_ref()
                    .map(|e| serde_json::to_string(e).unwrap_or_default())
                    .unwrap_or_default(),
                protection: w.protection.to_string(),
                name: w.name,
                state: w.state,
                restarts: w.restarts,
            })
            .collect(),
    }
}

fn event_message(ev: &DaemonEvent) -> Event {
    Event { timestamp_ms: ev.timestamp_ms, kind: ev.kind.clone(), json: ev.data.to_string() }
}

#[tonic::async_trait]
impl StatusService for StatusImpl {
    async fn get_status(&self, _req: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(status_message(&self.state)))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, _req: Request<WatchEventsRequest>) -> Result<Response<EventStream>, Status> {
        let state = self.state.clone();
        let mut rx = state.inner.events.subscribe();
        let shutdown = state.shutdown_token().clone();
        let snapshot = DaemonEvent::now("status", serde_json::to_value(state.status()).unwrap_or_default());
        let tasks = state.tasks().clone();
        let stream = async_stream(&tasks, move |tx| async move {
            if tx.send(Ok(event_message(&snapshot))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    ev = rx.recv() => match ev {
                        Ok(ev) => if tx.send(Ok(event_message(&ev))).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel; the task stops when the client goes away.
fn async_stream<F, Fut>(tasks: &tokio_util::task::TaskTracker, f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tasks.spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The health reporter, kept so the daemon can report NOT_SERVING while stopping.
pub type HealthReporter = tonic_health::server::HealthReporter;

fn add<S, B>(router: Router<AppState>, svc: S) -> Router<AppState>
where
    S: NamedService
        + tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = hyper::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    router.route_service(&format!("/{}/{{*rest}}", S::NAME), svc)
}

/// The gRPC services as axum routes, and the health reporter.
pub async fn routes(state: &AppState) -> (Router<AppState>, HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<StatusServiceServer<StatusImpl>>().await;
    reporter.set_serving::<InferenceServiceServer<inference::InferenceImpl>>().await;
    reporter.set_serving::<ModelsServiceServer<models::ModelsImpl>>().await;
    let guard = |scope| AuthInterceptor { state: state.clone(), scope };
    let status =
        InterceptedService::new(StatusServiceServer::new(StatusImpl { state: state.clone() }), guard(Scope::Read));
    let inference = InterceptedService::new(
        InferenceServiceServer::new(inference::InferenceImpl { state: state.clone() }),
        guard(Scope::Infer),
    );
    let models = InterceptedService::new(
        ModelsServiceServer::new(models::ModelsImpl { state: state.clone() }),
        guard(Scope::Read),
    );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ondevice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut router = Router::new();
    router = add(router, health);
    router = add(router, status);
    router = add(router, inference);
    router = add(router, models);
    if let Ok(v1) = reflection().build_v1() {
        router = add(router, InterceptedService::new(v1, guard(Scope::Read)));
    }
    if let Ok(v1alpha) = reflection().build_v1alpha() {
        router = add(router, InterceptedService::new(v1alpha, guard(Scope::Read)));
    }
    (router, reporter)
}
