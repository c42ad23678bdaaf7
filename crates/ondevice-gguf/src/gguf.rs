//! The GGUF header reader: magic, version, metadata, tensor infos, and the
//! checks that tie them to the file's size.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::Range;
use std::path::Path;

use crate::error::{GgufError, Limit};
use crate::ggml::{GgmlType, file_type_name};
use crate::limits::{
    MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_KEY_LEN, MAX_METADATA_ENTRIES, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
    MAX_TENSORS,
};
use crate::reader::{Cursor, capacity};
use crate::value::{Array, Value, ValueType};

/// The data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

const MAGIC: [u8; 4] = *b"GGUF";
const ALIGNMENT_KEY: &str = "general.alignment";
/// Fewest bytes one metadata entry can take: key length, value type, one byte.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes one tensor info can take: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// One tensor described in a GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    n_bytes: u64,
    file_range: Range<u64>,
}

impl TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions as stored, fastest-varying first (ggml `ne` order).
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Absolute byte range of the data in the file.
    pub fn file_range(&self) -> Range<u64> {
        self.file_range.clone()
    }
}

/// The parsed header of a GGUF file.
///
/// Holds metadata and tensor infos, not tensor data: [`TensorInfo::file_range`]
/// says where each tensor's bytes are.
#[derive(Debug, Clone)]
pub struct GgufFile {
    version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
}

impl GgufFile {
    /// Reads the header of the GGUF file at `path`, leaving tensor data on disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        Self::open_with(path.as_ref(), Arrays::Keep)
    }

    fn open_with(path: &Path, arrays: Arrays) -> Result<Self, GgufError> {
        let open_error = |source| GgufError::Open { path: path.to_owned(), source };
        let file = File::open(path).map_err(open_error)?;
        let file_len = file.metadata().map_err(open_error)?.len();
        Parser::new(BufReader::with_capacity(1 << 16, file), file_len, arrays)
            .parse()
            .map_err(|e| GgufError::WithPath { path: path.to_owned(), source: Box::new(e) })
    }

    /// As [`open`](Self::open), but array values are checked and then dropped, so
    /// [`metadata`](Self::metadata) lists the other entries only.
    ///
    /// A language model's header is mostly arrays (its tokenizer's vocabulary and merges:
    /// about 100,000 strings for a small llama); a caller that needs none of them reads the
    /// header several times faster this way. The file is checked exactly as `open` checks
    /// it: a header one refuses, the other refuses too. A dropped array's key is as absent:
    /// [`get`](Self::get) answers `None` for it.
    pub fn open_without_arrays(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        Self::open_with(path.as_ref(), Arrays::Skip)
    }

    /// Parses a GGUF file held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::read_from(bytes, bytes.len() as u64)
    }

    /// As [`parse`](Self::parse), with arrays checked and dropped as by
    /// [`open_without_arrays`](Self::open_without_arrays).
    pub fn parse_without_arrays(bytes: &[u8]) -> Result<Self, GgufError> {
        Parser::new(bytes, bytes.len() as u64, Arrays::Skip).parse()
    }

    /// Reads a GGUF header from `reader`, positioned at the start of a file of
    /// `file_len` bytes. Reads only as far as the end of the tensor infos.
    pub fn read_from<R: Read>(reader: R, file_len: u64) -> Result<Self, GgufError> {
        Parser::new(reader, file_len, Arrays::Keep).parse()
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of a string metadata key.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The value of a non-negative integer metadata key.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The size of the file the header was read from.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `general.name`.
    pub fn name(&self) -> Option<&str> {
        self.get_str("general.name")
    }

    /// `general.license`.
    pub fn license(&self) -> Option<&str> {
        self.get_str("general.license")
    }

    /// `tokenizer.chat_template`.
    pub fn chat_template(&self) -> Option<&str> {
        self.get_str("tokenizer.chat_template")
    }

    /// `{architecture}.context_length`.
    pub fn context_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.context_length"))
    }

    /// `general.file_type`, the overall quantization (`enum llama_ftype`).
    pub fn file_type(&self) -> Option<u32> {
        self.get_u64("general.file_type").and_then(|v| u32::try_from(v).ok())
    }

    /// The quantization's name: from `general.file_type` when known, else the
    /// ggml type that holds the most bytes.
    pub fn quantization(&self) -> Option<&'static str> {
        if let Some(name) = self.file_type().and_then(file_type_name) {
            return Some(name);
        }
        let mut bytes: HashMap<GgmlType, u64> = HashMap::new();
        for t in &self.tensors {
            *bytes.entry(t.ggml_type).or_default() += t.n_bytes;
        }
        bytes.into_iter().max_by_key(|&(ty, n)| (n, std::cmp::Reverse(ty))).map(|(ty, _)| ty.name())
    }

    /// Total number of parameters: the sum of all tensors' element counts.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().fold(0u64, |acc, t| acc.saturating_add(t.n_elements))
    }

    /// Total bytes of tensor data.
    pub fn tensor_data_len(&self) -> u64 {
        self.tensors.iter().fold(0u64, |acc, t| acc.saturating_add(t.n_bytes))
    }
}

/// Metadata entries in file order.
type Metadata = Vec<(String, Value)>;

struct Parser<R> {
    cur: Cursor<R>,
    arrays: Arrays,
    /// Reused for the strings of a skipped array.
    scratch: Vec<u8>,
}

/// Whether array values are kept or only checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrays {
    Keep,
    Skip,
}

impl<R: Read> Parser<R> {
    fn new(reader: R, file_len: u64, arrays: Arrays) -> Self {
        Parser { cur: Cursor::new(reader, file_len), arrays, scratch: Vec::new() }
    }

    fn parse(mut self) -> Result<GgufFile, GgufError> {
        let magic = self.cur.array::<4>()?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = self.cur.u32()?;
        if !matches!(version, 2 | 3) {
            let swapped = version.swap_bytes();
            if matches!(swapped, 2 | 3) {
                return Err(GgufError::BigEndian { version: swapped });
            }
            return Err(GgufError::UnsupportedVersion { version });
        }

        let tensor_count_at = self.cur.pos();
        let tensor_count = self.cur.u64()?;
        check_limit(Limit::Tensors, tensor_count, MAX_TENSORS, tensor_count_at)?;
        let kv_count_at = self.cur.pos();
        let kv_count = self.cur.u64()?;
        check_limit(Limit::MetadataEntries, kv_count, MAX_METADATA_ENTRIES, kv_count_at)?;

        let (metadata, index) = self.metadata(kv_count)?;
        let alignment = alignment(&metadata, &index)?;
        let infos = self.tensor_infos(tensor_count)?;

        let file_len = self.cur.len();
        let data_offset = align_up(self.cur.pos(), alignment).unwrap_or(u64::MAX);
        let tensors = place_tensors(infos, data_offset, alignment, file_len)?;

        Ok(GgufFile { version, metadata, index, tensors, alignment, data_offset, file_len })
    }

    fn metadata(&mut self, count: u64) -> Result<(Metadata, HashMap<String, usize>), GgufError> {
        self.cur.ensure(count * MIN_KV_SIZE)?;
        let mut entries = Vec::with_capacity(capacity(count));
        let mut index = HashMap::with_capacity(capacity(count));
        // The keys of skipped arrays, so that a repeated key is refused in both modes.
        let mut skipped = HashSet::new();
        for _ in 0..count {
            let offset = self.cur.pos();
            let key = self.cur.string(MAX_KEY_LEN, Limit::KeyLength)?;
            let ty = self.value_type()?;
            // `general.alignment` is always kept: `alignment` refuses it when it is not a u32.
            let value = if ty == ValueType::Array && self.arrays == Arrays::Skip && key != ALIGNMENT_KEY {
                self.skip_array(1)?;
                None
            } else {
                Some(self.value_of(ty)?)
            };
            if index.contains_key(&key) || skipped.contains(&key) {
                return Err(GgufError::DuplicateKey { offset, key });
            }
            match value {
                Some(value) => {
                    entries.push((key.clone(), value));
                    index.insert(key, entries.len() - 1);
                }
                None => {
                    skipped.insert(key);
                }
            }
        }
        Ok((entries, index))
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.cur.pos();
        let tag = self.cur.u32()?;
        ValueType::from_u32(tag).ok_or(GgufError::UnknownValueType { offset, value_type: tag })
    }

    fn value_of(&mut self, ty: ValueType) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.cur.u8()?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.cur.array()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.cur.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.cur.array()?)),
            ValueType::U32 => Value::U32(self.cur.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.cur.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.cur.array()?)),
            ValueType::Bool => {
                let offset = self.cur.pos();
                Value::Bool(to_bool(self.cur.u8()?, offset)?)
            }
            ValueType::String => Value::String(self.cur.string(MAX_STRING_LEN, Limit::StringLength)?),
            ValueType::Array => Value::Array(self.array(1)?),
            ValueType::U64 => Value::U64(self.cur.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.cur.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.cur.array()?)),
        })
    }

    /// Reads an array's element type and count at nesting `depth`, checked against the limits
    /// and the bytes left.
    fn array_head(&mut self, depth: u32) -> Result<(ValueType, u64), GgufError> {
        let offset = self.cur.pos();
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::LimitExceeded {
                what: Limit::ArrayDepth,
                count: depth.into(),
                max: MAX_ARRAY_DEPTH.into(),
                offset,
            });
        }
        let ty = self.value_type()?;
        let count_at = self.cur.pos();
        let count = self.cur.u64()?;
        check_limit(Limit::ArrayLength, count, MAX_ARRAY_LEN, count_at)?;
        // count <= 2^24 and min_size <= 12: no overflow.
        self.cur.ensure(count * ty.min_size())?;
        Ok((ty, count))
    }

    /// Reads an array (element type, count, elements) at nesting `depth`.
    fn array(&mut self, depth: u32) -> Result<Array, GgufError> {
        let (ty, count) = self.array_head(depth)?;

        let n = capacity(count);
        let cur = &mut self.cur;
        Ok(match ty {
            ValueType::U8 => Array::U8(cur.bytes(count)?),
            ValueType::I8 => Array::I8(decode(&cur.bytes(count)?, i8::from_le_bytes)),
            ValueType::U16 => Array::U16(decode(&cur.bytes(count * 2)?, u16::from_le_bytes)),
            ValueType::I16 => Array::I16(decode(&cur.bytes(count * 2)?, i16::from_le_bytes)),
            ValueType::U32 => Array::U32(decode(&cur.bytes(count * 4)?, u32::from_le_bytes)),
            ValueType::I32 => Array::I32(decode(&cur.bytes(count * 4)?, i32::from_le_bytes)),
            ValueType::F32 => Array::F32(decode(&cur.bytes(count * 4)?, f32::from_le_bytes)),
            ValueType::U64 => Array::U64(decode(&cur.bytes(count * 8)?, u64::from_le_bytes)),
            ValueType::I64 => Array::I64(decode(&cur.bytes(count * 8)?, i64::from_le_bytes)),
            ValueType::F64 => Array::F64(decode(&cur.bytes(count * 8)?, f64::from_le_bytes)),
            ValueType::Bool => {
                let at = cur.pos();
                let raw = cur.bytes(count)?;
                Array::Bool(raw.iter().zip(at..).map(|(&b, offset)| to_bool(b, offset)).collect::<Result<_, _>>()?)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..count {
                    v.push(cur.string(MAX_STRING_LEN, Limit::StringLength)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..count {
                    v.push(self.array(depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    /// Checks an array as [`array`](Self::array) reads it, keeping nothing.
    fn skip_array(&mut self, depth: u32) -> Result<(), GgufError> {
        let (ty, count) = self.array_head(depth)?;
        match ty {
            ValueType::String => {
                for _ in 0..count {
                    self.cur.check_string(MAX_STRING_LEN, Limit::StringLength, &mut self.scratch)?;
                }
            }
            ValueType::Array => {
                for _ in 0..count {
                    self.skip_array(depth + 1)?;
                }
            }
            ValueType::Bool => {
                let at = self.cur.pos();
                self.cur.read_into(count, &mut self.scratch)?;
                if let Some(i) = self.scratch.iter().position(|&b| b > 1) {
                    return Err(GgufError::InvalidBool { offset: at + i as u64, value: self.scratch[i] });
                }
            }
            // Fixed-size numbers (`min_size` is their size): any bytes are a valid value.
            _ => self.cur.skip(count * ty.min_size())?,
        }
        Ok(())
    }

    fn tensor_infos(&mut self, count: u64) -> Result<Vec<RawTensor>, GgufError> {
        // count <= MAX_TENSORS: no overflow.
        self.cur.ensure(count * MIN_TENSOR_INFO_SIZE)?;
        let mut infos = Vec::with_capacity(capacity(count));
        let mut names: HashMap<String, ()> = HashMap::with_capacity(capacity(count));
        for _ in 0..count {
            let at = self.cur.pos();
            let name = self.cur.string(MAX_TENSOR_NAME_LEN, Limit::TensorNameLength)?;
            let n_dims_at = self.cur.pos();
            let n_dims = u64::from(self.cur.u32()?);
            check_limit(Limit::Dimensions, n_dims, MAX_DIMS, n_dims_at)?;
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.cur.u64()?);
            }
            let type_at = self.cur.pos();
            let type_id = self.cur.u32()?;
            let offset = self.cur.u64()?;
            if names.insert(name.clone(), ()).is_some() {
                return Err(GgufError::DuplicateTensor { offset: at, name });
            }
            let Some(ggml_type) = GgmlType::from_u32(type_id) else {
                return Err(GgufError::UnknownGgmlType { offset: type_at, tensor: name, ggml_type: type_id });
            };
            infos.push(RawTensor { name, dims, ggml_type, offset });
        }
        Ok(infos)
    }
}

struct RawTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
}

fn check_limit(what: Limit, count: u64, max: u64, offset: u64) -> Result<(), GgufError> {
    if count > max {
        return Err(GgufError::LimitExceeded { what, count, max, offset });
    }
    Ok(())
}

fn to_bool(byte: u8, offset: u64) -> Result<bool, GgufError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool { offset, value }),
    }
}

/// Decodes little-endian values of `N` bytes each; `raw.len()` is a multiple of `N`.
fn decode<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

/// `general.alignment` if present (an unsigned integer: a non-zero power of two
/// no larger than `u32::MAX`), else [`DEFAULT_ALIGNMENT`].
fn alignment(metadata: &[(String, Value)], index: &HashMap<String, usize>) -> Result<u64, GgufError> {
    let Some(&i) = index.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let value = &metadata[i].1;
    let alignment = match value {
        Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => value.as_u64(),
        _ => None,
    };
    let Some(alignment) = alignment else {
        return Err(GgufError::WrongMetadataType {
            key: ALIGNMENT_KEY.to_owned(),
            expected: "an unsigned integer",
            found: value.value_type(),
        });
    };
    if alignment == 0 || !alignment.is_power_of_two() || alignment > u64::from(u32::MAX) {
        return Err(GgufError::InvalidAlignment { alignment });
    }
    Ok(alignment)
}

fn align_up(pos: u64, alignment: u64) -> Option<u64> {
    Some(pos.checked_add(alignment - 1)? & !(alignment - 1))
}

/// Computes sizes and absolute ranges, and checks that every tensor is
/// aligned, inside the file, and disjoint from the others.
fn place_tensors(
    infos: Vec<RawTensor>,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::with_capacity(infos.len());
    for raw in infos {
        let overflow = || GgufError::TensorSizeOverflow { tensor: raw.name.clone() };
        let n_elements = raw
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(overflow)?;
        let ty = raw.ggml_type;
        let row = raw.dims.first().copied().unwrap_or(1);
        if row % ty.block_size() != 0 {
            return Err(GgufError::RowNotBlockAligned {
                tensor: raw.name,
                ggml_type: ty,
                row,
                block_size: ty.block_size(),
            });
        }
        let n_bytes = (n_elements / ty.block_size())
            .checked_mul(ty.type_size())
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(overflow)?;
        if raw.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor { tensor: raw.name, offset: raw.offset, alignment });
        }
        let start = data_offset.checked_add(raw.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(GgufError::TensorOutOfBounds {
                tensor: raw.name,
                start: start.unwrap_or(u64::MAX),
                end: u64::MAX,
                file_len,
            });
        };
        if end > file_len {
            return Err(GgufError::TensorOutOfBounds { tensor: raw.name, start, end, file_len });
        }
        tensors.push(TensorInfo {
            name: raw.name,
            dims: raw.dims,
            ggml_type: ty,
            offset: raw.offset,
            n_elements,
            n_bytes,
            file_range: start..end,
        });
    }

    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| (t.file_range.start, t.file_range.end));
    for pair in order.windows(2) {
        if pair[1].file_range.start < pair[0].file_range.end {
            return Err(GgufError::OverlappingTensors { first: pair[0].name.clone(), second: pair[1].name.clone() });
        }
    }
    Ok(tensors)
}
