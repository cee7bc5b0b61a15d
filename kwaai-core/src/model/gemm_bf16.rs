//! Matrix multiplication for prefill with bfloat16 weights on CPUs with AVX512-BF16: `y = x W^T` for many rows
//! of `x`, multiplying bfloat16 pairs with `vdpbf16ps` (exact products, float32 sums).
//!
//! `x` must hold bfloat16 values (float32 whose low 16 bits are zero), as the activations of a bfloat16 model
//! do after each op's rounding; then the result equals a float32 matmul of the same values up to the order of
//! the sums. `W` is read in place, (out, in) row-major: each step broadcasts one pair of a weight row to every
//! lane, and the lanes are 16 rows of `x`, packed once per call as bfloat16 pairs.

use rayon::prelude::*;

/// Vectors of 16 rows of `x` in one tile.
const VECS: usize = 4;
/// Rows of `x` in one tile.
const TILE_ROWS: usize = 16 * VECS;
/// Output columns in one full tile (6 columns × 4 vectors = 24 accumulators); a tail takes 4 at a time.
const TILE_COLS: usize = 6;
/// Output columns per parallel task.
const TASK_COLS: usize = 4 * TILE_COLS;

/// `y (rows, out) = x (rows, inp) · W^T` with `W` (out, inp) as bfloat16 bit patterns, or `None` when this CPU
/// lacks AVX512-BF16, `inp` is odd, or `x` holds a value that bfloat16 cannot represent exactly.
pub fn matmul_t_bf16(x: &[f32], rows: usize, inp: usize, w: &[u16], out: usize) -> Option<Vec<f32>> {
    if !supported() || !inp.is_multiple_of(2) || rows == 0 || out == 0 {
        return None;
    }
    assert!(x.len() == rows * inp && w.len() == out * inp, "matmul_t_bf16: mismatched lengths");
    let packed = pack_rows(x, rows, inp)?;
    let padded = rows.next_multiple_of(TILE_ROWS);
    // yt (out, padded): each output column's rows are contiguous, so a tile stores whole vectors.
    let mut yt = vec![0f32; out * padded];
    yt.par_chunks_mut(TASK_COLS * padded).enumerate().for_each(|(task, chunk)| {
        let first = task * TASK_COLS;
        let cols = chunk.len() / padded;
        // SAFETY: `supported()` checked the CPU; the slices' bounds are checked inside.
        unsafe { x86::columns(&packed, padded, inp / 2, &w[first * inp..(first + cols) * inp], cols, chunk) };
    });
    let mut y = vec![0f32; rows * out];
    y.par_chunks_mut(out).enumerate().for_each(|(r, row)| {
        for (o, v) in row.iter_mut().enumerate() {
            *v = yt[o * padded + r];
        }
    });
    Some(y)
}

/// Whether this CPU runs the kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` as bfloat16 pairs, tile by tile: for each tile of 64 rows and each pair `p` of columns, 64 words
/// `bits(x[r][2p]) | bits(x[r][2p + 1]) << 16`; rows past the end are zero. `None` if a value is not bfloat16.
fn pack_rows(x: &[f32], rows: usize, inp: usize) -> Option<Vec<u32>> {
    let pairs = inp / 2;
    let tiles = rows.div_ceil(TILE_ROWS);
    let mut packed = vec![0u32; tiles * pairs * TILE_ROWS];
    let exact = packed.par_chunks_mut(pairs * TILE_ROWS).enumerate().all(|(tile, dst)| {
        let mut low_bits = 0u32;
        for r in 0..TILE_ROWS.min(rows - tile * TILE_ROWS) {
            let row = &x[(tile * TILE_ROWS + r) * inp..][..inp];
            for (p, pair) in row.chunks_exact(2).enumerate() {
                let (a, b) = (pair[0].to_bits(), pair[1].to_bits());
                low_bits |= (a | b) & 0xffff;
                dst[p * TILE_ROWS + r] = (a >> 16) | (b & 0xffff_0000);
            }
        }
        low_bits == 0
    });
    exact.then_some(packed)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{TILE_COLS, TILE_ROWS, VECS};

    /// Every tile of `cols` output columns (weights `w`, (cols, 2 · pairs)) by every row tile of `packed`,
    /// into `yt` (cols, padded).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn columns(packed: &[u32], padded: usize, pairs: usize, w: &[u16], cols: usize, yt: &mut [f32]) {
        assert!(packed.len() == padded * pairs && w.len() == cols * pairs * 2 && yt.len() == cols * padded);
        let mut first = 0;
        while first < cols {
            let take = match cols - first {
                n if n >= TILE_COLS => TILE_COLS,
                n if n >= 4 => 4,
                n => n,
            };
            for tile in 0..padded / TILE_ROWS {
                let a = packed.as_ptr().add(tile * pairs * TILE_ROWS);
                let w = w.as_ptr().add(first * pairs * 2).cast::<u32>();
                let y = yt.as_mut_ptr().add(first * padded + tile * TILE_ROWS);
                match take {
                    TILE_COLS => tile_kernel::<TILE_COLS>(a, w, pairs, y, padded),
                    4 => tile_kernel::<4>(a, w, pairs, y, padded),
                    3 => tile_kernel::<3>(a, w, pairs, y, padded),
                    2 => tile_kernel::<2>(a, w, pairs, y, padded),
                    _ => tile_kernel::<1>(a, w, pairs, y, padded),
                }
            }
            first += take;
        }
    }

    /// One tile: 64 rows (`a`: `pairs` × 64 packed words) by `C` columns (`w`: `C` weight rows of `pairs`
    /// words, unaligned), accumulated over every pair, stored as `C` column vectors of 64 rows at `y`, `stride`
    /// apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_kernel<const C: usize>(a: *const u32, w: *const u32, pairs: usize, y: *mut f32, stride: usize) {
        let mut acc = [[_mm512_setzero_ps(); VECS]; C];
        for p in 0..pairs {
            let rows: [__m512bh; VECS] =
                std::array::from_fn(|v| as_bf16_pairs(_mm512_loadu_si512(a.add(p * TILE_ROWS + 16 * v).cast())));
            for (c, column) in acc.iter_mut().enumerate() {
                let b = as_bf16_pairs(_mm512_set1_epi32(w.add(c * pairs + p).read_unaligned() as i32));
                for (sum, &r) in column.iter_mut().zip(&rows) {
                    *sum = _mm512_dpbf16_ps(*sum, r, b);
                }
            }
        }
        for (c, column) in acc.iter().enumerate() {
            for (v, &sum) in column.iter().enumerate() {
                _mm512_storeu_ps(y.add(c * stride + 16 * v), sum);
            }
        }
    }

    /// Packed words as the `__m512bh` pairs `_mm512_dpbf16_ps` takes.
    #[inline(always)]
    unsafe fn as_bf16_pairs(v: __m512i) -> __m512bh {
        std::mem::transmute(v)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub unsafe fn columns(_: &[u32], _: usize, _: usize, _: &[u16], _: usize, _: &mut [f32]) {
        unreachable!("supported() is false off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_bits(v: f32) -> u16 {
        (crate::model::round_bf16(v).to_bits() >> 16) as u16
    }

    #[test]
    fn matches_a_float64_matmul_of_the_same_bfloat16_values() {
        if !supported() {
            eprintln!("no AVX512-BF16 on this CPU: matmul_t_bf16 returns None, checked below");
            assert!(matmul_t_bf16(&[0.0; 4], 2, 2, &[0; 2], 1).is_none());
            return;
        }
        let mut rng = crate::model::Rng::new(5);
        // Shapes with partial and several row tiles, each column tail (4, 3, 2, 1) and more than one task.
        for (rows, inp, out) in [(1, 2, 1), (9, 64, 12), (70, 130, 61), (64, 256, 100), (40, 34, 9), (3, 8, 8)] {
            let x: Vec<f32> =
                (0..rows * inp).map(|_| crate::model::round_bf16(rng.next_f64() as f32 * 4.0 - 2.0)).collect();
            let w: Vec<u16> = (0..out * inp).map(|_| bf16_bits(rng.next_f64() as f32 - 0.5)).collect();
            let got = matmul_t_bf16(&x, rows, inp, &w, out).expect("bfloat16 inputs on a supporting CPU");
            for r in 0..rows {
                for o in 0..out {
                    let want: f64 = (0..inp)
                        .map(|i| f64::from(x[r * inp + i]) * f64::from(f32::from_bits(u32::from(w[o * inp + i]) << 16)))
                        .sum();
                    let g = got[r * out + o];
                    assert!(
                        (f64::from(g) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{rows}x{inp}x{out} [{r},{o}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn declines_inputs_it_cannot_multiply_exactly() {
        let w = vec![bf16_bits(1.0); 4 * 6];
        // 0.1 is not a bfloat16 value; an odd inner size has no pairs.
        assert!(matmul_t_bf16(&[0.1, 1.0, 2.0, 3.0, 4.0, 5.0], 1, 6, &w, 4).is_none());
        assert!(matmul_t_bf16(&[1.0, 2.0, 3.0], 1, 3, &w[..12], 4).is_none());
    }
}
