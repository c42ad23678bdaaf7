//! Errors from reading GGUF files.

use std::fmt;
use std::path::PathBuf;

use crate::ggml::GgmlType;
use crate::value::ValueType;

/// Which cap in [`crate::limits`] a file went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// [`crate::limits::MAX_KEY_LEN`].
    KeyLength,
    /// [`crate::limits::MAX_STRING_LEN`].
    StringLength,
    /// [`crate::limits::MAX_ARRAY_LEN`].
    ArrayLength,
    /// [`crate::limits::MAX_ARRAY_DEPTH`].
    ArrayDepth,
    /// [`crate::limits::MAX_METADATA_ENTRIES`].
    MetadataEntries,
    /// [`crate::limits::MAX_TENSORS`].
    Tensors,
    /// [`crate::limits::MAX_DIMS`].
    Dimensions,
    /// [`crate::limits::MAX_TENSOR_NAME_LEN`].
    TensorNameLength,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::KeyLength => "metadata key length",
            Limit::StringLength => "string length",
            Limit::ArrayLength => "array length",
            Limit::ArrayDepth => "array nesting depth",
            Limit::MetadataEntries => "metadata entry count",
            Limit::Tensors => "tensor count",
            Limit::Dimensions => "tensor dimension count",
            Limit::TensorNameLength => "tensor name length",
        })
    }
}

/// What went wrong while reading a GGUF file.
///
/// Offsets are absolute byte positions in the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or its size read.
    #[error("cannot open gguf file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading the named file failed; `source` says why.
    #[error("invalid gguf file {}: {source}", path.display())]
    WithPath {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: Box<GgufError>,
    },
    /// Reading failed for a reason other than the end of the file.
    #[error("read error at byte {offset}: {source}")]
    Io {
        /// Where the read started.
        offset: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ends, or would end, before a declared item does.
    #[error("file is truncated or corrupt: {needed} bytes needed at byte {offset} but only {available} remain")]
    Truncated {
        /// Where the item starts.
        offset: u64,
        /// Bytes the item needs (at least).
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("not a gguf file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The version is neither 2 nor 3.
    #[error("unsupported gguf version {version}: only versions 2 and 3 are supported")]
    UnsupportedVersion {
        /// The declared version.
        version: u32,
    },
    /// The file is a big-endian GGUF.
    #[error("big-endian gguf (version {version}) is not supported: use a little-endian model file")]
    BigEndian {
        /// The version, once byte-swapped.
        version: u32,
    },
    /// A declared count or length is over a cap in [`crate::limits`].
    #[error("{what} {count} declared at byte {offset} is over the limit of {max}")]
    LimitExceeded {
        /// Which cap.
        what: Limit,
        /// The declared value.
        count: u64,
        /// The cap.
        max: u64,
        /// Where the value was declared.
        offset: u64,
    },
    /// A string is not valid UTF-8.
    #[error("string at byte {offset} is not valid utf-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: u64,
    },
    /// A metadata value type is not one of 0..=12.
    #[error("unknown metadata value type {value_type} at byte {offset}")]
    UnknownValueType {
        /// Where the type was declared.
        offset: u64,
        /// The declared type.
        value_type: u32,
    },
    /// A boolean is neither 0 nor 1.
    #[error("invalid boolean byte {value} at byte {offset}")]
    InvalidBool {
        /// Where the byte is.
        offset: u64,
        /// The byte.
        value: u8,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {key:?} at byte {offset}")]
    DuplicateKey {
        /// Where the second key starts.
        offset: u64,
        /// The key.
        key: String,
    },
    /// A well-known metadata key has a value of the wrong type.
    #[error("metadata key {key:?} must be {expected}, found {found}")]
    WrongMetadataType {
        /// The key.
        key: String,
        /// What the key must hold.
        expected: &'static str,
        /// What it holds.
        found: ValueType,
    },
    /// `general.alignment` is zero, not a power of two, or over `u32::MAX`.
    #[error("invalid general.alignment {alignment}: it must be a non-zero power of two")]
    InvalidAlignment {
        /// The declared alignment.
        alignment: u64,
    },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name {name:?} at byte {offset}")]
    DuplicateTensor {
        /// Where the second tensor info starts.
        offset: u64,
        /// The name.
        name: String,
    },
    /// A tensor has a ggml type this reader does not know.
    #[error("tensor {tensor:?} has unknown ggml type {ggml_type} (declared at byte {offset})")]
    UnknownGgmlType {
        /// Where the type was declared.
        offset: u64,
        /// The tensor.
        tensor: String,
        /// The declared type.
        ggml_type: u32,
    },
    /// A tensor's element count or byte size does not fit in 63 bits.
    #[error("tensor {tensor:?} is too large: its element count or byte size overflows")]
    TensorSizeOverflow {
        /// The tensor.
        tensor: String,
    },
    /// A tensor's first dimension is not a multiple of its type's block size.
    #[error(
        "tensor {tensor:?} of type {ggml_type} has a row of {row} elements, not a multiple of the block size {block_size}"
    )]
    RowNotBlockAligned {
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// Its first dimension.
        row: u64,
        /// The type's block size.
        block_size: u64,
    },
    /// A tensor's offset is not a multiple of the alignment.
    #[error("tensor {tensor:?} has offset {offset}, not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data does not lie within the file.
    #[error("tensor {tensor:?} data at bytes {start}..{end} lies outside the file of {file_len} bytes")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute start (saturated on overflow).
        start: u64,
        /// Absolute end (saturated on overflow).
        end: u64,
        /// The file size.
        file_len: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("tensor {second:?} overlaps tensor {first:?}")]
    OverlappingTensors {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
}
