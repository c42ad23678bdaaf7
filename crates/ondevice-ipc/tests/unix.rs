//! The local endpoint on a real Unix socket in a temp dir: the socket's mode, a stale socket
//! replaced, other files in the way refused and untouched, request/answer round trips through a
//! small axum router, a dropped streamed answer seen by the server as a disconnect, and the peer's
//! uid as connect info.
// Unix sockets and file modes; the named-pipe side is type-checked for Windows, not run here.
#![cfg(unix)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode, Uri, header};
use axum::routing::{get, post};
use futures_util::StreamExt;
use ondevice_ipc::{BindError, PeerUid, RequestError};
use tokio::sync::oneshot;

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("test.sock")
}

/// Serves `app` on a new endpoint at `path` in a background task.
fn serve(path: &Path, app: Router) {
    let listener = ondevice_ipc::bind(path).expect("bind");
    tokio::spawn(async move { axum::serve(listener, app).await });
}

fn hello() -> Router {
    Router::new().route("/hello", get(|| async { "hi" })).route(
        "/echo",
        post(|headers: axum::http::HeaderMap, body: Bytes| async move {
            let ty = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            format!("{ty} {}", String::from_utf8_lossy(&body))
        }),
    )
}

async fn get_text(path: &Path, uri: &'static str) -> (StatusCode, String) {
    let answer = ondevice_ipc::request(path, Method::GET, Uri::from_static(uri), None).await.expect("request");
    let status = answer.status;
    (status, String::from_utf8(answer.bytes().await.expect("body").to_vec()).unwrap())
}

#[tokio::test]
async fn bind_makes_a_socket_of_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let listener = ondevice_ipc::bind(&path).unwrap();
    assert_eq!(listener.path(), path);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    // A socket file whose server is gone: bound, then dropped (the file stays).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    assert!(ondevice_ipc::connect(&path).await.is_err(), "nobody listens on the stale socket");

    serve(&path, hello());
    assert_eq!(get_text(&path, "/hello").await, (StatusCode::OK, "hi".to_owned()));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_file_in_the_way_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    std::fs::write(&path, "keep me").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ondevice_ipc::bind(&path).unwrap_err();
    assert!(matches!(&err, BindError::InTheWay { path: p } if *p == path), "{err:?}");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);

    // A symlink is not followed, nor is its target touched.
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(ondevice_ipc::bind(&link), Err(BindError::InTheWay { .. })));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");

    // As an `io::Error` (for callers that name the path themselves) it keeps the reason.
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn requests_and_answers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    serve(&path, hello());

    assert_eq!(get_text(&path, "/hello").await, (StatusCode::OK, "hi".to_owned()));
    let answer = ondevice_ipc::request(&path, Method::POST, Uri::from_static("/echo"), Some(b"{\"a\":1}".to_vec()))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.bytes().await.unwrap(), "application/json {\"a\":1}");
    assert_eq!(get_text(&path, "/nope").await.0, StatusCode::NOT_FOUND);

    // Several at once, each on its own connection.
    let all = futures_util::future::join_all((0..8).map(|_| get_text(&path, "/hello"))).await;
    assert!(all.iter().all(|(status, body)| *status == StatusCode::OK && body == "hi"));
}

#[tokio::test]
async fn connecting_to_nothing_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let err = ondevice_ipc::request(&path, Method::GET, Uri::from_static("/"), None).await.unwrap_err();
    assert!(matches!(&err, RequestError::Connect { path: p, .. } if *p == path), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

/// Signals when dropped.
struct OnDrop(Option<oneshot::Sender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn dropping_a_streamed_answer_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let dropped_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let app = Router::new().route(
        "/stream",
        get(move || {
            let signal = OnDrop(dropped_tx.lock().unwrap().take());
            // One chunk, then silence forever; hyper drops the body when the client goes away.
            let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from_static(b"first\n"))])
                .chain(futures_util::stream::pending())
                .map(move |chunk| {
                    let _keep = &signal;
                    chunk
                });
            async move { Body::from_stream(body) }
        }),
    );
    serve(&path, app);

    let answer = ondevice_ipc::request(&path, Method::GET, Uri::from_static("/stream"), None).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let (mut chunks, guard) = answer.into_chunks();
    assert_eq!(chunks.next().await.unwrap().unwrap(), "first\n");
    // Keeping the stream but dropping the guard is enough: the connection task is aborted.
    drop(guard);
    tokio::time::timeout(Duration::from_secs(10), dropped_rx)
        .await
        .expect("the server noticed the disconnect")
        .expect("the body was dropped");
    drop(chunks);
}

#[tokio::test]
async fn the_peer_uid_is_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let app = Router::new().route(
        "/whoami",
        get(|ConnectInfo(peer): ConnectInfo<PeerUid>| async move {
            format!("{} {}", peer.0.map_or("unknown".to_owned(), |uid| uid.to_string()), peer.is_same_user_or_root())
        }),
    );
    let listener = ondevice_ipc::bind(&path).unwrap();
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<PeerUid>()).await });

    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(get_text(&path, "/whoami").await, (StatusCode::OK, format!("{me} true")));

    let client = ondevice_ipc::connect(&path).await.unwrap();
    assert_eq!(ondevice_ipc::peer_uid(&client).unwrap(), me, "the server runs as us too");
    assert!(!PeerUid(None).is_same_user_or_root());
    assert!(PeerUid(Some(0)).is_same_user_or_root());
}
