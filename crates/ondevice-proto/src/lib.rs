//! Generated gRPC code of ondevice (`ondevice.v1`) and its file descriptor set for reflection.
//! The `.proto` sources live in `proto/ondevice/v1/` at the repository root.

#![warn(missing_docs)]

/// Messages and services of package `ondevice.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("ondevice.v1");
}

/// The encoded `FileDescriptorSet` of every ondevice proto (served by gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ondevice_descriptor.bin"));
