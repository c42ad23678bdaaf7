//! The daemon's edge: one listener that serves authenticated HTTP (OpenAI/Ollama/native APIs),
//! WebSocket and gRPC, plus the local control socket used by `ondevice daemon`.
//!
//! The router is a function of [`AppState`] ([`router`]) so tests can drive it without a socket;
//! [`listener::serve`] runs it on a TCP listener with optional TLS and graceful shutdown.

#![warn(missing_docs)]

pub mod augment;
pub mod control;
mod cors;
mod error;
mod generation;
pub mod grpc;
pub mod listener;
mod metrics;
mod middleware;
pub mod openapi;
pub mod routes;
mod state;
pub mod ui;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use ondevice_auth::Scope;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use generation::ADAPTER_HEADER;
pub use metrics::Metrics;
pub use middleware::host_allowed;
pub use state::{
    AppState, BoxFuture, DaemonEvent, EdgeOptions, ExitView, NoWorkers, ProbeFailuresView, Services, StatusSource,
    WorkerView,
};
pub use ui::UiOptions;

use crate::middleware::{Guard, authenticate, reject, require_scope};

/// The routes of each scope, with their OpenAPI descriptions.
fn api(state: &AppState) -> OpenApiRouter<AppState> {
    let guarded = |scope| axum::middleware::from_fn_with_state(Guard { state: state.clone(), scope }, require_scope);
    let public = OpenApiRouter::new()
        .routes(routes!(routes::health::healthz))
        .routes(routes!(routes::health::readyz))
        .routes(routes!(routes::health::openapi));
    // Signing in to the console checks the key (or login token) itself: it may come in the body.
    let sign_in = OpenApiRouter::new().routes(routes!(ui::session::login));
    let read = OpenApiRouter::new()
        .routes(routes!(routes::health::metrics))
        .routes(routes!(routes::status::status))
        .routes(routes!(routes::ws::ws))
        .routes(routes!(routes::models::list))
        .routes(routes!(routes::models::show))
        .routes(routes!(routes::models::export))
        .routes(routes!(routes::jobs::catalog))
        .routes(routes!(routes::jobs::list))
        .routes(routes!(routes::jobs::show))
        .routes(routes!(routes::jobs::events))
        .routes(routes!(routes::runtimes::list))
        .routes(routes!(routes::prompts::list))
        .routes(routes!(routes::prompts::show))
        .routes(routes!(routes::prompts::render))
        .routes(routes!(routes::prompts::diff))
        .routes(routes!(routes::prompts::test))
        .routes(routes!(routes::prompts::export))
        .routes(routes!(routes::collections::list))
        .routes(routes!(routes::collections::show))
        .routes(routes!(routes::collections::query))
        .routes(routes!(routes::openai::models))
        .routes(routes!(routes::openai::model))
        .routes(routes!(routes::ollama::tags))
        .routes(routes!(routes::ollama::ps))
        .routes(routes!(routes::ollama::manage::show))
        .routes(routes!(routes::ollama::manage::version))
        .routes(routes!(ui::session::show, ui::session::logout))
        .routes(routes!(ui::session::login_link))
        .route_layer(guarded(Scope::Read));
    let infer = OpenApiRouter::new()
        .routes(routes!(routes::openai::chat_completions))
        .routes(routes!(routes::openai::completions))
        .routes(routes!(routes::openai::embeddings))
        .routes(routes!(routes::ollama::chat))
        .routes(routes!(routes::ollama::generate))
        .routes(routes!(routes::ollama::embed))
        .routes(routes!(routes::ollama::embeddings))
        .route_layer(guarded(Scope::Infer));
    let models = OpenApiRouter::new()
        .routes(routes!(routes::models::remove))
        .routes(routes!(routes::prompts::publish))
        .routes(routes!(routes::prompts::rollback))
        .routes(routes!(routes::prompts::delete))
        .routes(routes!(routes::models::pin))
        .routes(routes!(routes::models::import))
        .routes(routes!(routes::models::verify))
        .routes(routes!(routes::models::gc))
        .routes(routes!(routes::jobs::pull))
        .routes(routes!(routes::quantize::quantize))
        .routes(routes!(routes::jobs::cancel))
        .routes(routes!(routes::runtimes::load))
        .routes(routes!(routes::runtimes::unload))
        .routes(routes!(routes::collections::create))
        .routes(routes!(routes::collections::delete))
        .routes(routes!(routes::collections::upsert))
        .routes(routes!(routes::collections::delete_documents))
        .routes(routes!(routes::collections::index))
        .routes(routes!(routes::collections::set_model))
        .routes(routes!(routes::openai::delete_model))
        .routes(routes!(routes::ollama::manage::pull))
        .routes(routes!(routes::ollama::manage::delete))
        .routes(routes!(routes::ollama::manage::copy))
        .routes(routes!(routes::ollama::manage::create))
        .routes(routes!(routes::ollama::manage::push))
        .routes(routes!(routes::ollama::manage::blob_exists, routes::ollama::manage::blob_upload))
        .route_layer(guarded(Scope::Models));
    let admin = OpenApiRouter::new()
        .routes(routes!(routes::keys::list, routes::keys::create))
        .routes(routes!(routes::keys::revoke))
        .routes(routes!(routes::workers::restart))
        .routes(routes!(routes::diagnostics::bundle))
        .routes(routes!(routes::diagnostics::download))
        .routes(routes!(routes::diagnostics::doctor))
        .routes(routes!(routes::diagnostics::telemetry))
        .routes(routes!(routes::diagnostics::telemetry_preview))
        .route_layer(guarded(Scope::Admin));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(public)
        .merge(sign_in)
        .merge(read)
        .merge(infer)
        .merge(models)
        .merge(admin)
}

/// The OpenAPI document generated from the handlers.
pub fn openapi_document(state: &AppState) -> utoipa::openapi::OpenApi {
    let mut doc = api(state).split_for_parts().1;
    openapi::complete(&mut doc);
    doc
}

/// The whole HTTP + WebSocket + gRPC router, with every layer, and the gRPC health reporter.
pub async fn router(state: AppState) -> (Router, grpc::HealthReporter) {
    let (http, mut doc) = api(&state).split_for_parts();
    openapi::complete(&mut doc);
    let _ = state.inner.openapi_json.set(openapi::to_json(&doc));
    let (grpc, health) = grpc::routes(&state).await;
    let opts = &state.inner.options;
    let mut app = http
        .merge(grpc)
        .merge(ui::assets())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::limit_body))
        .layer(axum::extract::DefaultBodyLimit::max(usize::try_from(opts.body_limit).unwrap_or(usize::MAX)));
    if !opts.cors_origins.is_empty() {
        let cors = std::sync::Arc::new(cors::Cors::new(&opts.cors_origins, &doc));
        app = app.layer(axum::middleware::from_fn_with_state(cors, cors::cors));
    }
    let app = app
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::limit_concurrency))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::check_host))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::track_metrics))
        .with_state(state);
    (app, health)
}

/// A known path with a method it does not serve: default-deny (401 without a key), then 405.
async fn method_not_allowed(State(state): State<AppState>, req: Request) -> Response {
    if let Err(e) = authenticate(&state, req.headers(), Scope::Read, "http") {
        return reject(&req, e);
    }
    let message = format!("{} does not accept {}: see /openapi.json", req.uri().path(), req.method());
    reject(&req, ApiError::MethodNotAllowed(message))
}

/// Unknown paths: default-deny (401 without a key), then 501 for an OpenAI endpoint ondevice does
/// not offer, else 404; gRPC gets UNIMPLEMENTED.
async fn fallback(State(state): State<AppState>, req: Request) -> Response {
    if let Err(e) = authenticate(&state, req.headers(), Scope::Read, "http") {
        return reject(&req, e);
    }
    if middleware::is_grpc(req.headers()) {
        let status = tonic::Status::unimplemented(format!("unknown gRPC method {}", req.uri().path()));
        return status.into_http();
    }
    if let Some(e) = routes::openai::unsupported(req.uri().path()) {
        return reject(&req, e);
    }
    reject(&req, ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path())))
}
