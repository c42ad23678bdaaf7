//! The streaming GGUF writer: declare metadata and tensors up front, then
//! stream each tensor's bytes, in declaration order, straight to the output.
//!
//! The header (metadata, tensor infos with their offsets) is computed from the
//! declarations before any data is written, so the output needs only
//! [`Write`], never `Seek`: it can be a pipe. Memory use is the header plus one
//! copy buffer, never a tensor.
//!
//! Every declaration is checked when it is made ([`GgufHeader`]), every write
//! when it happens ([`GgufStreamWriter`]): what the writer accepts, this
//! crate's reader and llama.cpp's loader accept. The layout is llama.cpp's own
//! (`gguf_write_out`): header, zero padding to the alignment, then each tensor
//! followed by zero padding to the alignment. The output is a function of the
//! declarations and the data only (no timestamps, no randomness), so the same
//! inputs give the same bytes; [`Finished::sha256`] is their digest.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::error::{GgufWriteError, Limit};
use crate::ggml::GgmlType;
use crate::gguf::DEFAULT_ALIGNMENT;
use crate::limits::{
    MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_KEY_LEN, MAX_METADATA_ENTRIES, MAX_STRING_LEN, MAX_TENSORS,
    MAX_WRITTEN_TENSOR_NAME_LEN,
};
use crate::value::{Array, Value};
use crate::writer::{encode_string, encode_value};

const ALIGNMENT_KEY: &str = "general.alignment";
/// Largest size, offset or element count written: GGUF readers hold them in `i64`.
const MAX_SIZE: u64 = i64::MAX as u64;
/// Copy buffer for [`GgufStreamWriter::write_tensor`].
const COPY_BUFFER: usize = 256 * 1024;
/// Bytes of a key or name kept in an error.
const ERROR_ITEM_LEN: usize = 64;

/// One declared tensor and where its data goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    n_bytes: u64,
    offset: u64,
}

impl TensorLayout {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions as declared, fastest-varying first (ggml `ne` order).
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Size of the data in bytes, from the shape and the type's block layout.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Offset of the data from the start of the data section (as written in
    /// the tensor info); only final once every metadata entry is declared, since
    /// `general.alignment` changes it.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The declarations of a GGUF file: metadata in order, then tensor infos in
/// order. Each declaration is validated when made; a refused one leaves the
/// header unchanged.
///
/// ```
/// use ondevice_gguf::{GgmlType, GgufFile, GgufHeader, Value};
///
/// let mut header = GgufHeader::new();
/// header.add_metadata("general.architecture", Value::String("llama".into()))?;
/// header.add_tensor("a", &[4], GgmlType::F32)?;
/// header.add_tensor("b", &[32, 2], GgmlType::Q8_0)?;
///
/// let mut writer = header.write_to(Vec::new())?;
/// writer.write_tensor_bytes("a", &[0; 16])?;
/// let mut sink = writer.tensor_writer("b")?; // implements std::io::Write
/// for _ in 0..2 {
///     std::io::Write::write_all(&mut sink, &[1; 34])?; // one Q8_0 block at a time
/// }
/// sink.finish()?;
/// let finished = writer.finish()?;
///
/// let file = GgufFile::parse(finished.output())?;
/// assert_eq!(file.tensor("b").unwrap().n_bytes(), 68);
/// assert_eq!(finished.len(), finished.output().len() as u64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct GgufHeader {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<TensorLayout>,
    names: HashSet<String>,
    alignment: u64,
}

impl Default for GgufHeader {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufHeader {
    /// No metadata, no tensors, the default alignment (32).
    pub fn new() -> Self {
        GgufHeader {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// Declares a metadata entry; entries are written in declaration order.
    ///
    /// Refused: a key already declared or over 65535 bytes, more than 65536
    /// entries, a string over 64 MiB, an array over 2^24 elements or nested
    /// deeper than 4, and a `general.alignment` that is not a `u32` power of
    /// two (llama.cpp reads it as `u32`). A valid `general.alignment` sets the
    /// alignment of the data section.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<&mut Self, GgufWriteError> {
        let key = key.into();
        check_limit(Limit::KeyLength, &key, key.len() as u64, MAX_KEY_LEN)?;
        check_limit(Limit::MetadataEntries, &key, self.metadata.len() as u64 + 1, MAX_METADATA_ENTRIES)?;
        if self.keys.contains(&key) {
            return Err(GgufWriteError::DuplicateKey { key });
        }
        check_value(&key, &value)?;
        if key == ALIGNMENT_KEY {
            let Value::U32(alignment) = value else {
                return Err(GgufWriteError::WrongMetadataType { key, expected: "a u32", found: value.value_type() });
            };
            let alignment = u64::from(alignment);
            if !alignment.is_power_of_two() {
                return Err(GgufWriteError::InvalidAlignment { alignment });
            }
            let offsets = offsets(&self.tensors, alignment)?;
            for (t, offset) in self.tensors.iter_mut().zip(offsets) {
                t.offset = offset;
            }
            self.alignment = alignment;
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Declares a tensor; tensors are written, and their data must be supplied,
    /// in declaration order.
    ///
    /// Refused: a name already declared or over
    /// [`MAX_WRITTEN_TENSOR_NAME_LEN`](crate::limits::MAX_WRITTEN_TENSOR_NAME_LEN) (63) bytes, more than 2^20 tensors, more than
    /// 4 dimensions, a dimension, element count, byte size or data section over
    /// `i64::MAX`, and a first dimension (the row) that is not a multiple of
    /// the type's block size.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> Result<&mut Self, GgufWriteError> {
        let name = name.into();
        check_limit(Limit::TensorNameLength, &name, name.len() as u64, MAX_WRITTEN_TENSOR_NAME_LEN)?;
        check_limit(Limit::Tensors, &name, self.tensors.len() as u64 + 1, MAX_TENSORS)?;
        check_limit(Limit::Dimensions, &name, dims.len() as u64, MAX_DIMS)?;
        if self.names.contains(&name) {
            return Err(GgufWriteError::DuplicateTensor { name });
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| if d > MAX_SIZE { None } else { acc.checked_mul(d) })
            .filter(|&n| n <= MAX_SIZE);
        let Some(n_elements) = n_elements else {
            return Err(GgufWriteError::TensorSizeOverflow { tensor: name });
        };
        let block_size = ggml_type.block_size();
        let row = dims.first().copied().unwrap_or(1);
        if row % block_size != 0 {
            return Err(GgufWriteError::RowNotBlockAligned { tensor: name, ggml_type, row, block_size });
        }
        let Some(n_bytes) = (n_elements / block_size).checked_mul(ggml_type.type_size()).filter(|&n| n <= MAX_SIZE)
        else {
            return Err(GgufWriteError::TensorSizeOverflow { tensor: name });
        };
        let offset = match self.tensors.last() {
            None => Some(0),
            Some(last) => padded_end(last.offset, last.n_bytes, self.alignment),
        };
        let Some(offset) = offset.filter(|&o| padded_end(o, n_bytes, self.alignment).is_some()) else {
            return Err(GgufWriteError::TensorSizeOverflow { tensor: name });
        };
        self.names.insert(name.clone());
        self.tensors.push(TensorLayout { name, dims: dims.to_vec(), ggml_type, n_bytes, offset });
        Ok(self)
    }

    /// The data-section alignment: `general.alignment` if declared, else 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Metadata entries in declaration order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Declared tensors with their sizes and offsets, in order.
    pub fn tensors(&self) -> &[TensorLayout] {
        &self.tensors
    }

    /// Absolute offset of the data section: the header's length, padded.
    pub fn data_offset(&self) -> u64 {
        let tensor_infos: u64 =
            self.tensors.iter().map(|t| 8 + t.name.len() as u64 + 4 + 8 * t.dims.len() as u64 + 4 + 8).sum();
        let metadata: u64 = self.metadata.iter().map(|(k, v)| 8 + k.len() as u64 + value_len(v)).sum();
        (4 + 4 + 8 + 8 + metadata + tensor_infos).next_multiple_of(self.alignment)
    }

    /// Length of the finished file in bytes, known before anything is written
    /// (to reserve space, or to check a download of the result).
    pub fn file_len(&self) -> u64 {
        let data = self.tensors.last().map_or(0, |t| t.offset + (t.n_bytes).next_multiple_of(self.alignment));
        self.data_offset() + data
    }

    /// Writes the header and its padding to `out` and returns the writer that
    /// takes the tensors' data. `out` gets many small writes: give it a
    /// [`std::io::BufWriter`] when it is a file or a socket.
    pub fn write_to<W: Write>(self, out: W) -> Result<GgufStreamWriter<W>, GgufWriteError> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.data_offset()).unwrap_or(0).min(1 << 24));
        bytes.extend_from_slice(b"GGUF");
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_string(&mut bytes, key);
            encode_value(&mut bytes, value);
        }
        for t in &self.tensors {
            encode_string(&mut bytes, &t.name);
            bytes.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                bytes.extend_from_slice(&d.to_le_bytes());
            }
            bytes.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            bytes.extend_from_slice(&t.offset.to_le_bytes());
        }
        let data_offset = (bytes.len() as u64).next_multiple_of(self.alignment);
        debug_assert_eq!(data_offset, self.data_offset());
        bytes.resize(data_offset as usize, 0);

        let mut writer = GgufStreamWriter {
            out: HashingWriter { inner: out, hasher: Sha256::new(), pos: 0 },
            tensors: self.tensors,
            alignment: self.alignment,
            data_offset,
            next: 0,
            current: None,
            poisoned: false,
            buffer: Vec::new(),
        };
        writer.emit(&bytes)?;
        Ok(writer)
    }
}

/// Takes the declared tensors' data, in declaration order, and writes it to
/// the output with its padding. Made by [`GgufHeader::write_to`].
///
/// Each tensor's data comes either from a source ([`Self::write_tensor`],
/// [`Self::write_tensor_bytes`]) or through a [`TensorWriter`] sink that a
/// converter writes into chunk by chunk ([`Self::tensor_writer`]). After a
/// failed write the output is incomplete and every later call returns
/// [`GgufWriteError::Poisoned`]; refusing a tensor that is out of order or
/// unknown, or a byte slice of the wrong length, writes nothing and does not
/// poison.
pub struct GgufStreamWriter<W: Write> {
    out: HashingWriter<W>,
    tensors: Vec<TensorLayout>,
    alignment: u64,
    data_offset: u64,
    /// Index of the next tensor to start.
    next: usize,
    /// The tensor started last, until the next one starts.
    current: Option<Current>,
    poisoned: bool,
    /// Copy buffer for sources, allocated on first use.
    buffer: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    index: usize,
    written: u64,
}

impl<W: Write> fmt::Debug for GgufStreamWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufStreamWriter")
            .field("position", &self.out.pos)
            .field("next_tensor", &self.next_tensor())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<W: Write> GgufStreamWriter<W> {
    /// The declared tensors with their sizes and offsets.
    pub fn tensors(&self) -> &[TensorLayout] {
        &self.tensors
    }

    /// The name of the next tensor due, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Bytes written to the output so far.
    pub fn position(&self) -> u64 {
        self.out.pos
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Starts tensor `name` and returns a sink for its data. The sink refuses
    /// bytes past the declared size; [`TensorWriter::finish`] (or starting the
    /// next tensor, or [`Self::finish`]) refuses fewer.
    pub fn tensor_writer(&mut self, name: &str) -> Result<TensorWriter<'_, W>, GgufWriteError> {
        let index = self.resolve(name)?;
        self.start(index)?;
        Ok(TensorWriter { writer: self })
    }

    /// Writes tensor `name` from `source`, which must hold exactly the declared
    /// number of bytes and then end (use [`Read::take`] for a section of a
    /// longer stream). Reads through a 256 KiB buffer.
    pub fn write_tensor(&mut self, name: &str, mut source: impl Read) -> Result<(), GgufWriteError> {
        let index = self.resolve(name)?;
        self.start(index)?;
        let declared = self.tensors[index].n_bytes;
        if self.buffer.is_empty() {
            self.buffer = vec![0; COPY_BUFFER];
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self.copy(index, declared, &mut source, &mut buffer);
        self.buffer = buffer;
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn copy(
        &mut self,
        index: usize,
        declared: u64,
        source: &mut impl Read,
        buffer: &mut [u8],
    ) -> Result<(), GgufWriteError> {
        let mut read = 0u64;
        loop {
            let want = usize::try_from(declared - read).unwrap_or(usize::MAX).min(buffer.len());
            // With everything read, one more byte must not come.
            let chunk = if want == 0 { &mut buffer[..1] } else { &mut buffer[..want] };
            let n = match source.read(chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(GgufWriteError::Source { tensor: self.tensors[index].name.clone(), read, source });
                }
            };
            if want == 0 {
                if n > 0 {
                    return Err(GgufWriteError::TensorTooLong {
                        tensor: self.tensors[index].name.clone(),
                        declared,
                        offset: self.out.pos,
                    });
                }
                return Ok(());
            }
            if n == 0 {
                return Err(GgufWriteError::TensorTooShort {
                    tensor: self.tensors[index].name.clone(),
                    declared,
                    supplied: read,
                    offset: self.out.pos,
                });
            }
            self.emit(&chunk[..n])?;
            read += n as u64;
            if let Some(current) = &mut self.current {
                current.written = read;
            }
        }
    }

    /// Writes tensor `name` from a slice of exactly its declared size; a slice
    /// of another length is refused before anything is written.
    pub fn write_tensor_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), GgufWriteError> {
        let index = self.resolve(name)?;
        let t = &self.tensors[index];
        let supplied = data.len() as u64;
        if supplied > t.n_bytes {
            return Err(GgufWriteError::TensorTooLong {
                tensor: t.name.clone(),
                declared: t.n_bytes,
                offset: self.data_offset + t.offset + t.n_bytes,
            });
        }
        if supplied < t.n_bytes {
            return Err(GgufWriteError::TensorTooShort {
                tensor: t.name.clone(),
                declared: t.n_bytes,
                supplied,
                offset: self.data_offset + t.offset + supplied,
            });
        }
        self.start(index)?;
        self.emit(data)?;
        if let Some(current) = &mut self.current {
            current.written = supplied;
        }
        Ok(())
    }

    /// Checks that every declared tensor was written in full, writes the final
    /// padding and flushes the output.
    pub fn finish(mut self) -> Result<Finished<W>, GgufWriteError> {
        self.check_usable()?;
        self.settle()?;
        if let Some(next) = self.tensors.get(self.next) {
            return Err(GgufWriteError::MissingTensors {
                next: next.name.clone(),
                remaining: self.tensors.len() - self.next,
            });
        }
        let end = self.out.pos.next_multiple_of(self.alignment);
        self.pad_to(end)?;
        let pos = self.out.pos;
        self.out.inner.flush().map_err(|source| GgufWriteError::Io { offset: pos, source })?;
        Ok(Finished { output: self.out.inner, len: pos, sha256: self.out.hasher.finalize().into() })
    }

    fn check_usable(&self) -> Result<(), GgufWriteError> {
        if self.poisoned {
            return Err(GgufWriteError::Poisoned);
        }
        Ok(())
    }

    /// Finds tensor `name`, which must be the next one due. Writes nothing.
    fn resolve(&self, name: &str) -> Result<usize, GgufWriteError> {
        self.check_usable()?;
        match self.tensors.iter().position(|t| t.name == name) {
            None => Err(GgufWriteError::UnknownTensor { name: name.to_owned() }),
            Some(i) if i < self.next => Err(GgufWriteError::AlreadyWritten { tensor: name.to_owned() }),
            Some(i) if i > self.next => Err(GgufWriteError::OutOfOrder {
                expected: self.tensors[self.next].name.clone(),
                found: name.to_owned(),
            }),
            Some(i) => Ok(i),
        }
    }

    /// Closes the tensor in progress: it must have all its bytes.
    fn settle(&mut self) -> Result<(), GgufWriteError> {
        if let Some(current) = self.current.take() {
            let t = &self.tensors[current.index];
            if current.written != t.n_bytes {
                self.poisoned = true;
                return Err(GgufWriteError::TensorTooShort {
                    tensor: t.name.clone(),
                    declared: t.n_bytes,
                    supplied: current.written,
                    offset: self.out.pos,
                });
            }
        }
        Ok(())
    }

    /// Settles the previous tensor, pads up to tensor `index` and makes it current.
    fn start(&mut self, index: usize) -> Result<(), GgufWriteError> {
        self.settle()?;
        let start = self.data_offset + self.tensors[index].offset;
        self.pad_to(start)?;
        self.current = Some(Current { index, written: 0 });
        self.next = index + 1;
        Ok(())
    }

    fn pad_to(&mut self, end: u64) -> Result<(), GgufWriteError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.out.pos < end {
            let n = usize::try_from(end - self.out.pos).unwrap_or(usize::MAX).min(ZEROS.len());
            self.emit(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Writes all of `bytes`; any failure poisons the writer.
    fn emit(&mut self, bytes: &[u8]) -> Result<(), GgufWriteError> {
        if let Err(source) = self.out.write_all(bytes) {
            self.poisoned = true;
            return Err(GgufWriteError::Io { offset: self.out.pos, source });
        }
        Ok(())
    }
}

/// The sink for one tensor's data, from [`GgufStreamWriter::tensor_writer`].
///
/// Writing past the declared size fails with an [`io::Error`] of kind
/// `InvalidInput` whose inner error is [`GgufWriteError::TensorTooLong`]
/// (`err.into_inner()` and `downcast`), and poisons the writer.
#[derive(Debug)]
pub struct TensorWriter<'a, W: Write> {
    writer: &'a mut GgufStreamWriter<W>,
}

impl<W: Write> TensorWriter<'_, W> {
    fn current(&self) -> (Current, &TensorLayout) {
        let current = self.writer.current.expect("a TensorWriter exists only for a started tensor");
        (current, &self.writer.tensors[current.index])
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.current().1.name
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        let (current, t) = self.current();
        t.n_bytes - current.written
    }

    /// Checks that the tensor got exactly its declared bytes.
    pub fn finish(self) -> Result<(), GgufWriteError> {
        self.writer.check_usable()?;
        let (current, t) = self.current();
        if current.written != t.n_bytes {
            let error = GgufWriteError::TensorTooShort {
                tensor: t.name.clone(),
                declared: t.n_bytes,
                supplied: current.written,
                offset: self.writer.out.pos,
            };
            self.writer.poisoned = true;
            return Err(error);
        }
        Ok(())
    }
}

impl<W: Write> Write for TensorWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.writer.poisoned {
            return Err(io::Error::other(GgufWriteError::Poisoned));
        }
        let (current, t) = self.current();
        if buf.len() as u64 > t.n_bytes - current.written {
            let error = GgufWriteError::TensorTooLong {
                tensor: t.name.clone(),
                declared: t.n_bytes,
                offset: self.writer.data_offset + t.offset + t.n_bytes,
            };
            self.writer.poisoned = true;
            return Err(io::Error::new(io::ErrorKind::InvalidInput, error));
        }
        match self.writer.out.write(buf) {
            Ok(n) => {
                if let Some(current) = &mut self.writer.current {
                    current.written += n as u64;
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.writer.poisoned = true;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.out.inner.flush()
    }
}

/// A finished GGUF output: the output itself, its length and its SHA-256.
#[derive(Debug)]
pub struct Finished<W> {
    output: W,
    len: u64,
    sha256: [u8; 32],
}

impl<W> Finished<W> {
    /// Bytes written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written (never: a header is at least 32 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-256 of every byte written.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// [`Self::sha256`] as 64 lowercase hex digits.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().fold(String::with_capacity(64), |mut s, b| {
            use fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// The output.
    pub fn output(&self) -> &W {
        &self.output
    }

    /// Takes the output.
    pub fn into_output(self) -> W {
        self.output
    }

    /// The output, and the rest without it.
    pub(crate) fn split(self) -> (W, Finished<()>) {
        (self.output, Finished { output: (), len: self.len, sha256: self.sha256 })
    }

    pub(crate) fn map_output<T>(self, f: impl FnOnce(W) -> T) -> Finished<T> {
        Finished { output: f(self.output), len: self.len, sha256: self.sha256 }
    }
}

/// Counts and hashes what passes through to the output.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    pos: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// End of a tensor at `offset` of `n_bytes`, padded, if it fits in `i64`.
fn padded_end(offset: u64, n_bytes: u64, alignment: u64) -> Option<u64> {
    offset.checked_add(n_bytes)?.checked_next_multiple_of(alignment).filter(|&e| e <= MAX_SIZE)
}

/// The tensors' offsets with `alignment`, unless one would overflow.
fn offsets(tensors: &[TensorLayout], alignment: u64) -> Result<Vec<u64>, GgufWriteError> {
    let mut end = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        offsets.push(end);
        end = padded_end(end, t.n_bytes, alignment)
            .ok_or_else(|| GgufWriteError::TensorSizeOverflow { tensor: t.name.clone() })?;
    }
    Ok(offsets)
}

fn check_limit(what: Limit, item: &str, count: u64, max: u64) -> Result<(), GgufWriteError> {
    if count > max {
        return Err(GgufWriteError::LimitExceeded { what, item: cut(item), count, max });
    }
    Ok(())
}

/// At most [`ERROR_ITEM_LEN`] bytes of `s`, cut at a character boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(ERROR_ITEM_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Checks string lengths, array lengths and nesting against the reader's caps.
fn check_value(key: &str, value: &Value) -> Result<(), GgufWriteError> {
    match value {
        Value::String(s) => check_limit(Limit::StringLength, key, s.len() as u64, MAX_STRING_LEN),
        Value::Array(a) => check_array(key, a, 1),
        _ => Ok(()),
    }
}

fn check_array(key: &str, array: &Array, depth: u32) -> Result<(), GgufWriteError> {
    check_limit(Limit::ArrayDepth, key, depth.into(), MAX_ARRAY_DEPTH.into())?;
    check_limit(Limit::ArrayLength, key, array.len() as u64, MAX_ARRAY_LEN)?;
    match array {
        Array::String(v) => {
            for s in v {
                check_limit(Limit::StringLength, key, s.len() as u64, MAX_STRING_LEN)?;
            }
        }
        Array::Array(v) => {
            for a in v {
                check_array(key, a, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Encoded size of a value with its type tag.
fn value_len(value: &Value) -> u64 {
    4 + match value {
        Value::String(s) => 8 + s.len() as u64,
        Value::Array(a) => array_len(a),
        other => other.value_type().fixed_size().unwrap_or(0),
    }
}

/// Encoded size of an array payload: element type, count, elements.
fn array_len(array: &Array) -> u64 {
    4 + 8
        + match array {
            Array::String(v) => v.iter().map(|s| 8 + s.len() as u64).sum(),
            Array::Array(v) => v.iter().map(array_len).sum(),
            other => other.element_type().fixed_size().unwrap_or(0) * other.len() as u64,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_char_boundaries() {
        assert_eq!(cut("abc"), "abc");
        let s = "é".repeat(40);
        let c = cut(&s);
        assert!(c.len() <= ERROR_ITEM_LEN && s.starts_with(&c));
    }

    #[test]
    fn data_offset_matches_the_encoded_header() {
        let mut h = GgufHeader::new();
        h.add_metadata("s", Value::String("xyz".into())).unwrap();
        h.add_metadata("n", Value::Array(Array::Array(vec![Array::String(vec!["a".into()]), Array::F64(vec![1.0])])))
            .unwrap();
        h.add_metadata("general.alignment", Value::U32(8)).unwrap();
        h.add_tensor("t", &[3], GgmlType::F16).unwrap();
        let expected = h.data_offset();
        let w = h.write_to(Vec::new()).unwrap();
        assert_eq!(w.position(), expected);
    }
}
