//! Shared helpers for the integration tests: small file builders and a
//! deterministic random generator.

#![allow(dead_code)]

use ondevice_gguf::writer::GgufWriter;
use ondevice_gguf::{Array, GgmlType, Value};

/// A small valid GGUF file: one metadata entry of every type and three tensors.
pub fn valid_gguf() -> GgufWriter {
    GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("general.name", Value::String("tiny".into()))
        .metadata("general.license", Value::String("apache-2.0".into()))
        .metadata("general.file_type", Value::U32(3))
        .metadata("llama.context_length", Value::U32(2048))
        .metadata("tokenizer.chat_template", Value::String("{% for m in messages %}{{ m.content }}{% endfor %}".into()))
        .metadata("t.u8", Value::U8(200))
        .metadata("t.i8", Value::I8(-7))
        .metadata("t.u16", Value::U16(65_000))
        .metadata("t.i16", Value::I16(-30_000))
        .metadata("t.i32", Value::I32(-1))
        .metadata("t.f32", Value::F32(1.5))
        .metadata("t.bool", Value::Bool(true))
        .metadata("t.u64", Value::U64(u64::MAX))
        .metadata("t.i64", Value::I64(i64::MIN))
        .metadata("t.f64", Value::F64(-2.25))
        .metadata("t.strings", Value::Array(Array::String(vec!["a".into(), "".into(), "ünï".into()])))
        .metadata("t.f32s", Value::Array(Array::F32(vec![0.5, -1.0])))
        .metadata("t.bools", Value::Array(Array::Bool(vec![true, false])))
        .metadata(
            "t.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2, 3]),
                Array::String(vec!["x".into()]),
                Array::U8(vec![]),
            ])),
        )
        .tensor("token_embd.weight", &[4, 2], GgmlType::F32, pattern(32, 1))
        .tensor("blk.0.attn_q.weight", &[64, 1], GgmlType::Q4_1, pattern(40, 2))
        .tensor("output_norm.weight", &[3], GgmlType::F16, pattern(6, 3))
}

/// `len` bytes that differ per `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// GGUF magic, version 3, and the two counts.
pub fn header(tensor_count: u64, kv_count: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&tensor_count.to_le_bytes());
    out.extend_from_slice(&kv_count.to_le_bytes());
    out
}

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a GGUF string.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A safetensors file: header length, `json`, then `data_len` data bytes.
pub fn safetensors(json: &str, data_len: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend(pattern(data_len, 9));
    out
}

/// xorshift64*: deterministic, so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
