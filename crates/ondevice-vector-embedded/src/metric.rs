//! Distances for the HNSW graph (`hnsw.rs`), with kernels chosen at run time from the CPU's
//! features, and how the graph stores its vectors.
//!
//! Cosine collections keep unit vectors in the graph ([`unit`]; SQLite keeps the embeddings as
//! given) and queries are made unit too, so the cosine distance `1 − a·b / (|a||b|)` is `1 − a·b`:
//! one product a dimension instead of three, as faiss does with inner product on normalized
//! vectors. Unit vectors have every component in [-1, 1], so the graph stores them as IEEE half
//! floats: half the bytes a distance reads, 11 significant bits a component (a relative error
//! under 2⁻¹¹, a few 10⁻⁴ on a distance at most and about 10⁻⁵ typically). A query re-scores its
//! hits with the exact `f32` embeddings from SQLite, so the scores and the order it answers with
//! are exact; the half floats only steer the walk. Inner product and squared L2 take any
//! magnitude, so those collections keep `f32`.
//!
//! On a CPU with AVX2, FMA and F16C the kernels take eight components at a time with fused
//! multiply-adds and two accumulators, widening stored halves in registers; the query stays
//! `f32`. Other CPUs use plain loops (which the compiler vectorizes for the baseline).

use ondevice_vector::Distance;

/// How a graph compares vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// `1 − a·b` over unit vectors stored as half floats.
    Cosine,
    /// `1 − a·b` over `f32`.
    Dot,
    /// `Σ (a − b)²` over `f32`.
    L2,
}

impl Space {
    pub fn of(distance: Distance) -> Space {
        match distance {
            Distance::Cosine => Space::Cosine,
            Distance::Dot => Space::Dot,
            Distance::L2 => Space::L2,
        }
    }

    /// Whether vectors are stored as half floats.
    pub fn half(self) -> bool {
        self == Space::Cosine
    }

    /// The code the index file records.
    pub fn code(self) -> u32 {
        match self {
            Space::Cosine => 1,
            Space::Dot => 2,
            Space::L2 => 3,
        }
    }

    /// A query to a stored half-float vector.
    #[inline]
    pub fn query_half(self, q: &[f32], v: &[u16]) -> f32 {
        debug_assert_eq!(q.len(), v.len());
        1.0 - dot_f32_f16(q, v)
    }

    /// Two stored half-float vectors.
    #[inline]
    pub fn half_half(self, a: &[u16], b: &[u16]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        1.0 - dot_f16(a, b)
    }

    /// Two `f32` vectors.
    #[inline]
    pub fn query_full(self, q: &[f32], v: &[f32]) -> f32 {
        debug_assert_eq!(q.len(), v.len());
        match self {
            Space::L2 => l2sq(q, v),
            Space::Cosine | Space::Dot => 1.0 - dot(q, v),
        }
    }

    /// A vector as the graph compares it: unit for cosine ([`unit`]).
    #[cfg(test)]
    pub fn prepare(self, v: Vec<f32>) -> Vec<f32> {
        match self {
            Space::Cosine => unit(Distance::Cosine, v),
            _ => v,
        }
    }

    /// The exact distance between two raw vectors, in plain loops (for tests).
    #[cfg(test)]
    pub fn reference(self, a: &[f32], b: &[f32]) -> f32 {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        match self {
            Space::Cosine => {
                let (na, nb) = (a.iter().map(|x| x * x).sum::<f32>(), b.iter().map(|x| x * x).sum::<f32>());
                if na == 0.0 || nb == 0.0 { 1.0 } else { 1.0 - d / (na.sqrt() * nb.sqrt()) }
            }
            Space::Dot => 1.0 - d,
            Space::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        }
    }
}

/// Which kernels the graphs use on this CPU.
pub(crate) fn kernel_name() -> &'static str {
    if simd() { "avx2+fma+f16c (cosine: f16 storage)" } else { "portable (cosine: f16 storage)" }
}

#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn simd() -> bool {
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

/// How far apart two distances the index computed may be while their exact order is the other
/// way round: half-float storage changes `a·b` of unit vectors by at most `2⁻¹¹` (each component
/// by a relative `2⁻¹¹`, and `Σ|aᵢ||bᵢ| ≤ 1`), so two distances by twice that; `f32` sums differ
/// by their accumulation order only.
pub(crate) fn rounding(distance: Distance, d: f32) -> f32 {
    match Space::of(distance) {
        s if s.half() => 2.0 / 2048.0 + 1e-5,
        _ => 1e-5 * d.abs().max(1.0),
    }
}

/// IEEE binary16 bits of `x`, rounded to nearest even.
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The value of IEEE binary16 bits.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Asks the CPU to start loading `v` into its caches (a hint: it never faults, and on CPUs
/// without the instruction it does nothing).
#[inline]
pub(crate) fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(v);
        let p = v.as_ptr().cast::<i8>();
        let mut at = 0;
        while at < bytes {
            // SAFETY: a prefetch is a hint that never faults; the address is inside `v`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(at)) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: both hold `n` floats; the CPU has AVX2 and FMA.
        return unsafe { x86::dot(a.as_ptr(), b.as_ptr(), n) };
    }
    a[..n].iter().zip(&b[..n]).map(|(x, y)| x * y).sum()
}

#[inline]
fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: both hold `n` floats; the CPU has AVX2 and FMA.
        return unsafe { x86::l2sq(a.as_ptr(), b.as_ptr(), n) };
    }
    a[..n].iter().zip(&b[..n]).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[inline]
fn dot_f16(a: &[u16], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: both hold `n` halves; the CPU has AVX2, FMA and F16C.
        return unsafe { x86::dot_f16(a.as_ptr(), b.as_ptr(), n) };
    }
    a[..n].iter().zip(&b[..n]).map(|(x, y)| f16_to_f32(*x) * f16_to_f32(*y)).sum()
}

#[inline]
fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: `a` holds `n` floats and `b` `n` halves; the CPU has AVX2, FMA and F16C.
        return unsafe { x86::dot_f32_f16(a.as_ptr(), b.as_ptr(), n) };
    }
    a[..n].iter().zip(&b[..n]).map(|(x, y)| x * f16_to_f32(*y)).sum()
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

    /// `a·b` with `a` in `f32` and `b` in half floats.
    ///
    /// # Safety
    /// `a` points to `dim` floats and `b` to `dim` half floats; the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32_f16(a: *const f32, b: *const u16, dim: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads components below `dim` (the tail goes through zero-padded
        // copies).
        unsafe {
            let half = |p: *const u16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
            while i + 16 <= dim {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), half(b.add(i)), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + 8)), half(b.add(i + 8)), s1);
                i += 16;
            }
            if i + 8 <= dim {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), half(b.add(i)), s0);
                i += 8;
            }
            if i < dim {
                let (mut ta, mut tb) = ([0f32; 8], [0u16; 8]);
                std::ptr::copy_nonoverlapping(a.add(i), ta.as_mut_ptr(), dim - i);
                std::ptr::copy_nonoverlapping(b.add(i), tb.as_mut_ptr(), dim - i);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(ta.as_ptr()), half(tb.as_ptr()), s1);
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

    /// Within `tol` relative (absolute below 1).
    fn close(x: f32, y: f32, tol: f32) -> bool {
        (x - y).abs() <= tol * x.abs().max(1.0)
    }

    /// Every kernel (the CPU's and the portable loop) agrees with the plain definition for every
    /// length around the vector widths, zero vectors included.
    #[test]
    fn kernels_match_plain_loops() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for dim in [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 384, 385] {
            let a: Vec<f32> = (0..dim).map(|_| next() * 3.0).collect();
            let b: Vec<f32> = (0..dim).map(|_| next()).collect();
            let zero = vec![0f32; dim];
            for (x, y) in [(&a, &b), (&a, &zero)] {
                for space in [Space::Cosine, Space::Dot, Space::L2] {
                    let d = if space == Space::Cosine { Distance::Cosine } else { Distance::L2 };
                    let (ux, uy) = (unit(d, x.clone()), unit(d, y.clone()));
                    let want = space.reference(x, y);
                    let got = space.query_full(&ux, &uy);
                    assert!(close(got, want, 1e-4), "{space:?} dim {dim}: {got} vs {want}");
                    if space == Space::Cosine {
                        let hx: Vec<u16> = ux.iter().map(|v| f32_to_f16(*v)).collect();
                        let hy: Vec<u16> = uy.iter().map(|v| f32_to_f16(*v)).collect();
                        let got = space.half_half(&hx, &hy);
                        assert!(close(got, want, 2e-3), "f16 dim {dim}: {got} vs {want}");
                        let got = space.query_half(&ux, &hy);
                        assert!(close(got, want, 2e-3), "f32×f16 dim {dim}: {got} vs {want}");
                        // The portable loops agree with the CPU's kernels.
                        let plain: f32 = ux.iter().zip(&hy).map(|(p, h)| p * f16_to_f32(*h)).sum();
                        assert!(close(1.0 - plain, got, 1e-5), "portable dim {dim}");
                    }
                }
            }
        }
    }

    #[test]
    fn half_conversion_rounds_to_nearest() {
        for x in [0.0f32, 1.0, -1.0, 0.5, 1e-5, 0.333_333, -0.999_9, 65504.0] {
            let back = f16_to_f32(f32_to_f16(x));
            assert!((back - x).abs() <= x.abs() / 2048.0 + 6e-8, "{x} -> {back}");
        }
    }
}
