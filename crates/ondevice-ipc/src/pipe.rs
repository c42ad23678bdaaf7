//! The endpoint on Windows: a named pipe (`\\.\pipe\NAME`) served through axum. tokio has no Unix
//! sockets on Windows, so where Unix gets a socket path the callers pass a pipe name: the daemon's
//! control pipe (`\\.\pipe\ondevice-<hash of the home>`, see `ondevice_config::Paths::control_socket`)
//! and each engine worker's pipe (the path the worker launcher chose).
//!
//! The first instance is created with `first_pipe_instance`, so a pipe of that name that already
//! exists (another process squatting it) is an error instead of a shared endpoint; remote (SMB)
//! clients are rejected (tokio's default). The pipe keeps Windows' default security descriptor:
//! full control for its creator, SYSTEM and administrators, read-only for everyone else, so no
//! other user can send a request (which is why no peer check is made on Windows). One instance
//! always waits for the next client while earlier ones are being served.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};

/// Accepts connections on a named pipe.
#[derive(Debug)]
pub(crate) struct PipeListener {
    name: PathBuf,
    next: Option<NamedPipeServer>,
}

impl PipeListener {
    /// Creates the first instance of pipe `name`; fails if a pipe of that name exists.
    pub(crate) fn bind(name: &Path) -> io::Result<PipeListener> {
        let first = ServerOptions::new().first_pipe_instance(true).create(name)?;
        Ok(PipeListener { name: name.to_path_buf(), next: Some(first) })
    }
}

impl axum::serve::Listener for PipeListener {
    type Io = NamedPipeServer;
    type Addr = PathBuf;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let server = match self.next.take() {
                Some(server) => server,
                None => match ServerOptions::new().create(&self.name) {
                    Ok(server) => server,
                    Err(e) => {
                        tracing::warn!(pipe = %self.name.display(), error = %e, "cannot create a pipe instance");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            match server.connect().await {
                Ok(()) => {
                    // The next client finds an instance waiting; if creating it fails, the loop
                    // above retries on the next accept.
                    self.next = ServerOptions::new().create(&self.name).ok();
                    return (server, self.name.clone());
                }
                Err(e) => tracing::debug!(pipe = %self.name.display(), error = %e, "pipe client went away"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.name.clone())
    }
}
