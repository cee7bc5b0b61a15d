//! Matrix multiplication for prefill on CPUs with AVX-512: `y = x W^T` for many rows of `x`, with `W` (out, in)
//! row-major read in place as float32 or as bfloat16.
//!
//! The lanes of a vector are 16 rows of `x`, packed once per call; each step broadcasts one element of a weight
//! row to every lane. A tile is 64 rows by 6 output columns (24 accumulators), whose sums are scattered into
//! the output's rows once at the end.
//!
//! float32 weights take `vfmadd` on float32 elements. bfloat16 weights take `vdpbf16ps` (AVX512-BF16) on pairs
//! of elements: exact products, float32 sums. That needs `x` to hold bfloat16 values (float32 whose low 16 bits
//! are zero), as the activations of a bfloat16 model do after each op's rounding; then the result equals a
//! float32 matmul of the same values up to the order of the sums.

use std::sync::atomic::{AtomicBool, Ordering};

use super::kernels::WeightBits;
use super::threads::{for_each_chunk_mut, for_each_task, Disjoint};

/// Vectors of 16 rows of `x` in one tile.
const VECS: usize = 4;
/// Rows of `x` in one tile.
const TILE_ROWS: usize = 16 * VECS;
/// Output columns in one full tile (6 columns × 4 vectors = 24 accumulators); a tail takes 4 at a time.
const TILE_COLS: usize = 6;
/// Output columns per parallel task.
const TASK_COLS: usize = 4 * TILE_COLS;

/// `y (rows, out) = x (rows, inp) · W^T`, or `None` where this module cannot compute it: 8-bit weights, a CPU
/// without AVX-512 (AVX512-BF16 for bfloat16 weights), over 2^27 output columns, or bfloat16 weights that are
/// not 4-byte aligned, have an odd `inp`, or meet an `x` that holds a value bfloat16 cannot represent exactly.
/// With `round_bf16`, each result is rounded to the nearest bfloat16 as it is written.
pub fn matmul_t_prefill(
    x: &[f32],
    rows: usize,
    inp: usize,
    w: WeightBits<'_>,
    out: usize,
    round_bf16: bool,
) -> Option<Vec<f32>> {
    matmul_t_prefill_many(x, rows, inp, &[(w, out)], round_bf16)?.pop()
}

/// [`matmul_t_prefill`] for several layers that read the same `x`, each given as its weights and `out`: `x`
/// is packed once and all the layers' columns are shared out in one parallel pass. The weights must all be
/// float32 or all bfloat16.
pub fn matmul_t_prefill_many(
    x: &[f32],
    rows: usize,
    inp: usize,
    layers: &[(WeightBits<'_>, usize)],
    round_bf16: bool,
) -> Option<Vec<Vec<f32>>> {
    // The scatter addresses 16 rows of a column by 32-bit element offsets.
    let fits = |&(_, out): &(WeightBits<'_>, usize)| out > 0 && out <= i32::MAX as usize / 16;
    if rows == 0 || inp == 0 || layers.is_empty() || !layers.iter().all(fits) {
        return None;
    }
    assert!(x.len() == rows * inp, "matmul_t_prefill: x has {} values, not {rows} × {inp}", x.len());
    // Each step multiplies one word of `x` with one word of a weight row: a float32, or a pair of bfloat16.
    let bf16 = matches!(layers[0].0, WeightBits::Bf16(_));
    let (steps, kernel): (usize, x86::Columns) = match bf16 {
        false if supported(false) => (inp, x86::columns_f32),
        true if supported(true) && inp.is_multiple_of(2) => (inp / 2, x86::columns_bf16),
        _ => return None,
    };
    let mut words: Vec<&[u32]> = Vec::with_capacity(layers.len());
    for &(w, out) in layers {
        let w: &[u32] = match w {
            WeightBits::F32(w) if !bf16 => bytemuck::cast_slice(w),
            WeightBits::Bf16(w) if bf16 => bytemuck::try_cast_slice(w).ok()?,
            _ => return None,
        };
        assert!(w.len() == out * steps, "matmul_t_prefill: W has {} words, not {out} × {steps}", w.len());
        words.push(w);
    }
    let packed = match bf16 {
        true => pack_rows_bf16(x, rows, inp)?,
        false => pack_rows_f32(x, rows, inp),
    };
    let padded = rows.next_multiple_of(TILE_ROWS);
    // Not zeroed: the tasks write every element.
    let mut ys: Vec<Vec<f32>> = layers.iter().map(|&(_, out)| Vec::with_capacity(rows * out)).collect();
    let targets: Vec<Output> = ys
        .iter_mut()
        .zip(layers)
        .map(|(y, &(_, out))| Output { y: Disjoint::new(y.as_mut_ptr()), rows, out, round_bf16 })
        .collect();
    // Tasks of every layer, in order: layer `l` has tasks `first_task[l]..first_task[l + 1]`.
    let mut first_task = vec![0];
    for &(_, out) in layers {
        first_task.push(first_task.last().unwrap() + out.div_ceil(TASK_COLS));
    }
    for_each_task(*first_task.last().unwrap(), |task| {
        let l = first_task.partition_point(|&f| f <= task) - 1;
        let first = (task - first_task[l]) * TASK_COLS;
        let cols = TASK_COLS.min(layers[l].1 - first);
        // SAFETY: `supported()` checked the CPU for the kernel's features; the kernel checks the slices' bounds
        // and writes only columns `first..first + cols` of the `rows` rows of its layer's `y`, which no other
        // task writes.
        unsafe {
            kernel(&packed, padded, steps, &words[l][first * steps..(first + cols) * steps], first, cols, &targets[l])
        };
    });
    for (y, &(_, out)) in ys.iter_mut().zip(layers) {
        // SAFETY: the tasks cover columns `0..out` of each layer, and each writes its columns of all `rows` rows.
        unsafe { y.set_len(rows * out) };
    }
    Some(ys)
}

/// Where the kernels write: `y` (rows, out), shared by the parallel tasks, each of which writes its own columns;
/// with `round_bf16`, each value rounded to the nearest bfloat16.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the x86-64 kernels write
pub struct Output {
    y: Disjoint<f32>,
    rows: usize,
    out: usize,
    round_bf16: bool,
}

/// Whether this CPU runs the float32 kernel, or with `bf16` the bfloat16 one.
fn supported(bf16: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && (!bf16 || std::arch::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = bf16;
        false
    }
}

/// `x` tile by tile: for each tile of 64 rows and each column `i`, the 64 rows' `x[r][i]` bits; rows past the
/// end are zero.
fn pack_rows_f32(x: &[f32], rows: usize, inp: usize) -> Vec<u32> {
    pack_tiles(x, rows, inp, inp, |row, i| row[i].to_bits())
}

/// `x` as bfloat16 pairs, tile by tile: for each tile of 64 rows and each pair `p` of columns, 64 words
/// `bits(x[r][2p]) | bits(x[r][2p + 1]) << 16`; rows past the end are zero. `None` if a value is not bfloat16.
fn pack_rows_bf16(x: &[f32], rows: usize, inp: usize) -> Option<Vec<u32>> {
    let inexact = AtomicBool::new(false);
    let packed = pack_tiles(x, rows, inp, inp / 2, |row, p| {
        let (a, b) = (row[2 * p].to_bits(), row[2 * p + 1].to_bits());
        if (a | b) & 0xffff != 0 {
            inexact.store(true, Ordering::Relaxed);
        }
        (a >> 16) | (b & 0xffff_0000)
    });
    (!inexact.into_inner()).then_some(packed)
}

/// `words` words made from each row of `x` (rows of `inp` values), tile by tile: for each tile of 64 rows and
/// each `i < words`, the 64 rows' `word(row, i)`, with zeros for rows past the end. Tiles are filled in
/// parallel, into memory that is not zeroed first.
fn pack_tiles(
    x: &[f32],
    rows: usize,
    inp: usize,
    words: usize,
    word: impl Fn(&[f32], usize) -> u32 + Sync,
) -> Vec<u32> {
    let len = rows.div_ceil(TILE_ROWS) * words * TILE_ROWS;
    let mut packed = Vec::with_capacity(len);
    for_each_chunk_mut(&mut packed.spare_capacity_mut()[..len], words * TILE_ROWS, |tile, dst| {
        for r in 0..TILE_ROWS {
            let index = tile * TILE_ROWS + r;
            let row = (index < rows).then(|| &x[index * inp..][..inp]);
            for i in 0..words {
                dst[i * TILE_ROWS + r].write(row.map_or(0, |row| word(row, i)));
            }
        }
    });
    // SAFETY: each tile wrote all `words × 64` of its words.
    unsafe { packed.set_len(len) };
    packed
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Output, TILE_COLS, TILE_ROWS, VECS};
    use crate::model::simd::x86 as simd;

    /// Every tile of `cols` output columns from column `column` (weight rows `w`, (cols, steps) words) by every
    /// row tile of `packed` ((padded / 64) tiles of steps × 64 words), into those columns of the output.
    pub type Columns = unsafe fn(&[u32], usize, usize, &[u32], usize, usize, &Output);

    /// Where one tile's results go: its first row and column in the output, the element offsets of 16
    /// consecutive rows, and how many of its rows exist (the rest are padding).
    struct Store {
        y: *mut f32,
        rows16: __m512i,
        out: usize,
        valid: usize,
        round_bf16: bool,
    }

    impl Store {
        /// Writes the existing rows of vector `v` (rows `16 v..16 v + 16` of the tile) of column `c`.
        #[target_feature(enable = "avx512f")]
        unsafe fn scatter(&self, v: usize, c: usize, sum: __m512) {
            let lanes = self.valid.saturating_sub(16 * v).min(16);
            if lanes == 0 {
                return;
            }
            let sum = if self.round_bf16 { simd::round_bf16(sum) } else { sum };
            let mask = (((1u32 << lanes) - 1) & 0xffff) as __mmask16;
            let base = self.y.add(16 * v * self.out + c);
            _mm512_mask_i32scatter_ps::<4>(base.cast(), mask, self.rows16, sum);
        }
    }

    /// A [`Columns`] driver and its tile kernel for one multiply-add of packed words.
    macro_rules! prefill_kernel {
        ($columns:ident, $tile:ident, $features:literal, $madd:expr) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $columns(
                packed: &[u32],
                padded: usize,
                steps: usize,
                w: &[u32],
                column: usize,
                cols: usize,
                output: &Output,
            ) {
                assert!(packed.len() == padded * steps && w.len() == cols * steps);
                assert!(column + cols <= output.out && output.rows <= padded && output.out <= i32::MAX as usize / 16);
                // Element offsets of 16 consecutive rows of one column.
                let rows16 = _mm512_mullo_epi32(
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                    _mm512_set1_epi32(output.out as i32),
                );
                let mut first = 0;
                while first < cols {
                    let take = match cols - first {
                        n if n >= TILE_COLS => TILE_COLS,
                        n if n >= 4 => 4,
                        n => n,
                    };
                    for tile in 0..padded / TILE_ROWS {
                        let a = packed.as_ptr().add(tile * steps * TILE_ROWS);
                        let w = w.as_ptr().add(first * steps);
                        let y = output.y.start().add(tile * TILE_ROWS * output.out + column + first);
                        let valid = output.rows - tile * TILE_ROWS;
                        let at = Store { y, rows16, out: output.out, valid, round_bf16: output.round_bf16 };
                        match take {
                            TILE_COLS => $tile::<TILE_COLS>(a, w, steps, &at),
                            4 => $tile::<4>(a, w, steps, &at),
                            3 => $tile::<3>(a, w, steps, &at),
                            2 => $tile::<2>(a, w, steps, &at),
                            _ => $tile::<1>(a, w, steps, &at),
                        }
                    }
                    first += take;
                }
            }

            /// One tile: 64 rows (`a`: `steps` × 64 words) by `C` columns (`w`: `C` weight rows of `steps`
            /// words), accumulated over every step, then scattered into the output's rows and columns.
            #[target_feature(enable = $features)]
            unsafe fn $tile<const C: usize>(a: *const u32, w: *const u32, steps: usize, at: &Store) {
                let mut acc = [[_mm512_setzero_ps(); VECS]; C];
                for p in 0..steps {
                    let rows: [__m512i; VECS] =
                        std::array::from_fn(|v| _mm512_loadu_si512(a.add(p * TILE_ROWS + 16 * v).cast()));
                    for (c, column) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_epi32(*w.add(c * steps + p) as i32);
                        for (sum, &r) in column.iter_mut().zip(&rows) {
                            *sum = $madd(*sum, r, b);
                        }
                    }
                }
                for (c, column) in acc.iter().enumerate() {
                    for (v, &sum) in column.iter().enumerate() {
                        at.scatter(v, c, sum);
                    }
                }
            }
        };
    }

    prefill_kernel!(columns_f32, tile_f32, "avx512f", |sum, r, b| _mm512_fmadd_ps(
        _mm512_castsi512_ps(r),
        _mm512_castsi512_ps(b),
        sum
    ));
    // SAFETY (transmute): `__m512i` and `__m512bh` are both 64 bytes of packed lanes.
    prefill_kernel!(columns_bf16, tile_bf16, "avx512f,avx512bf16", |sum, r, b| _mm512_dpbf16_ps(
        sum,
        std::mem::transmute::<__m512i, __m512bh>(r),
        std::mem::transmute::<__m512i, __m512bh>(b)
    ));
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::Output;

    pub type Columns = unsafe fn(&[u32], usize, usize, &[u32], usize, usize, &Output);

    pub unsafe fn columns_f32(_: &[u32], _: usize, _: usize, _: &[u32], _: usize, _: usize, _: &Output) {
        unreachable!("supported() is false off x86_64")
    }

    pub unsafe fn columns_bf16(_: &[u32], _: usize, _: usize, _: &[u32], _: usize, _: usize, _: &Output) {
        unreachable!("supported() is false off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_bits(v: f32) -> u16 {
        (crate::model::round_bf16(v).to_bits() >> 16) as u16
    }

    fn widen(bits: &[u16]) -> Vec<f32> {
        bits.iter().map(|b| f32::from_bits(u32::from(*b) << 16)).collect()
    }

    fn assert_matmul(got: &[f32], x: &[f32], w: &[f32], (rows, inp, out): (usize, usize, usize)) {
        for r in 0..rows {
            for o in 0..out {
                let want: f64 = (0..inp).map(|i| f64::from(x[r * inp + i]) * f64::from(w[o * inp + i])).sum();
                let g = got[r * out + o];
                assert!(
                    (f64::from(g) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{rows}x{inp}x{out} [{r},{o}]: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn both_kernels_match_a_float64_matmul() {
        let mut rng = crate::model::Rng::new(5);
        // Shapes with partial and several row tiles, each column tail (4, 3, 2, 1) and more than one task.
        for shape @ (rows, inp, out) in [(1, 2, 1), (9, 64, 12), (70, 130, 61), (64, 256, 100), (40, 34, 9), (3, 8, 8)]
        {
            let x: Vec<f32> =
                (0..rows * inp).map(|_| crate::model::round_bf16(rng.next_f64() as f32 * 4.0 - 2.0)).collect();
            let w: Vec<f32> = (0..out * inp).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let bits: Vec<u16> = w.iter().map(|v| bf16_bits(*v)).collect();
            match matmul_t_prefill(&x, rows, inp, WeightBits::F32(&w), out, false) {
                Some(y) => assert_matmul(&y, &x, &w, shape),
                None => assert!(!supported(false), "float32 weights are taken wherever AVX-512 is"),
            }
            match matmul_t_prefill(&x, rows, inp, WeightBits::Bf16(&bits), out, false) {
                Some(y) => assert_matmul(&y, &x, &widen(&bits), shape),
                None => assert!(!supported(true), "bfloat16 inputs are taken wherever AVX512-BF16 is"),
            }
        }
    }

    #[test]
    fn several_layers_in_one_pass_equal_each_alone_and_round_as_round_bf16() {
        let mut rng = crate::model::Rng::new(9);
        let (rows, inp) = (70, 66);
        let x: Vec<f32> = (0..rows * inp).map(|_| crate::model::round_bf16(rng.next_f64() as f32 - 0.5)).collect();
        // Output sizes with a partial task, a column tail and a layer smaller than one task.
        let outs = [50, 7, 24];
        let f32s: Vec<Vec<f32>> =
            outs.iter().map(|&out| (0..out * inp).map(|_| rng.next_f64() as f32 - 0.5).collect()).collect();
        let bf16s: Vec<Vec<u16>> = f32s.iter().map(|w| w.iter().map(|v| bf16_bits(*v)).collect()).collect();
        let kinds: [Vec<WeightBits<'_>>; 2] =
            [f32s.iter().map(|w| WeightBits::F32(w)).collect(), bf16s.iter().map(|w| WeightBits::Bf16(w)).collect()];
        for (bf16, kind) in kinds.into_iter().enumerate() {
            let layers: Vec<_> = kind.into_iter().zip(outs).collect();
            let Some(rounded) = matmul_t_prefill_many(&x, rows, inp, &layers, true) else {
                assert!(!supported(bf16 == 1), "the kernels take these layers wherever the CPU has them");
                continue;
            };
            for (&(w, out), rounded) in layers.iter().zip(&rounded) {
                let alone = matmul_t_prefill(&x, rows, inp, w, out, false).unwrap();
                let want: Vec<u32> = alone.iter().map(|v| crate::model::round_bf16(*v).to_bits()).collect();
                assert_eq!(rounded.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
            }
        }
        // float32 and bfloat16 weights in one call are declined.
        let mixed = [(WeightBits::F32(&f32s[0]), 50), (WeightBits::Bf16(&bf16s[1]), 7)];
        assert!(matmul_t_prefill_many(&x, rows, inp, &mixed, false).is_none());
    }

    #[test]
    fn rounds_ties_to_even_and_keeps_nan() {
        // 1 + 2^-8 is halfway between two bfloat16 values (ties to 1.0); 1 + 3·2^-8 ties up to 1 + 2^-6.
        let values = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.7, 1e-40, f32::MAX, f32::NAN, f32::INFINITY];
        let x: Vec<f32> = values.iter().flat_map(|v| [*v, 0.0]).collect();
        // float32 weights, so that `x` may hold any value: y = x[r][0] · 1 + x[r][1] · 0.
        let Some(y) = matmul_t_prefill(&x, values.len(), 2, WeightBits::F32(&[1.0, 0.0]), 1, true) else {
            return assert!(!supported(false));
        };
        for (v, got) in values.iter().zip(&y) {
            let want = crate::model::round_bf16(*v);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{v}: {got} vs {want}");
        }
    }

    #[test]
    fn declines_bfloat16_inputs_it_cannot_multiply_exactly() {
        let w = vec![bf16_bits(1.0); 4 * 6];
        // 0.1 is not a bfloat16 value; an odd inner size has no pairs.
        assert!(matmul_t_prefill(&[0.1, 1.0, 2.0, 3.0, 4.0, 5.0], 1, 6, WeightBits::Bf16(&w), 4, false).is_none());
        assert!(matmul_t_prefill(&[1.0, 2.0, 3.0], 1, 3, WeightBits::Bf16(&w[..12]), 4, false).is_none());
        // One inexact value anywhere in a row is found, in the second of 70 rows.
        let w = vec![bf16_bits(1.0); 2 * 40];
        for at in [0, 20, 31, 37, 39] {
            let mut x = vec![1.5f32; 70 * 40];
            assert!(matmul_t_prefill(&x, 70, 40, WeightBits::Bf16(&w), 2, false).is_some() || !supported(true));
            x[40 + at] = 0.1;
            assert!(matmul_t_prefill(&x, 70, 40, WeightBits::Bf16(&w), 2, false).is_none(), "value {at}");
        }
        let q = [1i8; 4];
        assert!(matmul_t_prefill(&[1.0, 2.0], 1, 2, WeightBits::Int8 { q: &q, scale: &[1.0, 1.0] }, 2, false).is_none());
    }
}
