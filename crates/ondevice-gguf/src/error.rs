//! Errors from reading GGUF files ([`GgufError`]) and from writing them
//! ([`GgufWriteError`]).

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

/// Why the streaming writer refused a declaration or a write.
///
/// Declaration errors ([`crate::GgufHeader`]) leave the header as it was.
/// Errors while data is written (a short or long tensor, a failing source or
/// output) leave the output incomplete: the writer then refuses everything with
/// [`GgufWriteError::Poisoned`], and the output must be discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufWriteError {
    /// A declaration is over a cap (key or name length, counts, dimensions,
    /// string or array lengths, nesting).
    #[error("{what} {count} of {item:?} is over the limit of {max}")]
    LimitExceeded {
        /// Which cap.
        what: Limit,
        /// The metadata key or tensor name concerned (cut to 64 bytes).
        item: String,
        /// The declared value.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// The metadata key is already declared.
    #[error("duplicate metadata key {key:?}: each key may be declared once")]
    DuplicateKey {
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
        /// What it was given.
        found: ValueType,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("invalid general.alignment {alignment}: it must be a non-zero power of two")]
    InvalidAlignment {
        /// The declared alignment.
        alignment: u64,
    },
    /// The tensor name is already declared.
    #[error("duplicate tensor name {name:?}: each tensor may be declared once")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A dimension, the element count, the byte size or the data section
    /// would not fit in 63 bits.
    #[error("tensor {tensor:?} is too large: its dimensions, element count, byte size or offset overflow")]
    TensorSizeOverflow {
        /// The tensor.
        tensor: String,
    },
    /// The first dimension is not a multiple of the type's block size.
    #[error(
        "tensor {tensor:?} of type {ggml_type} has a row of {row} elements, not a multiple of the block size {block_size}"
    )]
    RowNotBlockAligned {
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// Its first dimension (1 for a scalar).
        row: u64,
        /// The type's block size.
        block_size: u64,
    },
    /// Data was supplied for a name that was never declared.
    #[error("tensor {name:?} was not declared: declare every tensor before writing")]
    UnknownTensor {
        /// The name.
        name: String,
    },
    /// Data was supplied for a tensor declared later than the next one due.
    #[error("tensor {found:?} supplied out of order: tensor {expected:?} comes first (declaration order)")]
    OutOfOrder {
        /// The next tensor due.
        expected: String,
        /// The tensor supplied.
        found: String,
    },
    /// Data was supplied twice for the same tensor.
    #[error("tensor {tensor:?} was already written")]
    AlreadyWritten {
        /// The tensor.
        tensor: String,
    },
    /// More bytes were supplied than the tensor's declared size.
    #[error("tensor {tensor:?} got more than its declared {declared} bytes (at output byte {offset})")]
    TensorTooLong {
        /// The tensor.
        tensor: String,
        /// Its size from its shape and type.
        declared: u64,
        /// Absolute output position where the tensor's data ends.
        offset: u64,
    },
    /// The source ended, or the next tensor began, before the declared size.
    #[error("tensor {tensor:?} got {supplied} of its declared {declared} bytes (at output byte {offset})")]
    TensorTooShort {
        /// The tensor.
        tensor: String,
        /// Its size from its shape and type.
        declared: u64,
        /// Bytes supplied.
        supplied: u64,
        /// Absolute output position where the data stopped.
        offset: u64,
    },
    /// `finish` was called before every declared tensor was written.
    #[error("{remaining} declared tensors were not written, starting with {next:?}")]
    MissingTensors {
        /// The first tensor not written.
        next: String,
        /// How many were not written.
        remaining: usize,
    },
    /// Reading a tensor's source failed.
    #[error("reading the data of tensor {tensor:?} failed after {read} bytes: {source}")]
    Source {
        /// The tensor.
        tensor: String,
        /// Bytes of the tensor read before the failure.
        read: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("writing the gguf output failed at byte {offset}: {source}")]
    Io {
        /// Absolute output position of the failed write.
        offset: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An earlier error left the output incomplete.
    #[error("the gguf output is incomplete after an earlier error: discard it and write again")]
    Poisoned,
    /// The temporary file beside the destination could not be created.
    #[error("cannot create a temporary file beside {}: {source}", path.display())]
    CreateTemp {
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Syncing or renaming the finished file into place failed.
    #[error("cannot move the finished gguf file into place at {}: {source}", path.display())]
    Commit {
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
