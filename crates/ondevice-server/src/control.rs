//! The local control socket (`$ONDEVICE_HOME/ondevice.sock`, mode 0600): how `ondevice daemon
//! status|stop` reach the daemon without an API key. Only the daemon's own OS user (or root) can
//! connect: the file mode restricts it and the peer's uid is checked on every connection.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use crate::error::ApiError;
use crate::state::AppState;

/// A failure of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding or connecting failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP exchange over the socket failed.
    #[error("control socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The uid of the process on the other end of the socket.
#[derive(Debug, Clone, Copy)]
struct PeerUid(Option<u32>);

impl Connected<axum::serve::IncomingStream<'_, UnixListener>> for PeerUid {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        PeerUid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

async fn same_user(ConnectInfo(peer): ConnectInfo<PeerUid>, req: Request, next: Next) -> Response {
    let me = nix::unistd::geteuid().as_raw();
    match peer.0 {
        Some(uid) if uid == me || uid == 0 => next.run(req).await,
        _ => ApiError::PermissionDenied("the control socket is only for the daemon's own user".to_owned())
            .into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Json<crate::routes::status::StatusResponse> {
    Json(state.status())
}

async fn restart_worker(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match crate::routes::workers::restart_named(&state, &name).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn shutdown(State(state): State<AppState>) -> impl IntoResponse {
    tracing::info!("stop requested on the control socket");
    state.shutdown_token().cancel();
    (StatusCode::ACCEPTED, Json(serde_json::json!({"stopping": true})))
}

/// Binds the control socket (replacing a stale one) with mode 0600 and serves it until the
/// daemon's shutdown token is cancelled.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        // A live daemon would hold the pid-file lock, checked before; this one is stale.
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves the control API on a bound listener until shutdown.
pub async fn serve(listener: UnixListener, state: AppState) {
    let token = state.shutdown_token().clone();
    let app = Router::new()
        .route("/status", get(status))
        .route("/shutdown", post(shutdown))
        .route("/workers/{name}/restart", post(restart_worker))
        .layer(axum::middleware::from_fn(same_user))
        .with_state(state);
    let service = app.into_make_service_with_connect_info::<PeerUid>();
    if let Err(e) = axum::serve(listener, service).with_graceful_shutdown(token.cancelled_owned()).await {
        tracing::warn!(error = %e, "control socket stopped");
    }
}

/// Sends one request over the control socket and returns the status and body.
pub async fn request(path: &Path, method: Method, uri: &str) -> Result<(StatusCode, Bytes), ControlError> {
    let proto = |message: String| ControlError::Protocol { path: path.to_path_buf(), message };
    let stream =
        UnixStream::connect(path).await.map_err(|source| ControlError::Io { path: path.to_path_buf(), source })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| proto(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| proto(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| proto(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| proto(e.to_string()))?.to_bytes();
    Ok((status, body))
}
