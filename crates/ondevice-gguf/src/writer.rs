//! Writes GGUF files in memory, to build test models and hostile test inputs
//! (real output goes through the validating, streaming [`crate::GgufHeader`]).
//!
//! The writer does not validate: it writes what it is told, so tests can build
//! broken files (misaligned or overlapping tensors, unknown types, bad
//! alignment) as easily as valid ones. Tensors added with
//! [`GgufWriter::tensor`] are laid out correctly; [`GgufWriter::raw_tensor`]
//! writes a tensor info verbatim.

use crate::ggml::GgmlType;
use crate::gguf::DEFAULT_ALIGNMENT;
use crate::value::{Array, Value};

/// Builds a GGUF file in memory.
///
/// ```
/// use ondevice_gguf::{GgmlType, GgufFile, Value, writer::GgufWriter};
///
/// let bytes = GgufWriter::new()
///     .metadata("general.architecture", Value::String("llama".into()))
///     .tensor("w", &[4], GgmlType::F32, vec![0; 16])
///     .to_bytes();
/// let file = GgufFile::parse(&bytes).unwrap();
/// assert_eq!(file.architecture(), Some("llama"));
/// assert_eq!(file.parameter_count(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    trailing: Vec<u8>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    placement: Placement,
}

#[derive(Debug, Clone)]
enum Placement {
    /// Laid out by the writer, after the previous laid-out tensor.
    Data(Vec<u8>),
    /// Written with this offset and no data.
    Raw(u64),
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file.
    pub fn new() -> Self {
        GgufWriter { version: 3, metadata: Vec::new(), tensors: Vec::new(), trailing: Vec::new() }
    }

    /// Sets the version field.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Appends a metadata entry (duplicates are written as given).
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Appends a tensor whose data the writer places, aligned, after the
    /// previous placed tensor.
    pub fn tensor(mut self, name: impl Into<String>, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id: ggml_type.id(),
            placement: Placement::Data(data),
        });
        self
    }

    /// Appends a tensor info written verbatim, with no data.
    pub fn raw_tensor(mut self, name: impl Into<String>, dims: &[u64], type_id: u32, offset: u64) -> Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id,
            placement: Placement::Raw(offset),
        });
        self
    }

    /// Bytes appended after the placed tensors' data.
    pub fn trailing_data(mut self, bytes: Vec<u8>) -> Self {
        self.trailing.extend(bytes);
        self
    }

    /// The alignment used for layout: `general.alignment` if it is an unsigned
    /// power of two up to 64 KiB, else the default (so a test can declare a
    /// hostile alignment without the writer padding by gigabytes).
    fn layout_alignment(&self) -> u64 {
        self.metadata
            .iter()
            .rev()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| match v {
                Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => v.as_u64(),
                _ => None,
            })
            .filter(|a| a.is_power_of_two() && *a <= 1 << 16)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Encodes the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.layout_alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_string(&mut out, key);
            encode_value(&mut out, value);
        }

        let mut next = 0u64;
        for t in &self.tensors {
            let offset = match &t.placement {
                Placement::Data(data) => {
                    let offset = next.next_multiple_of(alignment);
                    next = offset + data.len() as u64;
                    offset
                }
                Placement::Raw(offset) => *offset,
            };
            encode_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }

        pad_to(&mut out, alignment);
        let data_start = out.len();
        for t in &self.tensors {
            if let Placement::Data(data) = &t.placement {
                let rel = (out.len() - data_start) as u64;
                let padded = rel.next_multiple_of(alignment);
                out.resize(data_start + padded as usize, 0);
                out.extend_from_slice(data);
            }
        }
        out.extend_from_slice(&self.trailing);
        out
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).next_multiple_of(alignment);
    out.resize(len as usize, 0);
}

/// Appends a GGUF string: `u64` length, then the bytes.
pub fn encode_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends a metadata value: `u32` type tag, then the payload.
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(&value.value_type().id().to_le_bytes());
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => encode_string(out, s),
        Value::Array(a) => encode_array(out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Appends an array payload: `u32` element type, `u64` count, elements.
pub fn encode_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    fn each<T>(out: &mut Vec<u8>, items: &[T], f: impl Fn(&mut Vec<u8>, &T)) {
        for item in items {
            f(out, item);
        }
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U16(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => each(out, v, |o, x| o.push(u8::from(*x))),
        Array::String(v) => each(out, v, |o, x| encode_string(o, x)),
        Array::Array(v) => each(out, v, encode_array),
        Array::U64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
    }
}
