//! Distance kernels for the HNSW index, chosen at run time from the CPU's features, and how the
//! index stores its vectors.
//!
//! The `usearch` crate is built without its SIMD kernel library (`numkong`, slow to compile on
//! small machines), so its own distances are portable loops: on x86-64 the baseline is SSE2,
//! four floats at a time. A graph walk is mostly distance computations (about `ef × M` of them a
//! query), each reading a stored vector the walk has not touched before, so it waits on memory
//! more than it computes. On a CPU with AVX2 and FMA the index is given these kernels instead:
//! eight floats at a time with fused multiply-adds and independent accumulators. The metric is not
//! saved in the index file: every index is given the kernel again after it is loaded. Other CPUs
//! keep usearch's built-in distances.
//!
//! Cosine collections keep unit vectors in the index ([`unit`]; SQLite keeps the embeddings as
//! given) and queries are made unit too, so the cosine distance `1 − a·b / (|a||b|)` is `1 − a·b`:
//! one product a dimension instead of three, as faiss does with inner product on normalized
//! vectors. Unit vectors have every component in [-1, 1], so the index stores them as IEEE half
//! floats ([`scalar_kind`]): half the bytes a distance reads, 11 significant bits a component
//! (a relative error under 2⁻¹¹, a few 10⁻⁴ on a distance at most and about 10⁻⁵ typically). A
//! query re-scores its hits with the exact `f32` embeddings from SQLite, so the scores and the
//! order it answers with are exact; the half floats only steer the graph walk. On a CPU with F16C
//! the kernel widens eight halves at a time in registers. Inner product and squared L2 take any
//! magnitude, so those collections keep `f32` and are computed as usearch computes them. Results
//! match usearch's own up to that rounding.

use ondevice_vector::Distance;
use usearch::{Index, ScalarKind};

/// How the index stores a collection's vectors: half floats for cosine (unit vectors), `f32`
/// otherwise (see the module docs).
pub(crate) fn scalar_kind(distance: Distance) -> ScalarKind {
    match distance {
        Distance::Cosine => ScalarKind::F16,
        Distance::Dot | Distance::L2 => ScalarKind::F32,
    }
}

/// Which kernels an index is given on this CPU.
pub(crate) fn kernel_name() -> &'static str {
    match (simd_available(), f16c_available()) {
        (true, true) => "avx2+fma+f16c (cosine: f16 storage)",
        (true, false) => "avx2+fma (cosine: f16 storage, usearch's portable f16 kernel)",
        _ => "usearch built-in (portable; cosine: f16 storage)",
    }
}

#[cfg(target_arch = "x86_64")]
fn f16c_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| simd_available() && is_x86_feature_detected!("f16c"))
}

#[cfg(not(target_arch = "x86_64"))]
fn f16c_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn simd_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_available() -> bool {
    false
}

/// The vector as the index holds it: scaled to unit length for cosine (a zero vector stays zero),
/// as given otherwise.
pub(crate) fn unit(distance: Distance, mut v: Vec<f32>) -> Vec<f32> {
    if distance == Distance::Cosine {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v
}

/// Gives `index` (made with [`scalar_kind`]`(distance)`) this CPU's kernel for `distance` over
/// `dim`-component vectors (no change when the CPU has none). Call again after every `load`,
/// which resets the metric to usearch's built-in one.
pub(crate) fn install(index: &mut Index, distance: Distance, dim: usize) {
    #[cfg(target_arch = "x86_64")]
    match distance {
        // Unit vectors (see `unit`) as half floats: cosine distance is 1 − a·b.
        Distance::Cosine if f16c_available() => {
            // SAFETY: usearch calls the metric with two vectors of the index's dimension, `dim`
            // half floats each (the index stores F16), and the CPU has AVX2, FMA and F16C.
            let f: Box<dyn Fn(*const usearch::f16, *const usearch::f16) -> f32 + Send + Sync> =
                Box::new(move |a, b| unsafe { 1.0 - x86::dot_f16(a.cast(), b.cast(), dim) });
            index.change_metric::<usearch::f16>(f);
        }
        Distance::Cosine => {}
        Distance::Dot | Distance::L2 if simd_available() => {
            // SAFETY (of the closures): usearch calls the metric with two vectors of the index's
            // dimension, `dim` floats each, and the CPU has AVX2 and FMA (checked above).
            let f: Box<dyn Fn(*const f32, *const f32) -> f32 + Send + Sync> = match distance {
                Distance::L2 => Box::new(move |a, b| unsafe { x86::l2sq(a, b, dim) }),
                _ => Box::new(move |a, b| unsafe { 1.0 - x86::dot(a, b, dim) }),
            };
            index.change_metric::<f32>(f);
        }
        Distance::Dot | Distance::L2 => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (index, distance, dim);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// `a·b`.
    ///
    /// # Safety
    /// `a` and `b` point to `dim` floats each; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: *const f32, b: *const f32, dim: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads floats below `dim`.
        unsafe {
            while i + 16 <= dim {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + 8)), _mm256_loadu_ps(b.add(i + 8)), s1);
                i += 16;
            }
            if i + 8 <= dim {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(s0, s1));
            while i < dim {
                s += *a.add(i) * *b.add(i);
                i += 1;
            }
            s
        }
    }

    /// `a·b` over half floats (IEEE binary16 bits).
    ///
    /// # Safety
    /// `a` and `b` point to `dim` half floats each; the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(a: *const u16, b: *const u16, dim: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads halves below `dim` (the tail goes through zero-padded copies).
        unsafe {
            let load = |p: *const u16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
            while i + 16 <= dim {
                s0 = _mm256_fmadd_ps(load(a.add(i)), load(b.add(i)), s0);
                s1 = _mm256_fmadd_ps(load(a.add(i + 8)), load(b.add(i + 8)), s1);
                i += 16;
            }
            if i + 8 <= dim {
                s0 = _mm256_fmadd_ps(load(a.add(i)), load(b.add(i)), s0);
                i += 8;
            }
            if i < dim {
                let (mut ta, mut tb) = ([0u16; 8], [0u16; 8]);
                std::ptr::copy_nonoverlapping(a.add(i), ta.as_mut_ptr(), dim - i);
                std::ptr::copy_nonoverlapping(b.add(i), tb.as_mut_ptr(), dim - i);
                s1 = _mm256_fmadd_ps(load(ta.as_ptr()), load(tb.as_ptr()), s1);
            }
            hsum(_mm256_add_ps(s0, s1))
        }
    }

    /// `Σ (a − b)²`.
    ///
    /// # Safety
    /// `a` and `b` point to `dim` floats each; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn l2sq(a: *const f32, b: *const f32, dim: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads floats below `dim`.
        unsafe {
            while i + 16 <= dim {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)));
                let d1 = _mm256_sub_ps(_mm256_loadu_ps(a.add(i + 8)), _mm256_loadu_ps(b.add(i + 8)));
                s0 = _mm256_fmadd_ps(d0, d0, s0);
                s1 = _mm256_fmadd_ps(d1, d1, s1);
                i += 16;
            }
            if i + 8 <= dim {
                let d = _mm256_sub_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)));
                s0 = _mm256_fmadd_ps(d, d, s0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(s0, s1));
            while i < dim {
                let d = *a.add(i) - *b.add(i);
                s += d * d;
                i += 1;
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(distance: Distance, a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        match distance {
            Distance::Cosine => {
                let (na, nb) = (a.iter().map(|x| x * x).sum::<f32>(), b.iter().map(|x| x * x).sum::<f32>());
                if na == 0.0 || nb == 0.0 { 1.0 } else { 1.0 - dot / (na.sqrt() * nb.sqrt()) }
            }
            Distance::Dot => 1.0 - dot,
            Distance::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        }
    }

    /// Within `tol` relative (absolute below 1).
    fn close(x: f32, y: f32, tol: f32) -> bool {
        (x - y).abs() <= tol * x.abs().max(1.0)
    }

    /// How far the index's distances may be from exact ones: half floats for cosine.
    fn tolerance(distance: Distance) -> f32 {
        if scalar_kind(distance) == ScalarKind::F16 { 2e-3 } else { 1e-4 }
    }

    /// IEEE binary16 bits of `x`, rounded to nearest even (normal range; enough for unit vectors).
    fn f16_bits(x: f32) -> u16 {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        if exp <= 0 {
            // Subnormal or zero in half precision.
            let m = (b & 0x7f_ffff) | 0x80_0000;
            let shift = (14 - exp) as u32;
            if shift > 24 {
                return sign;
            }
            let half = m >> shift;
            let rem = m & ((1 << shift) - 1);
            let mid = 1 << (shift - 1);
            let r = if rem > mid || (rem == mid && half & 1 == 1) { half + 1 } else { half };
            return sign | r as u16;
        }
        let m = b & 0x7f_ffff;
        let mut h = ((exp as u32) << 10) | (m >> 13);
        let rem = m & 0x1fff;
        if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
            h += 1;
        }
        sign | h as u16
    }

    /// The kernels (on the vectors as the index holds them) agree with plain loops for every
    /// length around the vector widths, and an index given them finds the same nearest
    /// neighbours, with the same distances up to the storage's rounding, as usearch's own metric
    /// on the raw `f32` vectors.
    #[test]
    fn kernels_match_plain_loops_and_usearch() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        #[cfg(target_arch = "x86_64")]
        if simd_available() {
            for dim in [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 384, 385] {
                let a: Vec<f32> = (0..dim).map(|_| next() * 3.0).collect();
                let b: Vec<f32> = (0..dim).map(|_| next()).collect();
                let zero = vec![0f32; dim];
                for (x, y) in [(&a, &b), (&a, &zero)] {
                    for distance in [Distance::Cosine, Distance::Dot, Distance::L2] {
                        let (ux, uy) = (unit(distance, x.clone()), unit(distance, y.clone()));
                        // SAFETY: both hold `dim` floats; the CPU has AVX2 and FMA.
                        let got = unsafe {
                            match distance {
                                Distance::Cosine | Distance::Dot => 1.0 - x86::dot(ux.as_ptr(), uy.as_ptr(), dim),
                                Distance::L2 => x86::l2sq(ux.as_ptr(), uy.as_ptr(), dim),
                            }
                        };
                        let want = reference(distance, x, y);
                        assert!(close(got, want, 1e-4), "{distance:?} dim {dim}: {got} vs {want}");
                        if distance == Distance::Cosine && f16c_available() {
                            let hx: Vec<u16> = ux.iter().map(|v| f16_bits(*v)).collect();
                            let hy: Vec<u16> = uy.iter().map(|v| f16_bits(*v)).collect();
                            // SAFETY: both hold `dim` halves; the CPU has AVX2, FMA and F16C.
                            let got = unsafe { 1.0 - x86::dot_f16(hx.as_ptr(), hy.as_ptr(), dim) };
                            assert!(close(got, want, 2e-3), "f16 dim {dim}: {got} vs {want}");
                        }
                    }
                }
            }
        }
        let dim = 64;
        let data: Vec<Vec<f32>> = (0..500).map(|_| (0..dim).map(|_| next() * 2.0).collect()).collect();
        for (distance, kind) in [
            (Distance::Cosine, usearch::MetricKind::Cos),
            (Distance::Dot, usearch::MetricKind::IP),
            (Distance::L2, usearch::MetricKind::L2sq),
        ] {
            let options = |quantization| usearch::IndexOptions {
                dimensions: dim,
                metric: kind,
                quantization,
                ..Default::default()
            };
            let plain = Index::new(&options(ScalarKind::F32)).unwrap();
            let mut fast = Index::new(&options(scalar_kind(distance))).unwrap();
            install(&mut fast, distance, dim);
            plain.reserve(data.len()).unwrap();
            fast.reserve(data.len()).unwrap();
            for (i, v) in data.iter().enumerate() {
                plain.add(i as u64, v).unwrap();
                fast.add(i as u64, &unit(distance, v.clone())).unwrap();
            }
            let q = &data[17];
            let mut want: Vec<(u64, f32)> =
                data.iter().enumerate().map(|(i, v)| (i as u64, reference(distance, q, v))).collect();
            want.sort_by(|a, b| a.1.total_cmp(&b.1));
            want.truncate(10);
            let p = plain.exact_search(q, 10).unwrap();
            let f = fast.exact_search(&unit(distance, q.clone()), 10).unwrap();
            let keys: Vec<u64> = want.iter().map(|w| w.0).collect();
            assert_eq!(f.keys, keys, "{distance:?}: {:?}", want);
            assert_eq!(p.keys, keys, "{distance:?} (usearch's own): {:?} {:?}", p.distances, want);
            for ((x, y), w) in p.distances.iter().zip(&f.distances).zip(&want) {
                assert!(close(*x, w.1, 1e-4), "{distance:?}: usearch {x} vs exact {}", w.1);
                assert!(close(*y, w.1, tolerance(distance)), "{distance:?}: ours {y} vs exact {}", w.1);
            }
        }
    }
}
