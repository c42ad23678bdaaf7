//! The local control socket (`$ONDEVICE_HOME/ondevice.sock`, mode 0600): how `ondevice daemon
//! status|stop` reach the daemon without an API key. Only the daemon's own OS user (or root) can
//! connect: the file mode restricts it and the peer's uid is checked on every connection.
//!
//! On Windows the control socket is a named pipe (`control/pipe.rs`); there the pipe's default
//! security descriptor is what keeps other users out (they may open it read-only, so they cannot
//! send a request), and no peer check is made.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::state::AppState;
#[cfg(unix)]
use {
    crate::error::ApiError,
    axum::extract::Request,
    axum::extract::connect_info::{ConnectInfo, Connected},
    axum::middleware::Next,
    axum::serve::IncomingStream,
    tokio::net::UnixListener,
};

#[cfg(windows)]
mod pipe;

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

/// The bound control socket, to be served by [`serve`].
#[derive(Debug)]
pub struct ControlListener {
    #[cfg(unix)]
    inner: UnixListener,
    #[cfg(windows)]
    inner: pipe::PipeListener,
}

/// The uid of the process on the other end of the socket.
#[cfg(unix)]
#[derive(Debug, Clone, Copy)]
struct PeerUid(Option<u32>);

#[cfg(unix)]
impl Connected<IncomingStream<'_, UnixListener>> for PeerUid {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerUid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

#[cfg(unix)]
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

/// Binds the control socket (replacing a stale one) with mode 0600; on Windows creates the control
/// pipe, which must not exist yet.
pub fn bind(path: &Path) -> Result<ControlListener, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            // A live daemon would hold the pid-file lock, checked before; this one is stale.
            std::fs::remove_file(path).map_err(io)?;
        }
        let inner = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(ControlListener { inner })
    }
    #[cfg(windows)]
    {
        Ok(ControlListener { inner: pipe::PipeListener::bind(path).map_err(io)? })
    }
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
    let proto = |message: String| ControlError::Protocol { path: path.to_path_buf(), message };
    let stream = connect(path).await.map_err(|source| ControlError::Io { path: path.to_path_buf(), source })?;
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

#[cfg(unix)]
async fn connect(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(path).await
}

/// Opens the control pipe, waiting (bounded) while every instance is busy: the daemon creates the
/// next instance as soon as one is taken.
#[cfg(windows)]
async fn connect(path: &Path) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeClient> {
    use std::time::{Duration, Instant};
    const ERROR_PIPE_BUSY: i32 = 231;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(path) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
