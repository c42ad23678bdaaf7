//! Model conversion and quantization, without Python.
//!
//! - [`Conversion`]: a Hugging Face safetensors directory (BERT, Llama, Mistral, Qwen 2) → GGUF
//!   F32/F16/BF16/Q8_0 with its tokenizer, streamed tensor by tensor and written atomically; every
//!   input is checked before anything is written.
//! - [`QuantType`]: every llama.cpp file type by name (`Q4_K_M`, `IQ2_XS`, ...).
//! - [`mlx`]: a safetensors directory or a GGUF F32/F16 → an MLX-LM directory with affine group
//!   quantization, bit for bit as `mlx.core.quantize`.
//! - `llama` (feature `llama`): GGUF → any [`QuantType`] through llama.cpp's own
//!   `llama_model_quantize`, from the same `llama-cpp-sys-2` build as the engine.
//! - `imatrix_compute` (feature `llama`): an importance matrix computed with the engine's
//!   llama.cpp over a text, as `llama-imatrix` does.
//! - [`quality`]: perplexity on a fixed text and KL-divergence against the source, measured with
//!   the engine's llama.cpp (feature `llama`), recorded in the receipt and the GGUF.
//!
//! Both run in a one-shot sandboxed process in the daemon (`ondevice quantize-task`); this crate
//! only computes and writes files.

#![warn(missing_docs)]

mod arch;
mod convert;
mod digest;
pub mod digest_cache;
mod error;
mod imatrix;
#[cfg(feature = "llama")]
pub mod imatrix_compute;
pub mod job;
#[cfg(feature = "llama")]
pub mod llama;
pub mod mlx;
mod mlx_tokenizer;
mod numeric;
pub mod pipeline;
pub mod quality;
#[cfg_attr(not(feature = "llama"), allow(dead_code))]
mod tail_hash;
mod tokenizer;
mod types;

use std::io::Read;
use std::path::Path;

pub use convert::{Conversion, ConvertOptions, Converted, OutType};
pub use error::QuantizeError;
pub use imatrix::{Imatrix, sha256_file, write_legacy};
pub use types::{QuantType, ggml_type_from_name};

/// Largest JSON file read from a model directory (tokenizers of big vocabularies are ~20 MB).
const MAX_JSON: u64 = 64 << 20;

/// Hears how far a long step is and may stop it.
pub trait Progress {
    /// `done` of `total` units (bytes) are processed.
    fn progress(&self, done: u64, total: u64);

    /// Whether to stop at the next chance (the step then fails with [`QuantizeError::Cancelled`]).
    fn cancelled(&self) -> bool {
        false
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn progress(&self, _: u64, _: u64) {}
}

/// Reads a JSON file of at most [`MAX_JSON`] bytes.
pub(crate) fn read_json_file(path: &Path) -> Result<serde_json::Value, QuantizeError> {
    let read = |source| QuantizeError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    if len > MAX_JSON {
        return Err(read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes is over the limit of {MAX_JSON} for a json file"),
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_JSON).read_to_end(&mut bytes).map_err(read)?;
    serde_json::from_slice(&bytes).map_err(|source| QuantizeError::Json { path: path.to_owned(), source })
}
