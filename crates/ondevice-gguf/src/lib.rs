//! Defensive readers for untrusted model files, and a streaming GGUF writer.
//!
//! Model files come from the internet and are parsed before anything else has
//! looked at them, so every reader here treats its input as hostile:
//!
//! - [`GgufFile`] reads the header of a GGUF file (versions 2 and 3): metadata,
//!   tensor infos and the start of the data section, without reading tensor data.
//! - [`SafetensorsHeader`] reads and validates the JSON header of a
//!   `.safetensors` file.
//! - [`HfModelDir`] reads a Hugging Face model directory (`config.json` plus one
//!   or more safetensors files) and sums up what it holds.
//! - [`GgufHeader`] and [`GgufStreamWriter`] write GGUF files: metadata and
//!   tensor infos are declared and validated up front, then each tensor's data
//!   is streamed to any [`std::io::Write`] without holding the model in memory
//!   ([`GgufHeader::write_atomic`] writes a file atomically).
//! - [`writer::GgufWriter`] writes GGUF files, valid or deliberately broken, for
//!   tests.
//!
//! Every count, length and offset is checked against the file size and against
//! the caps in [`limits`] before anything is allocated; the readers return typed
//! errors and never panic on any input. Memory use is bounded by the size of the
//! header, never by a number the file claims.

#![warn(missing_docs)]

mod atomic;
mod error;
mod ggml;
mod gguf;
mod hf;
pub mod limits;
mod reader;
mod safetensors;
mod stream;
mod value;
pub mod writer;

pub use atomic::AtomicFile;
pub use error::{GgufError, GgufWriteError, Limit};
pub use ggml::{GgmlType, file_type_name};
pub use gguf::{DEFAULT_ALIGNMENT, GgufFile, TensorInfo};
pub use hf::{HfDirError, HfModelDir};
pub use safetensors::{Dtype, SafetensorsError, SafetensorsHeader, SafetensorsTensor};
pub use stream::{Finished, GgufHeader, GgufStreamWriter, TensorLayout, TensorWriter};
pub use value::{Array, Value, ValueType};
