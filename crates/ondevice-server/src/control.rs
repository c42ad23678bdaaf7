//! The local control socket (`$ONDEVICE_HOME/ondevice.sock`, mode 0600): how `ondevice daemon
//! status|stop` reach the daemon without an API key. Only the daemon's own OS user (or root) can
//! connect: the file mode restricts it and the peer's uid is checked on every connection.
//!
//! On Windows the control socket is a named pipe (see `ondevice-ipc`'s `pipe.rs`); there the pipe's
//! default security descriptor is what keeps other users out (they may open it read-only, so they
//! cannot send a request), and no peer check is made.
//!
//! Binding, connecting and the HTTP/1.1 client are [`ondevice_ipc`]'s; this module holds the
//! control API and its peer policy.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Bytes;

use crate::state::AppState;
#[cfg(unix)]
use {
    crate::error::ApiError, axum::extract::Request, axum::extract::connect_info::ConnectInfo, axum::middleware::Next,
    ondevice_ipc::PeerUid,
};

/// A failure of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding the control socket failed.
    #[error("control socket: {0}")]
    Bind(#[from] ondevice_ipc::BindError),
    /// Connecting, or the exchange before the answer's head, failed.
    #[error("control socket: {0}")]
    Request(#[from] ondevice_ipc::RequestError),
    /// The request's path is not a valid URI path.
    #[error("control socket: invalid request path {uri:?}: {source}")]
    InvalidUri {
        /// The path as given.
        uri: String,
        /// Why it is invalid.
        source: axum::http::uri::InvalidUri,
    },
    /// The connection broke while the answer's body was read.
    #[error("control socket {path}: the daemon closed the connection: {source}")]
    Body {
        /// The socket path.
        path: PathBuf,
        /// hyper's error.
        source: hyper::Error,
    },
}

/// The bound control socket, to be served by [`serve`].
#[derive(Debug)]
pub struct ControlListener {
    inner: ondevice_ipc::Listener,
}

#[cfg(unix)]
async fn same_user(ConnectInfo(peer): ConnectInfo<PeerUid>, req: Request, next: Next) -> Response {
    if peer.is_same_user_or_root() {
        next.run(req).await
    } else {
        ApiError::PermissionDenied("the control socket is only for the daemon's own user".to_owned()).into_response()
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

/// Binds the control socket with mode 0600, replacing a stale one (a live daemon would hold the
/// pid-file lock, checked before) and refusing any other file in the way; on Windows creates the
/// control pipe, which must not exist yet.
pub fn bind(path: &Path) -> Result<ControlListener, ControlError> {
    Ok(ControlListener { inner: ondevice_ipc::bind(path)? })
}

/// Serves the control API on a bound listener until the daemon's shutdown token is cancelled.
pub async fn serve(listener: ControlListener, state: AppState) {
    let token = state.shutdown_token().clone();
    let app = Router::new()
        .route("/status", get(status))
        .route("/shutdown", post(shutdown))
        .route("/workers/{name}/restart", post(restart_worker))
        .with_state(state);
    #[cfg(unix)]
    let served = {
        let app = app.layer(axum::middleware::from_fn(same_user));
        let service = app.into_make_service_with_connect_info::<PeerUid>();
        axum::serve(listener.inner, service).with_graceful_shutdown(token.cancelled_owned()).await
    };
    #[cfg(windows)]
    let served = axum::serve(listener.inner, app).with_graceful_shutdown(token.cancelled_owned()).await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "control socket stopped");
    }
}

/// Sends one request over the control socket and returns the status and body.
pub async fn request(path: &Path, method: Method, uri: &str) -> Result<(StatusCode, Bytes), ControlError> {
    let parsed = Uri::try_from(uri).map_err(|source| ControlError::InvalidUri { uri: uri.to_owned(), source })?;
    let answer = ondevice_ipc::request(path, method, parsed, None).await?;
    let status = answer.status;
    let body = answer.bytes().await.map_err(|source| ControlError::Body { path: path.to_path_buf(), source })?;
    Ok((status, body))
}
