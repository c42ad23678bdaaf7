//! The client of an `ondevice worker`: one request per connection over the worker's Unix socket (on
//! Windows the named pipe whose path the launcher returned) through [`ondevice_ipc::request`], with
//! failures worded for the worker. Dropping a streamed [`Answer`]'s guard closes the connection, and
//! the worker cancels the generation.

use std::path::Path;

use hyper::{Method, Uri};
pub(crate) use ondevice_ipc::Answer;
use ondevice_ipc::RequestError;

/// Why a request to the worker failed before an answer arrived.
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

/// Sends one request to the worker at `socket`; `body` is JSON when present.
pub(crate) async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, Failure> {
    let uri = Uri::try_from(path).expect("the worker's paths are static and valid");
    ondevice_ipc::request(socket, method, uri, body).await.map_err(|e| match e {
        RequestError::Connect { source, .. } => Failure::Connect(source),
        RequestError::Http { source, .. } => Failure::Http(source),
    })
}
