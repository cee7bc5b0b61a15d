//! Matrix-vector kernels for decoding: `y = x W^T` for a few rows of `x`, with `W` stored as float32 or as
//! bfloat16 bits (widened on the fly, accumulated in float32). Decoding reads every weight once per token, so
//! these stream `W` once for all rows and split its output rows across threads.

use super::threads::for_each_chunk_mut;

/// Largest number of `x` rows the kernels take; larger inputs go to the general matmul.
pub const MAX_ROWS: usize = 8;

/// Weights as the kernels read them.
#[derive(Clone, Copy)]
pub enum WeightBits<'a> {
    /// float32 values, (out, in) row-major.
    F32(&'a [f32]),
    /// bfloat16 bit patterns, (out, in) row-major.
    Bf16(&'a [u16]),
    /// 8-bit integers, (out, in) row-major, with one scale per output row: `W[o, i] = q[o, i] * scale[o]`.
    Int8 {
        /// The integers.
        q: &'a [i8],
        /// One scale per output row.
        scale: &'a [f32],
    },
}

/// Weights quantized to 8 bits per output row (symmetric, absmax / 127).
#[derive(Debug, Clone)]
pub struct Int8Weight {
    /// (out, in) row-major integers.
    pub q: Vec<i8>,
    /// One scale per output row.
    pub scale: Vec<f32>,
    /// Output rows.
    pub out: usize,
    /// Input columns.
    pub inp: usize,
}

impl Int8Weight {
    /// Quantizes float32 weights (out, in).
    pub fn quantize(w: &[f32], out: usize, inp: usize) -> Self {
        let mut q = Vec::with_capacity(out * inp);
        let mut scale = Vec::with_capacity(out);
        for row in w.chunks(inp) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            q.extend(row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
            scale.push(s);
        }
        Int8Weight { q, scale, out, inp }
    }

    /// The float32 weights these integers stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q.chunks(self.inp).zip(&self.scale).flat_map(|(row, s)| row.iter().map(move |v| *v as f32 * s)).collect()
    }
}

/// `y (rows, out) = x (rows, inp) · W^T` with `W` (out, inp). Requires `rows <= MAX_ROWS`.
pub fn matmul_t(x: &[f32], rows: usize, inp: usize, w: WeightBits<'_>, out: usize) -> Vec<f32> {
    debug_assert!(rows <= MAX_ROWS && x.len() == rows * inp);
    let mut yt = vec![0f32; out * rows];
    let per_task = 64;
    for_each_chunk_mut(&mut yt, per_task * rows, |task, chunk| {
        let first = task * per_task;
        for (k, y) in chunk.chunks_mut(rows).enumerate() {
            let o = first + k;
            match w {
                WeightBits::F32(w) => dot_f32(&w[o * inp..(o + 1) * inp], x, rows, y),
                WeightBits::Bf16(w) => dot_bf16(&w[o * inp..(o + 1) * inp], x, rows, y),
                WeightBits::Int8 { q, scale } => {
                    dot_i8(&q[o * inp..(o + 1) * inp], x, rows, y);
                    y.iter_mut().for_each(|v| *v *= scale[o]);
                }
            }
        }
    });
    let mut y = vec![0f32; rows * out];
    for o in 0..out {
        for r in 0..rows {
            y[r * out + o] = yt[o * rows + r];
        }
    }
    y
}

/// Widens bfloat16 bit patterns to float32 (exact), in parallel.
pub fn widen_bf16(bits: &[u16]) -> Vec<f32> {
    let mut out = vec![0f32; bits.len()];
    const CHUNK: usize = 1 << 16;
    for_each_chunk_mut(&mut out, CHUNK, |i, o| {
        for (o, b) in o.iter_mut().zip(&bits[i * CHUNK..]) {
            *o = f32::from_bits((*b as u32) << 16);
        }
    });
    out
}

fn dot_f32(w: &[f32], x: &[f32], rows: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for; slices are bounds-checked inside.
        unsafe { x86::dot_f32_avx2(w, x, rows, y) };
        return;
    }
    let n = w.len();
    for (r, yr) in y.iter_mut().enumerate().take(rows) {
        *yr = w.iter().zip(&x[r * n..(r + 1) * n]).map(|(a, b)| a * b).sum();
    }
}

fn dot_bf16(w: &[u16], x: &[f32], rows: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as in dot_f32.
        unsafe { x86::dot_bf16_avx2(w, x, rows, y) };
        return;
    }
    let n = w.len();
    for (r, yr) in y.iter_mut().enumerate().take(rows) {
        *yr = w.iter().zip(&x[r * n..(r + 1) * n]).map(|(a, b)| f32::from_bits((*a as u32) << 16) * b).sum();
    }
}

fn dot_i8(w: &[i8], x: &[f32], rows: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as in dot_f32.
        unsafe { x86::dot_i8_avx2(w, x, rows, y) };
        return;
    }
    let n = w.len();
    for (r, yr) in y.iter_mut().enumerate().take(rows) {
        *yr = w.iter().zip(&x[r * n..(r + 1) * n]).map(|(a, b)| *a as f32 * b).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::MAX_ROWS;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Two 8-lane accumulators per row over 16 weights at a time, then a scalar tail. `R` rows at once (a
    /// constant, so the accumulators stay in registers); callers split larger row counts.
    macro_rules! dot_kernel {
        ($name:ident, $t:ty, $load:expr, $widen:expr) => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name<const R: usize>(w: &[$t], x: &[f32], y: &mut [f32]) {
                let n = w.len();
                assert!(x.len() >= R * n && y.len() >= R);
                let mut acc0 = [_mm256_setzero_ps(); R];
                let mut acc1 = [_mm256_setzero_ps(); R];
                let body = n - n % 16;
                let wp = w.as_ptr();
                let xp = x.as_ptr();
                let mut i = 0;
                while i < body {
                    let w0: __m256 = $load(wp.add(i));
                    let w1: __m256 = $load(wp.add(i + 8));
                    for r in 0..R {
                        let xr = xp.add(r * n + i);
                        acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc0[r]);
                        acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), acc1[r]);
                    }
                    i += 16;
                }
                for r in 0..R {
                    let mut s = hsum(_mm256_add_ps(acc0[r], acc1[r]));
                    for j in body..n {
                        s += $widen(w[j]) * x[r * n + j];
                    }
                    y[r] = s;
                }
            }
        };
    }

    /// Runs a kernel over `rows` rows, at most four at a time.
    macro_rules! dispatch {
        ($pub_name:ident, $name:ident, $t:ty) => {
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn $pub_name(w: &[$t], x: &[f32], rows: usize, y: &mut [f32]) {
                let n = w.len();
                assert!(rows <= MAX_ROWS && x.len() >= rows * n && y.len() >= rows);
                let mut r = 0;
                while r < rows {
                    let (xs, ys) = (&x[r * n..], &mut y[r..]);
                    let step = match rows - r {
                        1 => {
                            $name::<1>(w, xs, ys);
                            1
                        }
                        2 => {
                            $name::<2>(w, xs, ys);
                            2
                        }
                        3 => {
                            $name::<3>(w, xs, ys);
                            3
                        }
                        _ => {
                            $name::<4>(w, xs, ys);
                            4
                        }
                    };
                    r += step;
                }
            }
        };
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_i8(p: *const i8) -> __m256 {
        let b = _mm_loadl_epi64(p as *const __m128i);
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
    }

    dot_kernel!(dot_i8_rows, i8, |p| load_i8(p), |v: i8| v as f32);
    dot_kernel!(dot_f32_rows, f32, |p| load_f32(p), |v: f32| v);
    dot_kernel!(dot_bf16_rows, u16, |p| load_bf16(p), |v: u16| f32::from_bits((v as u32) << 16));
    dispatch!(dot_i8_avx2, dot_i8_rows, i8);
    dispatch!(dot_f32_avx2, dot_f32_rows, f32);
    dispatch!(dot_bf16_avx2, dot_bf16_rows, u16);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|i| x[r * inp + i] as f64 * w[o * inp + i] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn kernels_match_a_plain_matmul() {
        let mut rng = crate::model::Rng::new(3);
        for (rows, inp, out) in [(1, 37, 5), (3, 64, 130), (8, 100, 70), (2, 16, 1)] {
            let x: Vec<f32> = (0..rows * inp).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let w: Vec<f32> = (0..out * inp).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let bits: Vec<u16> = w.iter().map(|v| (crate::model::round_bf16(*v).to_bits() >> 16) as u16).collect();
            let w_rounded: Vec<f32> = bits.iter().map(|b| f32::from_bits((*b as u32) << 16)).collect();
            let q = Int8Weight::quantize(&w, out, inp);
            let w_q = q.dequantize();
            for (a, b) in w.iter().zip(&w_q) {
                assert!((a - b).abs() <= 0.5 / 127.0 * 0.5 + 1e-6, "quantization error within half a step");
            }
            for (got, want) in [
                (
                    matmul_t(&x, rows, inp, WeightBits::Int8 { q: &q.q, scale: &q.scale }, out),
                    reference(&x, rows, inp, &w_q, out),
                ),
                (matmul_t(&x, rows, inp, WeightBits::F32(&w), out), reference(&x, rows, inp, &w, out)),
                (matmul_t(&x, rows, inp, WeightBits::Bf16(&bits), out), reference(&x, rows, inp, &w_rounded, out)),
            ] {
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{rows}x{inp}x{out}: {g} vs {e}");
                }
            }
        }
    }
}
