//! The safetensors header reader.
//!
//! A safetensors file is a `u64` little-endian header length `N`, `N` bytes of
//! JSON, then the data section. The JSON maps tensor names to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the
//! data section) plus an optional `"__metadata__"` map of strings. Like the
//! reference implementation, this reader requires the tensors to tile the data
//! section exactly: no overlaps, no holes, no trailing bytes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};

use crate::limits::MAX_SAFETENSORS_HEADER_LEN;

/// A safetensors element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    BOOL,
    /// 4-bit float (e2m1).
    F4,
    /// 6-bit float (e2m3).
    F6_E2M3,
    /// 6-bit float (e3m2).
    F6_E3M2,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// 8-bit float (e5m2).
    F8_E5M2,
    /// 8-bit float (e4m3).
    F8_E4M3,
    /// 8-bit exponent-only scale (e8m0).
    F8_E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// Half-precision float.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Single-precision float.
    F32,
    /// Complex of two single-precision floats.
    C64,
    /// Double-precision float.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

const DTYPES: &[(Dtype, &str, u64)] = &[
    (Dtype::BOOL, "BOOL", 8),
    (Dtype::F4, "F4", 4),
    (Dtype::F6_E2M3, "F6_E2M3", 6),
    (Dtype::F6_E3M2, "F6_E3M2", 6),
    (Dtype::U8, "U8", 8),
    (Dtype::I8, "I8", 8),
    (Dtype::F8_E5M2, "F8_E5M2", 8),
    (Dtype::F8_E4M3, "F8_E4M3", 8),
    (Dtype::F8_E8M0, "F8_E8M0", 8),
    (Dtype::I16, "I16", 16),
    (Dtype::U16, "U16", 16),
    (Dtype::F16, "F16", 16),
    (Dtype::BF16, "BF16", 16),
    (Dtype::I32, "I32", 32),
    (Dtype::U32, "U32", 32),
    (Dtype::F32, "F32", 32),
    (Dtype::C64, "C64", 64),
    (Dtype::F64, "F64", 64),
    (Dtype::I64, "I64", 64),
    (Dtype::U64, "U64", 64),
];

impl Dtype {
    /// The dtype with this name (as written in headers, e.g. `BF16`).
    pub fn from_name(name: &str) -> Option<Self> {
        DTYPES.iter().find(|(_, n, _)| *n == name).map(|(d, _, _)| *d)
    }

    fn entry(self) -> &'static (Dtype, &'static str, u64) {
        DTYPES.iter().find(|(d, _, _)| *d == self).unwrap_or(&DTYPES[0])
    }

    /// The name as written in headers.
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// Bits per element.
    pub fn bits(self) -> u64 {
        self.entry().2
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong while reading a safetensors header.
///
/// Offsets in tensor errors are relative to the data section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// The file could not be opened or its size read.
    #[error("cannot open safetensors file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading the named file failed; `source` says why.
    #[error("invalid safetensors file {}: {source}", path.display())]
    WithPath {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: Box<SafetensorsError>,
    },
    /// Reading failed.
    #[error("read error: {source}")]
    Io {
        /// The underlying error.
        source: io::Error,
    },
    /// The file is shorter than the 8-byte header length, or than it claims.
    #[error("file is truncated: {needed} bytes needed but the file has {file_len}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// The file size.
        file_len: u64,
    },
    /// The declared header length is over [`MAX_SAFETENSORS_HEADER_LEN`].
    #[error("header length {len} is over the limit of {max} bytes")]
    HeaderTooLarge {
        /// The declared length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The declared header length is larger than the file.
    #[error("header length {len} does not fit in a file of {file_len} bytes")]
    HeaderExceedsFile {
        /// The declared length.
        len: u64,
        /// The file size.
        file_len: u64,
    },
    /// The header is not valid JSON of the expected shape.
    #[error("header is not valid safetensors json: {source}")]
    InvalidJson {
        /// The parse error.
        source: serde_json::Error,
    },
    /// A key appears twice in the header.
    #[error("duplicate tensor name {name:?} in the header")]
    DuplicateTensor {
        /// The key.
        name: String,
    },
    /// A tensor's dtype is not a known safetensors dtype.
    #[error("tensor {tensor:?} has unknown dtype {dtype:?}")]
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The declared dtype.
        dtype: String,
    },
    /// A tensor's element count or size overflows.
    #[error("tensor {tensor:?} shape {shape:?} is too large: its size overflows")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// The declared shape.
        shape: Vec<u64>,
    },
    /// A sub-byte tensor does not end on a byte boundary.
    #[error("tensor {tensor:?} of {dtype} with {n_elements} elements does not fill whole bytes")]
    PartialByte {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its element count.
        n_elements: u64,
    },
    /// A tensor's `data_offsets` end before they begin.
    #[error("tensor {tensor:?} has data_offsets [{begin}, {end}] that end before they begin")]
    InvalidOffsets {
        /// The tensor.
        tensor: String,
        /// Declared begin.
        begin: u64,
        /// Declared end.
        end: u64,
    },
    /// A tensor's byte range does not match its dtype and shape.
    #[error("tensor {tensor:?} spans {actual} bytes but its dtype and shape need {expected}")]
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes its dtype and shape need.
        expected: u64,
        /// Bytes its offsets span.
        actual: u64,
    },
    /// A tensor's range ends past the data section.
    #[error("tensor {tensor:?} ends at {end}, past the data section of {data_len} bytes")]
    OutOfBounds {
        /// The tensor.
        tensor: String,
        /// Declared end.
        end: u64,
        /// Size of the data section.
        data_len: u64,
    },
    /// Two tensors' ranges overlap.
    #[error("tensor {tensor:?} overlaps tensor {previous:?}")]
    Overlap {
        /// The tensor that starts inside another.
        tensor: String,
        /// The tensor it starts inside.
        previous: String,
    },
    /// Bytes of the data section belong to no tensor.
    #[error("data section bytes {start}..{end} belong to no tensor")]
    Hole {
        /// Start of the gap.
        start: u64,
        /// End of the gap.
        end: u64,
    },
}

/// One tensor in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    n_elements: u64,
    data_offsets: Range<u64>,
    data_start: u64,
}

impl SafetensorsTensor {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shape, outermost dimension first.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Byte range relative to the data section.
    pub fn data_offsets(&self) -> Range<u64> {
        self.data_offsets.clone()
    }

    /// Absolute byte range in the file.
    pub fn file_range(&self) -> Range<u64> {
        self.data_start + self.data_offsets.start..self.data_start + self.data_offsets.end
    }
}

/// The validated header of a safetensors file.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    metadata: BTreeMap<String, String>,
    tensors: Vec<SafetensorsTensor>,
    header_len: u64,
    file_len: u64,
}

impl SafetensorsHeader {
    /// Reads and validates the header of the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let open_error = |source| SafetensorsError::Open { path: path.to_owned(), source };
        let file = File::open(path).map_err(open_error)?;
        let file_len = file.metadata().map_err(open_error)?.len();
        Self::read_from(BufReader::new(file), file_len)
            .map_err(|e| SafetensorsError::WithPath { path: path.to_owned(), source: Box::new(e) })
    }

    /// Parses a whole safetensors file held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Self, SafetensorsError> {
        Self::read_from(bytes, bytes.len() as u64)
    }

    /// Reads the header from `reader`, positioned at the start of a file of
    /// `file_len` bytes; reads only the header.
    pub fn read_from<R: Read>(mut reader: R, file_len: u64) -> Result<Self, SafetensorsError> {
        if file_len < 8 {
            return Err(SafetensorsError::Truncated { needed: 8, file_len });
        }
        let mut len_bytes = [0u8; 8];
        read_exact(&mut reader, &mut len_bytes, 8, file_len)?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_SAFETENSORS_HEADER_LEN {
            return Err(SafetensorsError::HeaderTooLarge { len: header_len, max: MAX_SAFETENSORS_HEADER_LEN });
        }
        if header_len > file_len - 8 {
            return Err(SafetensorsError::HeaderExceedsFile { len: header_len, file_len });
        }
        let mut json = Vec::new();
        let read = reader.take(header_len).read_to_end(&mut json).map_err(|source| SafetensorsError::Io { source })?;
        if (read as u64) < header_len {
            return Err(SafetensorsError::Truncated { needed: 8 + header_len, file_len });
        }
        let raw: RawHeader =
            serde_json::from_slice(&json).map_err(|source| SafetensorsError::InvalidJson { source })?;
        let data_len = file_len - 8 - header_len;
        let tensors = validate(raw.tensors, raw.duplicate, 8 + header_len, data_len)?;
        Ok(SafetensorsHeader { metadata: raw.metadata.unwrap_or_default(), tensors, header_len, file_len })
    }

    /// The `__metadata__` map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensors in data order.
    pub fn tensors(&self) -> &[SafetensorsTensor] {
        &self.tensors
    }

    /// Length of the JSON header.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        8 + self.header_len
    }

    /// The size of the file the header was read from.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Sum of all tensors' element counts.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().fold(0u64, |acc, t| acc.saturating_add(t.n_elements))
    }
}

fn read_exact<R: Read>(reader: &mut R, buf: &mut [u8], needed: u64, file_len: u64) -> Result<(), SafetensorsError> {
    reader.read_exact(buf).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            SafetensorsError::Truncated { needed, file_len }
        } else {
            SafetensorsError::Io { source }
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

struct RawHeader {
    metadata: Option<BTreeMap<String, String>>,
    tensors: Vec<(String, RawTensor)>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut header = RawHeader { metadata: None, tensors: Vec::new(), duplicate: None };
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                header.duplicate.get_or_insert(key);
                map.next_value::<IgnoredAny>()?;
            } else if key == "__metadata__" {
                header.metadata = Some(map.next_value()?);
            } else {
                let tensor = map.next_value()?;
                header.tensors.push((key, tensor));
            }
        }
        Ok(header)
    }
}

fn validate(
    raw: Vec<(String, RawTensor)>,
    duplicate: Option<String>,
    data_start: u64,
    data_len: u64,
) -> Result<Vec<SafetensorsTensor>, SafetensorsError> {
    if let Some(name) = duplicate {
        return Err(SafetensorsError::DuplicateTensor { name });
    }
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, t) in raw {
        let Some(dtype) = Dtype::from_name(&t.dtype) else {
            return Err(SafetensorsError::UnknownDtype { tensor: name, dtype: t.dtype });
        };
        let n_elements = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let bits = n_elements.and_then(|n| n.checked_mul(dtype.bits()));
        let (Some(n_elements), Some(bits)) = (n_elements, bits) else {
            return Err(SafetensorsError::ShapeOverflow { tensor: name, shape: t.shape });
        };
        if bits % 8 != 0 {
            return Err(SafetensorsError::PartialByte { tensor: name, dtype, n_elements });
        }
        let [begin, end] = t.data_offsets;
        if end < begin {
            return Err(SafetensorsError::InvalidOffsets { tensor: name, begin, end });
        }
        if end - begin != bits / 8 {
            return Err(SafetensorsError::SizeMismatch { tensor: name, expected: bits / 8, actual: end - begin });
        }
        if end > data_len {
            return Err(SafetensorsError::OutOfBounds { tensor: name, end, data_len });
        }
        tensors.push(SafetensorsTensor {
            name,
            dtype,
            shape: t.shape,
            n_elements,
            data_offsets: begin..end,
            data_start,
        });
    }

    tensors.sort_by(|a, b| {
        (a.data_offsets.start, a.data_offsets.end, &a.name).cmp(&(b.data_offsets.start, b.data_offsets.end, &b.name))
    });
    let mut covered = 0u64;
    let mut previous: Option<&str> = None;
    for t in &tensors {
        let Range { start, end } = t.data_offsets;
        if start < covered {
            return Err(SafetensorsError::Overlap {
                tensor: t.name.clone(),
                previous: previous.unwrap_or_default().to_owned(),
            });
        }
        if start > covered {
            return Err(SafetensorsError::Hole { start: covered, end: start });
        }
        covered = end;
        previous = Some(&t.name);
    }
    if covered != data_len {
        return Err(SafetensorsError::Hole { start: covered, end: data_len });
    }
    Ok(tensors)
}
