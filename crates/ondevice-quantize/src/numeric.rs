//! Element conversions done by the converter: safetensors F32/F16/BF16/F64 → `f32`, and `f32` rows →
//! GGUF F32, F16, BF16 or Q8_0 bytes, each bit for bit as ggml (and llama.cpp's Python converter)
//! does it, so a conversion gives the same bytes as the reference and the same bytes every time.

use ondevice_gguf::{Dtype, GgmlType};

/// Elements per Q8_0 block.
pub(crate) const QK8_0: usize = 32;

/// `f32` → IEEE half, rounding to nearest even (as numpy's `astype(float16)` and ggml's
/// `GGML_FP32_TO_FP16`); NaN keeps its high payload bits, as numpy does.
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        if man == 0 {
            return sign | 0x7c00;
        }
        let mut h = 0x7c00u16 + (man >> 13) as u16;
        if h == 0x7c00 {
            h += 1;
        }
        return sign | h;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        // A carry into the exponent is correct, up to infinity.
        r += 1;
    }
    sign | r as u16
}

/// IEEE half → `f32`, exact.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let shift = man.leading_zeros() - 21;
            let man = (man << shift) & 0x3ff;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// `f32` → bfloat16, rounding to nearest even; NaN becomes a quiet NaN (as llama.cpp's converter).
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return (((n & 0xffff_0000) | (64 << 16)) >> 16) as u16;
    }
    (n.wrapping_add(0x7fff + ((n >> 16) & 1)) >> 16) as u16
}

/// One element of a safetensors tensor as `f32`; `bytes` has exactly the dtype's size.
pub(crate) fn element_to_f32(dtype: Dtype, bytes: &[u8]) -> f32 {
    match dtype {
        Dtype::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        Dtype::F16 => f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])),
        Dtype::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([bytes[0], bytes[1]])) << 16),
        Dtype::F64 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            f64::from_le_bytes(b) as f32
        }
        // The plan only admits the dtypes above.
        _ => f32::NAN,
    }
}

/// Whether the converter reads this dtype.
pub(crate) fn readable(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Appends `row` encoded as `ty` (F32, F16, BF16 or Q8_0) to `out`. For Q8_0 the row length is a
/// multiple of 32 (checked by the plan).
pub(crate) fn encode_row(ty: GgmlType, row: &[f32], out: &mut Vec<u8>) {
    match ty {
        GgmlType::F16 => out.extend(row.iter().flat_map(|&x| f32_to_f16(x).to_le_bytes())),
        GgmlType::BF16 => out.extend(row.iter().flat_map(|&x| f32_to_bf16(x).to_le_bytes())),
        GgmlType::Q8_0 => {
            for block in row.chunks_exact(QK8_0) {
                quantize_q8_0_block(block, out);
            }
        }
        _ => out.extend(row.iter().flat_map(|&x| x.to_le_bytes())),
    }
}

/// ggml's `quantize_row_q8_0_ref` for one block of 32: scale `d = max|x| / 127` stored as f16,
/// then `roundf(x / d)` (half away from zero) as `i8`.
fn quantize_q8_0_block(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_every_half() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x} → {f}");
            }
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        // 1 + 2^-11 is halfway between 1 and the next half: ties go to even (1).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        // 1 + 3 * 2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even).
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds up to infinity");
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0, "the tie below the smallest subnormal goes to zero");
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.5), 1);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80, "tie to even");
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82, "tie to even");
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(f32::from_bits(u32::from(f32_to_bf16(f32::NAN)) << 16).is_nan());
    }

    #[test]
    fn q8_0_matches_ggml_reference() {
        let row: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 0.25).collect();
        let mut out = Vec::new();
        encode_row(GgmlType::Q8_0, &row, &mut out);
        assert_eq!(out.len(), 34);
        let d = f16_to_f32(u16::from_le_bytes([out[0], out[1]]));
        assert!((d - 3.875 / 127.0).abs() < 1e-5);
        assert_eq!(out[2] as i8, -127);
        assert_eq!(out[33] as i8, 127);
        // 0.125 / (3.875/127) = 4.0967... → 4
        assert_eq!(out[2 + 16] as i8, 4);
        let zeros = vec![0.0; 32];
        out.clear();
        encode_row(GgmlType::Q8_0, &zeros, &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }
}
