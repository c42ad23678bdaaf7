//! Distance kernels for the HNSW index, chosen at run time from the CPU's features.
//!
//! The `usearch` crate is built without its SIMD kernel library (`numkong`, slow to compile on
//! small machines), so its own distances are portable loops: on x86-64 the baseline is SSE2,
//! four floats at a time. A graph walk is mostly distance computations (about `ef × M` of them a
//! query), so on a CPU with AVX2 and FMA the index is given these kernels instead: eight floats
//! at a time with fused multiply-adds and independent accumulators. The metric is not saved in
//! the index file: every index is given the kernel again after it is loaded. Other CPUs keep
//! usearch's built-in distances.
//!
//! Cosine collections keep unit vectors in the index ([`unit`]; SQLite keeps the embeddings as
//! given) and queries are made unit too, so the cosine distance `1 − a·b / (|a||b|)` is `1 − a·b`:
//! one product a dimension instead of three, as faiss does with inner product on normalized
//! vectors. usearch's built-in cosine gives the same on unit vectors. Inner product and squared L2
//! are computed as usearch computes them. Results match usearch's own up to float rounding.

use ondevice_vector::Distance;
use usearch::Index;

/// Which kernels an index is given on this CPU.
pub(crate) fn kernel_name() -> &'static str {
    if simd_available() { "avx2+fma" } else { "usearch built-in (portable)" }
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

/// Gives `index` this CPU's kernel for `distance` over `dim`-float vectors (no change when the CPU
/// has none). Call again after every `load`, which resets the metric to usearch's built-in one.
pub(crate) fn install(index: &mut Index, distance: Distance, dim: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY (of the closures): usearch calls the metric with two vectors of the index's
        // dimension, `dim` floats each, and the CPU has AVX2 and FMA (checked above).
        let f: Box<dyn Fn(*const f32, *const f32) -> f32 + Send + Sync> = match distance {
            // Unit vectors (see `unit`): cosine distance is 1 − a·b.
            Distance::Cosine | Distance::Dot => Box::new(move |a, b| unsafe { 1.0 - x86::dot(a, b, dim) }),
            Distance::L2 => Box::new(move |a, b| unsafe { x86::l2sq(a, b, dim) }),
        };
        index.change_metric::<f32>(f);
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

    fn close(x: f32, y: f32) -> bool {
        (x - y).abs() <= 1e-4 * x.abs().max(1.0)
    }

    /// The kernels (on the vectors as the index holds them) agree with plain loops for every
    /// length around the vector widths, and an index given them finds the same nearest
    /// neighbours, with the same distances, as usearch's own metric on the raw vectors.
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
                        assert!(close(got, want), "{distance:?} dim {dim}: {got} vs {want}");
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
            let options = usearch::IndexOptions {
                dimensions: dim,
                metric: kind,
                quantization: usearch::ScalarKind::F32,
                ..Default::default()
            };
            let plain = Index::new(&options).unwrap();
            let mut fast = Index::new(&options).unwrap();
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
                assert!(close(*x, *y) && close(*y, w.1), "{distance:?}: {x} vs {y} vs {}", w.1);
            }
        }
    }
}
