//! A minimal HTTP/1.1 client over the local socket of an `ondevice worker` (hyper), one connection per
//! request: a Unix-domain socket, or on Windows the named pipe whose path the launcher returned. The
//! connection task is aborted when its [`ConnGuard`] is dropped, so dropping a streamed answer closes
//! the socket and the worker cancels the generation.

use std::path::Path;

use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Aborts the connection task on drop.
pub(crate) struct ConnGuard(tokio::task::JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a request over the socket failed before an answer arrived.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The socket could not be connected (no worker listening).
    Connect(std::io::Error),
    /// The connection broke before the answer's head.
    Http(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect to the worker socket: {e}"),
            Failure::Http(e) => write!(f, "the worker closed the connection: {e}"),
        }
    }
}

/// An answer whose body is still to be read.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Incoming,
    pub(crate) guard: ConnGuard,
}

impl Answer {
    /// Reads the whole body.
    pub(crate) async fn bytes(self) -> Result<Bytes, hyper::Error> {
        let _guard = self.guard;
        Ok(self.body.collect().await?.to_bytes())
    }

    /// The body as data chunks (trailers skipped), with the connection guard to keep alongside.
    pub(crate) fn into_chunks(
        self,
    ) -> (impl futures_util::Stream<Item = Result<Bytes, hyper::Error>> + Send, ConnGuard) {
        let chunks = BodyStream::new(self.body).filter_map(|frame| async move {
            match frame {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        });
        (chunks, self.guard)
    }
}

/// Sends one request; `body` is JSON when present.
pub(crate) async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, Failure> {
    let stream = connect(socket).await.map_err(Failure::Connect)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(Failure::Http)?;
    let guard = ConnGuard(tokio::spawn(async move {
        // The connection ends when the answer is read or the guard aborts it; its error is the answer's.
        let _ = conn.await;
    }));
    let mut req = Request::builder().method(method).uri(path).header(hyper::header::HOST, "worker");
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("static request parts are valid");
    let resp = sender.send_request(req).await.map_err(Failure::Http)?;
    let status = resp.status();
    Ok(Answer { status, body: resp.into_body(), guard })
}

#[cfg(unix)]
async fn connect(socket: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(socket).await
}

/// Opens the worker's named pipe, waiting (bounded) while every instance is busy: the worker creates
/// the next instance as soon as one is taken.
#[cfg(windows)]
async fn connect(pipe: &Path) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeClient> {
    use std::time::{Duration, Instant};
    const ERROR_PIPE_BUSY: i32 = 231;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(pipe) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
