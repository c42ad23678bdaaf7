//! gRPC on the same listener: `ondevice.v1.StatusService`, `ondevice.v1.InferenceService`
//! (`grpc/inference.rs`), `ondevice.v1.ModelsService` (`grpc/models.rs`), `ondevice.v1.JobsService`
//! (`grpc/jobs.rs`), the standard
//! `grpc.health.v1.Health` (public) and server reflection (v1 and v1alpha). Every service but
//! health is wrapped in [`ScopeGuard`], which looks the method up in [`METHOD_SCOPES`] and calls
//! the same verifier as the HTTP layer; a method missing from the table is never served.

mod inference;
mod jobs;
mod models;
mod prompts;
mod vector;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use futures_util::Stream;
use http::HeaderMap;
use ondevice_auth::{Presented, Principal, Scope};
use ondevice_proto::v1::inference_service_server::InferenceServiceServer;
use ondevice_proto::v1::jobs_service_server::JobsServiceServer;
use ondevice_proto::v1::models_service_server::ModelsServiceServer;
use ondevice_proto::v1::prompt_service_server::PromptServiceServer;
use ondevice_proto::v1::status_service_server::{StatusService, StatusServiceServer};
use ondevice_proto::v1::vector_service_server::VectorServiceServer;
use ondevice_proto::v1::{Event, GetStatusRequest, GetStatusResponse, WatchEventsRequest, WorkerStatus};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::state::{AppState, BoxFuture, DaemonEvent};

/// Every gRPC method served behind a key, as (service, method, scope). `grpc.health.v1.Health` is
/// public and not listed. A test checks the table against the services' descriptors both ways.
pub const METHOD_SCOPES: &[(&str, &str, Scope)] = &[
    ("ondevice.v1.StatusService", "GetStatus", Scope::Read),
    ("ondevice.v1.StatusService", "WatchEvents", Scope::Read),
    ("ondevice.v1.InferenceService", "Chat", Scope::Infer),
    ("ondevice.v1.InferenceService", "Generate", Scope::Infer),
    ("ondevice.v1.InferenceService", "Embed", Scope::Infer),
    ("ondevice.v1.ModelsService", "ListModels", Scope::Read),
    ("ondevice.v1.ModelsService", "GetModel", Scope::Read),
    ("ondevice.v1.ModelsService", "PullModel", Scope::Models),
    ("ondevice.v1.ModelsService", "RemoveModel", Scope::Models),
    ("ondevice.v1.ModelsService", "PinModel", Scope::Models),
    ("ondevice.v1.ModelsService", "QuantizeModel", Scope::Models),
    ("ondevice.v1.JobsService", "List", Scope::Read),
    ("ondevice.v1.JobsService", "Get", Scope::Read),
    ("ondevice.v1.JobsService", "Cancel", Scope::Models),
    ("ondevice.v1.JobsService", "Watch", Scope::Read),
    ("ondevice.v1.PromptService", "ListPrompts", Scope::Read),
    ("ondevice.v1.PromptService", "GetPrompt", Scope::Read),
    ("ondevice.v1.PromptService", "RenderPrompt", Scope::Read),
    ("ondevice.v1.PromptService", "PublishPrompt", Scope::Models),
    ("ondevice.v1.PromptService", "RollbackPrompt", Scope::Models),
    ("ondevice.v1.PromptService", "DeletePrompt", Scope::Models),
    ("ondevice.v1.VectorService", "ListCollections", Scope::Read),
    ("ondevice.v1.VectorService", "GetCollection", Scope::Read),
    ("ondevice.v1.VectorService", "CreateCollection", Scope::Models),
    ("ondevice.v1.VectorService", "DeleteCollection", Scope::Models),
    ("ondevice.v1.VectorService", "UpsertDocuments", Scope::Models),
    ("ondevice.v1.VectorService", "DeleteDocuments", Scope::Models),
    ("ondevice.v1.VectorService", "Query", Scope::Read),
    ("ondevice.v1.VectorService", "Index", Scope::Models),
    ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo", Scope::Read),
    ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", Scope::Read),
];

/// The scope a gRPC request path (`/package.Service/Method`) needs, if the method is served.
pub fn method_scope(path: &str) -> Option<Scope> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHOD_SCOPES.iter().find(|(s, m, _)| *s == service && *m == method).map(|&(_, _, scope)| scope)
}

/// Authorizes each call of a gRPC service by its method's scope in [`METHOD_SCOPES`], with the
/// `authorization` (or `x-api-key`) metadata; the [`Principal`] goes in the request extensions. A
/// method missing from the table is answered UNIMPLEMENTED once the key is checked for `read`.
#[derive(Clone)]
pub struct ScopeGuard<S> {
    inner: S,
    state: AppState,
}

impl<S> ScopeGuard<S> {
    /// Guards `inner` with the verifier of `state`.
    pub fn new(state: &AppState, inner: S) -> ScopeGuard<S> {
        ScopeGuard { inner, state: state.clone() }
    }

    fn authorize(&self, headers: &HeaderMap, path: &str) -> Result<Principal, Status> {
        let scope = method_scope(path);
        let presented = Presented {
            authorization: headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
            x_api_key: headers.get("x-api-key").map(|v| v.as_bytes()),
            websocket_protocol: None,
        };
        let principal = self.state.verifier().authorize(&presented, scope.unwrap_or(Scope::Read)).map_err(|e| {
            self.state.metrics().auth_failure("grpc", e.reason());
            ApiError::from(e).to_status()
        })?;
        match scope {
            Some(_) => Ok(principal),
            None => Err(Status::unimplemented(format!("unknown gRPC method {path}"))),
        }
    }
}

impl<S: NamedService> NamedService for ScopeGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<axum::body::Body>> for ScopeGuard<S>
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = hyper::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<axum::body::Body>) -> Self::Future {
        match self.authorize(req.headers(), req.uri().path()) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                let call = self.inner.call(req);
                Box::pin(async move { call.await.map(|resp| resp.map(axum::body::Body::new)) })
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
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
        + tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>, Error = Infallible>
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
    reporter.set_serving::<JobsServiceServer<jobs::JobsImpl>>().await;
    reporter.set_serving::<PromptServiceServer<prompts::PromptsImpl>>().await;
    reporter.set_serving::<VectorServiceServer<vector::VectorImpl>>().await;
    let status = ScopeGuard::new(state, StatusServiceServer::new(StatusImpl { state: state.clone() }));
    let inference =
        ScopeGuard::new(state, InferenceServiceServer::new(inference::InferenceImpl { state: state.clone() }));
    let models = ScopeGuard::new(state, ModelsServiceServer::new(models::ModelsImpl { state: state.clone() }));
    let jobs = ScopeGuard::new(state, JobsServiceServer::new(jobs::JobsImpl { state: state.clone() }));
    let prompts = ScopeGuard::new(state, PromptServiceServer::new(prompts::PromptsImpl { state: state.clone() }));
    let vectors = ScopeGuard::new(state, VectorServiceServer::new(vector::VectorImpl { state: state.clone() }));
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
    router = add(router, jobs);
    router = add(router, prompts);
    router = add(router, vectors);
    if let Ok(v1) = reflection().build_v1() {
        router = add(router, ScopeGuard::new(state, v1));
    }
    if let Ok(v1alpha) = reflection().build_v1alpha() {
        router = add(router, ScopeGuard::new(state, v1alpha));
    }
    (router, reporter)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    // The parts of `google.protobuf.FileDescriptorSet` the test reads (field numbers of
    // descriptor.proto); unknown fields are skipped by prost.
    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptor>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptor {
        #[prost(string, optional, tag = "2")]
        package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        service: Vec<ServiceDescriptor>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct ServiceDescriptor {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        method: Vec<MethodDescriptor>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct MethodDescriptor {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
    }

    /// Every (service, method) the encoded descriptor sets declare, services fully qualified.
    fn declared(sets: &[&[u8]]) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for set in sets {
            for file in FileDescriptorSet::decode(*set).unwrap().file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                    for method in service.method {
                        out.insert((service_name.clone(), method.name.unwrap_or_default()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_scope_table_matches_the_service_descriptors() {
        let table: BTreeSet<(String, String)> =
            METHOD_SCOPES.iter().map(|(s, m, _)| ((*s).to_owned(), (*m).to_owned())).collect();
        assert_eq!(table.len(), METHOD_SCOPES.len(), "a method is listed twice");

        let ours = declared(&[ondevice_proto::FILE_DESCRIPTOR_SET]);
        assert!(ours.iter().any(|(s, _)| s == "ondevice.v1.ModelsService"), "descriptors not read: {ours:?}");
        for (service, method) in &ours {
            assert!(service.starts_with("ondevice.v1."), "{service} is outside ondevice.v1");
            assert!(
                table.contains(&(service.clone(), method.clone())),
                "{service}/{method} has no scope in METHOD_SCOPES"
            );
        }

        let reflection = declared(&[
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        let health = declared(&[tonic_health::pb::FILE_DESCRIPTOR_SET]);
        for entry in &table {
            assert!(
                ours.contains(entry) || reflection.contains(entry),
                "METHOD_SCOPES names {}/{}, which no served service declares",
                entry.0,
                entry.1
            );
            assert!(!health.contains(entry), "{}/{} is public: keep health out of the table", entry.0, entry.1);
        }
        // Reflection is served behind a key, so each of its methods needs a row too.
        for entry in &reflection {
            assert!(table.contains(entry), "{}/{} has no scope in METHOD_SCOPES", entry.0, entry.1);
        }
    }

    #[test]
    fn method_paths_resolve_to_their_scope() {
        assert_eq!(method_scope("/ondevice.v1.ModelsService/ListModels"), Some(Scope::Read));
        assert_eq!(method_scope("/ondevice.v1.ModelsService/PullModel"), Some(Scope::Models));
        assert_eq!(method_scope("/ondevice.v1.InferenceService/Chat"), Some(Scope::Infer));
        assert_eq!(method_scope("/ondevice.v1.ModelsService/Nope"), None);
        assert_eq!(method_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(method_scope("ondevice.v1.ModelsService/ListModels"), None);
        assert_eq!(method_scope("/ondevice.v1.ModelsService"), None);
    }
}
