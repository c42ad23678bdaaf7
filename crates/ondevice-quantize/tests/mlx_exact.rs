//! `ondevice_quantize::mlx::quantize` against MLX itself: the same float tensors (F32, F16 and BF16;
//! random values of several magnitudes, constant, all-positive and all-negative groups, ties) are
//! quantized by `mlx.core.quantize` on the CPU (`tests/mlx/reference.py`) for every bits (2, 3, 4,
//! 5, 6, 8) and group size (32, 64, 128), and the packed weights, scales and biases must be the same
//! bytes. Needs `python3` with `mlx` (`pip install "mlx[cpu]"`): skipped with a note without it,
//! a failure under `CI`.

// The reference is MLX itself, a Python peer the test runs (as other tests run their peers).
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::process::Command;

use ondevice_gguf::{Dtype, SafetensorsHeader};
use ondevice_quantize::mlx::{FloatType, MlxOptions, quantize};
use serde_json::json;

/// Whether `python3` can import `modules`; without it, a note (or a failure under CI).
pub fn python_has(test: &str, modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3 cannot import {modules} (scripts/test.sh installs it)"
        );
        eprintln!("{test}: skipped: python3 cannot import {modules} (pip install \"mlx[cpu]\" mlx-lm)");
    }
    ok
}

/// Name, dtype, shape, the values (exact in the dtype) and their bytes.
type Input = (String, FloatType, Vec<u64>, Vec<f32>, Vec<u8>);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly normal, mean 0, deviation 1.
    fn normal(&mut self) -> f32 {
        (0..12).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32).sum::<f32>() - 6.0
    }
}

fn encode(dtype: FloatType, values: &[f32]) -> (Vec<f32>, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut exact = Vec::new();
    for &x in values {
        match dtype {
            FloatType::F32 => {
                bytes.extend_from_slice(&x.to_le_bytes());
                exact.push(x);
            }
            FloatType::BF16 => {
                let n = x.to_bits();
                let b = (n.wrapping_add(0x7fff + ((n >> 16) & 1)) >> 16) as u16;
                bytes.extend_from_slice(&b.to_le_bytes());
                exact.push(f32::from_bits(u32::from(b) << 16));
            }
            FloatType::F16 => {
                let h = to_f16(x);
                bytes.extend_from_slice(&h.to_le_bytes());
                exact.push(support::f16_to_f32(h));
            }
        }
    }
    (exact, bytes)
}

/// A half near `x` (truncated; any valid half will do as input).
fn to_f16(x: f32) -> u16 {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs();
    if a < 2f32.powi(-14) {
        return sign | (a / 2f32.powi(-24)).round().min(1023.0) as u16;
    }
    let bits = a.to_bits();
    let exp = ((bits >> 23) as i32 - 127 + 15).min(30) as u16;
    sign | (exp << 10) | ((bits >> 13) & 0x3ff) as u16
}

fn write_safetensors(path: &Path, tensors: &[(String, FloatType, Vec<u64>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype.safetensors_name(), "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn packed_weights_scales_and_biases_equal_mlx_core_quantize_for_every_bits_and_group_size() {
    let test = "mlx_core_quantize";
    if !python_has(test, "mlx.core") {
        return;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inputs: Vec<Input> = Vec::new();
    for (i, dtype) in [FloatType::F32, FloatType::F16, FloatType::BF16].into_iter().enumerate() {
        for (j, scale) in [0.02f32, 1.0, 300.0].into_iter().enumerate() {
            let (rows, cols) = (6 + i as u64, 384u64);
            let mut values: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * scale).collect();
            // Special groups in the first row: zeros, a constant, all positive, all negative,
            // tiny values (the scale floor), and values on exact half steps.
            values[..32].fill(0.0);
            values[32..64].fill(0.75 * scale);
            for v in &mut values[64..128] {
                *v = v.abs() + scale;
            }
            for v in &mut values[128..192] {
                *v = -v.abs() - scale;
            }
            for v in &mut values[192..256] {
                *v *= 1e-9;
            }
            for (k, v) in values[256..384].iter_mut().enumerate() {
                *v = (k as f32 - 64.0) * 0.5;
            }
            let (exact, bytes) = encode(dtype, &values);
            inputs.push((format!("t{i}{j}"), dtype, vec![rows, cols], exact, bytes));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.safetensors");
    let output = tmp.path().join("out.safetensors");
    let tensors: Vec<_> = inputs.iter().map(|(n, d, s, _, b)| (n.clone(), *d, s.clone(), b.clone())).collect();
    write_safetensors(&input, &tensors);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlx/reference.py");
    let run = Command::new("python3").arg(&script).arg(&input).arg(&output).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    println!("{}", String::from_utf8_lossy(&run.stdout).trim());

    let header = SafetensorsHeader::open(&output).unwrap();
    let data = std::fs::read(&output).unwrap();
    let tensor = |name: &str| {
        let t = header.tensors().iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("{name} missing"));
        let r = t.file_range();
        (t.dtype(), t.shape().to_vec(), &data[r.start as usize..r.end as usize])
    };
    let mut compared = 0;
    for (name, dtype, shape, exact, _) in &inputs {
        for bits in [2, 3, 4, 5, 6, 8] {
            for group in [32, 64, 128] {
                let ours = quantize(exact, *dtype, MlxOptions::new(bits, group).unwrap()).unwrap();
                let key = format!("{name}.b{bits}.g{group}");
                let (wd, ws, w) = tensor(&format!("{key}.weight"));
                assert_eq!(wd, Dtype::U32, "{key}");
                assert_eq!(ws, vec![shape[0], shape[1] * u64::from(bits) / 32], "{key}");
                let (sd, _, s) = tensor(&format!("{key}.scales"));
                assert_eq!(sd.name(), dtype.safetensors_name(), "{key}");
                let (_, _, b) = tensor(&format!("{key}.biases"));
                if let Some(i) = ours.weight.iter().zip(w).position(|(a, b)| a != b) {
                    panic!("{key}: packed weights differ first at byte {i} ({} vs mlx {})", ours.weight[i], w[i]);
                }
                assert_eq!(ours.weight.len(), w.len(), "{key}");
                assert!(ours.scales == s, "{key}: scales differ");
                assert!(ours.biases == b, "{key}: biases differ");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 9 * 6 * 3);
}
