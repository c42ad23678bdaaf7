//! The server side: binding a private local endpoint (a Unix socket, a named pipe on Windows) as an
//! [`axum::serve::Listener`], and on Unix the peer's uid of each accepted connection.

use std::io;
use std::path::{Path, PathBuf};

/// The server end of an accepted connection: a Unix stream, or on Windows a named pipe instance.
#[cfg(unix)]
pub type Connection = tokio::net::UnixStream;
/// The server end of an accepted connection: a Unix stream, or on Windows a named pipe instance.
#[cfg(windows)]
pub type Connection = tokio::net::windows::named_pipe::NamedPipeServer;

/// Why [`bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something other than a socket (a file, a directory, a symlink) is at the socket path; it is
    /// left untouched.
    #[error("{path}: a file that is not a socket is in the way: move it away or choose another path")]
    InTheWay {
        /// The socket path.
        path: PathBuf,
    },
    /// Removing the stale socket, binding or setting the mode failed.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The socket path (the pipe name on Windows).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl BindError {
    /// The endpoint that could not be bound.
    pub fn path(&self) -> &Path {
        match self {
            BindError::InTheWay { path } | BindError::Io { path, .. } => path,
        }
    }
}

/// The error without the path, for callers that name the path themselves: the I/O error, or for
/// [`BindError::InTheWay`] an `AlreadyExists` error saying so.
impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        match e {
            BindError::InTheWay { .. } => {
                io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way")
            }
            BindError::Io { source, .. } => source,
        }
    }
}

/// A bound private endpoint, to be served with `axum::serve`. Its address is the endpoint's path.
///
/// Dropping it closes the endpoint but leaves a Unix socket file in place: the owner removes it
/// after a clean stop, and the next [`bind`] replaces a stale one.
#[derive(Debug)]
pub struct Listener {
    path: PathBuf,
    #[cfg(unix)]
    inner: tokio::net::UnixListener,
    #[cfg(windows)]
    inner: crate::pipe::PipeListener,
}

impl Listener {
    /// The socket path (the pipe name on Windows).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds a private endpoint at `path`; must be called inside a tokio runtime.
///
/// On Unix: a new socket of mode 0600. A stale socket file at `path` is replaced (callers make
/// sure no live server owns it, e.g. with a pid-file lock or a fresh per-worker path); anything
/// else there is refused with [`BindError::InTheWay`] and left as it is. The socket is created
/// while the process umask is 0177, so it never exists with group or other bits, then its mode is
/// pinned to 0600. The umask is process-wide: files other threads create meanwhile get no
/// group/other bits either, which is only stricter.
///
/// On Windows: the first instance of the named pipe `path` (`\\.\pipe\NAME`); a pipe of that name
/// that already exists is an error (see `pipe.rs`).
pub fn bind(path: &Path) -> Result<Listener, BindError> {
    let io = |source| BindError::Io { path: path.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};

        use nix::sys::stat::{Mode, umask};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(BindError::InTheWay { path: path.to_path_buf() });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = tokio::net::UnixListener::bind(path);
        umask(old);
        let inner = bound.map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(Listener { path: path.to_path_buf(), inner })
    }
    #[cfg(windows)]
    {
        let inner = crate::pipe::PipeListener::bind(path).map_err(io)?;
        Ok(Listener { path: path.to_path_buf(), inner })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = PathBuf;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Both inner listeners log and retry failed accepts themselves.
        let (io, _) = axum::serve::Listener::accept(&mut self.inner).await;
        (io, self.path.clone())
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.path.clone())
    }
}

/// The uid of the process on the other end of `stream` (`SO_PEERCRED` / `getpeereid`).
#[cfg(unix)]
pub fn peer_uid(stream: &tokio::net::UnixStream) -> io::Result<u32> {
    stream.peer_cred().map(|cred| cred.uid())
}

/// The uid of the peer of an accepted connection, as axum connect info
/// (`Router::into_make_service_with_connect_info::<PeerUid>()`, then `ConnectInfo<PeerUid>`);
/// `None` when the system could not tell.
#[cfg(unix)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerUid(pub Option<u32>);

#[cfg(unix)]
impl PeerUid {
    /// Whether the peer runs as this process's effective user or as root; `false` when unknown.
    pub fn is_same_user_or_root(self) -> bool {
        let me = nix::unistd::geteuid().as_raw();
        matches!(self.0, Some(uid) if uid == me || uid == 0)
    }
}

#[cfg(unix)]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for PeerUid {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        PeerUid(peer_uid(stream.io()).ok())
    }
}
