//! The client side: connecting to a local endpoint and a minimal HTTP/1.1 client (hyper) over it,
//! one connection per request. The connection task is aborted when its [`ConnGuard`] is dropped, so
//! dropping a streamed answer closes the connection and the server sees the client go away.

use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// The client end of a connection: a Unix stream, or on Windows a named pipe client.
#[cfg(unix)]
pub type ClientStream = tokio::net::UnixStream;
/// The client end of a connection: a Unix stream, or on Windows a named pipe client.
#[cfg(windows)]
pub type ClientStream = tokio::net::windows::named_pipe::NamedPipeClient;

/// Why a request failed before an answer's head arrived.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The endpoint could not be connected (nothing listening, no permission, every pipe instance
    /// busy for too long).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path (the pipe name on Windows).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The HTTP exchange failed: the connection broke before the answer's head.
    #[error("{path} closed the connection: {source}")]
    Http {
        /// The socket path (the pipe name on Windows).
        path: PathBuf,
        /// hyper's error.
        source: hyper::Error,
    },
}

/// Aborts the connection task on drop, which closes the connection.
#[derive(Debug)]
pub struct ConnGuard(tokio::task::JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An answer whose body is still to be read; the connection lives as long as its guard.
#[derive(Debug)]
pub struct Answer {
    /// The answer's status.
    pub status: StatusCode,
    body: Incoming,
    guard: ConnGuard,
}

impl Answer {
    /// Reads the whole body, then closes the connection.
    pub async fn bytes(self) -> Result<Bytes, hyper::Error> {
        let _guard = self.guard;
        Ok(self.body.collect().await?.to_bytes())
    }

    /// The body as a stream of data chunks (trailers skipped), with the connection guard to keep
    /// alongside: dropping the guard closes the connection.
    pub fn into_chunks(self) -> (BodyDataStream<Incoming>, ConnGuard) {
        (self.body.into_data_stream(), self.guard)
    }
}

/// Sends one request on a new connection to `endpoint`; `json` is the body when present (sent as
/// `application/json`). Returns once the answer's head has arrived.
pub async fn request(endpoint: &Path, method: Method, uri: Uri, json: Option<Vec<u8>>) -> Result<Answer, RequestError> {
    let http = |source| RequestError::Http { path: endpoint.to_path_buf(), source };
    let stream =
        connect(endpoint).await.map_err(|source| RequestError::Connect { path: endpoint.to_path_buf(), source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    let guard = ConnGuard(tokio::spawn(async move {
        // The connection ends when the answer is read or the guard aborts it; its error is the answer's.
        let _ = conn.await;
    }));
    let mut req = Request::builder().method(method).uri(uri).header(hyper::header::HOST, "localhost");
    if json.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .expect("a parsed method and URI with static headers make a valid request");
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    Ok(Answer { status, body: resp.into_body(), guard })
}

/// Connects to the Unix socket at `endpoint`.
#[cfg(unix)]
pub async fn connect(endpoint: &Path) -> io::Result<ClientStream> {
    tokio::net::UnixStream::connect(endpoint).await
}

/// Whether a server is accepting connections at `endpoint` (a liveness probe): connects and
/// closes at once. On Windows a pipe whose every instance is busy also has a live server.
pub async fn probe(endpoint: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        tokio::net::UnixStream::connect(endpoint).await.map(drop)
    }
    #[cfg(windows)]
    {
        const ERROR_PIPE_BUSY: i32 = 231;
        match tokio::net::windows::named_pipe::ClientOptions::new().open(endpoint) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// Opens the named pipe `endpoint`, waiting (up to 5 s) while every instance is busy: the server
/// creates the next instance as soon as one is taken.
#[cfg(windows)]
pub async fn connect(endpoint: &Path) -> io::Result<ClientStream> {
    use std::time::{Duration, Instant};
    const ERROR_PIPE_BUSY: i32 = 231;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(endpoint) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
