//! Caps on what a GGUF file may declare.
//!
//! Each cap is far above what any real model uses and far below what would let
//! a hostile file exhaust memory or stack. A file over a cap is rejected with
//! [`GgufError::LimitExceeded`](crate::GgufError::LimitExceeded); the
//! streaming writer refuses such a declaration with
//! [`GgufWriteError::LimitExceeded`](crate::GgufWriteError::LimitExceeded).

/// Longest metadata key, in bytes (the GGUF spec allows `2^16 - 1`).
pub const MAX_KEY_LEN: u64 = 65_535;

/// Longest string value, in bytes (chat templates are tens of KiB).
pub const MAX_STRING_LEN: u64 = 64 * 1024 * 1024;

/// Most elements in one array value (vocabularies hold a few hundred thousand).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;

/// Deepest nesting of arrays inside arrays; a plain array has depth 1.
pub const MAX_ARRAY_DEPTH: u32 = 4;

/// Most metadata key-value pairs in one file.
pub const MAX_METADATA_ENTRIES: u64 = 65_536;

/// Most tensors in one file.
pub const MAX_TENSORS: u64 = 1 << 20;

/// Most dimensions of one tensor (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u64 = 4;

/// Longest tensor name, in bytes (`GGML_MAX_NAME`).
pub const MAX_TENSOR_NAME_LEN: u64 = 64;

/// Longest tensor name the streaming writer accepts, in bytes: llama.cpp
/// refuses names of `GGML_MAX_NAME` (64) bytes or more (it keeps room for a NUL).
pub const MAX_WRITTEN_TENSOR_NAME_LEN: u64 = MAX_TENSOR_NAME_LEN - 1;

/// Largest accepted safetensors JSON header, in bytes.
pub const MAX_SAFETENSORS_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Largest accepted `config.json` or `model.safetensors.index.json`, in bytes.
pub const MAX_JSON_FILE_LEN: u64 = 64 * 1024 * 1024;

/// Elements preallocated at once for a declared count; larger vectors grow as
/// their elements are actually read.
pub(crate) const PREALLOC_ELEMENTS: u64 = 1 << 16;
