//! Local IPC between ondevice processes, in one place: the daemon's control socket
//! (`ondevice daemon status|stop`), the engine worker's socket (`ondevice worker`) and the daemon's
//! client of that worker all go through this crate.
//!
//! - [`bind`] creates a private local endpoint and returns a [`Listener`] that `axum::serve`
//!   accepts: on Unix a socket file of mode 0600 (created under a umask that leaves no group/other
//!   bits, a stale socket replaced, any other file in the way refused); on Windows a named pipe
//!   (`\\.\pipe\NAME`), whose first instance must be new (see `pipe.rs` for its security).
//! - [`PeerUid`] (Unix) is the uid of the process on the other end of an accepted connection, as
//!   axum connect info.
//! - [`connect`] opens a client connection (on Windows it waits, bounded, while every pipe instance
//!   is busy); [`request`] sends one HTTP/1.1 request on a fresh connection and returns an
//!   [`Answer`] whose body is still to be read, with a [`ConnGuard`] that closes the connection
//!   when dropped (so dropping a streamed answer tells the server the client went away).
//!
//! The endpoint is a path on every system: a socket path on Unix, a pipe name on Windows.
//! This crate depends on no other ondevice crate.

#![warn(missing_docs)]

mod client;
mod listener;
#[cfg(windows)]
mod pipe;

pub use client::{Answer, ClientStream, ConnGuard, RequestError, connect, probe, request};
pub use listener::{BindError, Connection, Listener, bind};
#[cfg(unix)]
pub use listener::{PeerUid, peer_uid};
