//! The crate's error type: what went wrong converting, quantizing or exporting, with the file,
//! tensor or key a user needs to fix it.

use std::path::PathBuf;

use ondevice_gguf::{Dtype, GgufError, GgufWriteError, HfDirError};

/// What went wrong in a conversion, a quantization or an export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// The source directory is not a readable Hugging Face model directory (or one of its
    /// safetensors files is invalid: offsets past the file, dtype/shape mismatch, overflow).
    #[error(transparent)]
    Source(#[from] HfDirError),
    /// A source GGUF file is invalid.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `config.json` names an architecture this converter does not know.
    #[error(
        "unknown architecture {architecture:?} (model_type {model_type:?}): ondevice converts BertModel, LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM; convert this model with llama.cpp's convert_hf_to_gguf.py and import the gguf"
    )]
    UnknownArchitecture {
        /// `architectures[0]`, or empty.
        architecture: String,
        /// `model_type`, or empty.
        model_type: String,
    },
    /// A `config.json` value is missing, of the wrong type, or out of range.
    #[error("config.json of {}: {key} {problem}", dir.display())]
    Config {
        /// The model directory.
        dir: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor name the architecture does not use: the model is a variant this converter does not
    /// know.
    #[error(
        "tensor {tensor:?} is not part of the {architecture} architecture as ondevice knows it: this model variant is not supported"
    )]
    UnknownTensor {
        /// The safetensors name.
        tensor: String,
        /// The architecture.
        architecture: &'static str,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor {tensor:?} is missing from the safetensors files: the model directory is incomplete")]
    MissingTensor {
        /// The safetensors name.
        tensor: String,
    },
    /// A tensor's shape does not match `config.json`.
    #[error("tensor {tensor:?} has shape {found:?} but config.json implies {expected:?}")]
    TensorShape {
        /// The safetensors name.
        tensor: String,
        /// The shape config.json implies.
        expected: Vec<u64>,
        /// The shape in the file.
        found: Vec<u64>,
    },
    /// A tensor's element type cannot be converted.
    #[error("tensor {tensor:?} has dtype {dtype}, which the converter does not read (F32, F16, BF16, F64)")]
    UnsupportedDtype {
        /// The safetensors name.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// `tokenizer.json` is missing or holds something the converter cannot express in GGUF.
    #[error("tokenizer of {}: {problem}", dir.display())]
    Tokenizer {
        /// The model directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A JSON file does not parse.
    #[error("invalid json in {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Reading a file failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing the output failed (or the declared output was refused).
    #[error(transparent)]
    Write(#[from] GgufWriteError),
    /// A quantization type name is not known.
    #[error("unknown quantization type {name:?}: use one of {known}")]
    UnknownType {
        /// The name given.
        name: String,
        /// The names accepted.
        known: String,
    },
    /// The type cannot be produced by this step (for instance Q4_K_M by the converter alone).
    #[error("{what}")]
    Unsupported {
        /// What is not supported, and what to do instead.
        what: String,
    },
    /// An i-quant (or another type that needs one) was asked for without an importance matrix.
    #[error(
        "type {ftype} needs an importance matrix: pass --imatrix FILE (an importance matrix made by llama.cpp's llama-imatrix)"
    )]
    NeedsImatrix {
        /// The type.
        ftype: String,
    },
    /// The importance matrix file is invalid.
    #[error("importance matrix {}: {problem}", path.display())]
    Imatrix {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// llama.cpp's quantizer failed.
    #[error("llama.cpp could not quantize {}: {reason}", input.display())]
    Llama {
        /// The input.
        input: PathBuf,
        /// What llama.cpp said (its log has more).
        reason: String,
    },
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
}
