//! The bfloat16 passes' inner loops, 16 lanes at a time on AVX-512 (checked at run time) and one value at a time
//! elsewhere. The vector math rounds exactly like [`round_bf16`]; its exponential is within two units in the last
//! place of float32 (as are the vectorised exponentials PyTorch's CPU kernels use), which now and then moves
//! SiLU's rounding to bfloat16 by one step, and RMSNorm sums its squares in another order.

use std::mem::MaybeUninit;

use super::ops::{round_bf16, silu};

/// `out[i] = round(round(silu(gate[i])) · up[i])`, rounding to bfloat16: the SwiGLU product as a bfloat16
/// transformers computes it. All three slices have one length.
pub(super) fn silu_mul_bf16(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512.
        return unsafe { x86::silu_mul_bf16(gate, up, out) };
    }
    assert!(gate.len() == out.len() && up.len() == out.len());
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        o.write(round_bf16(round_bf16(silu(*g)) * u));
    }
}

/// Rotary embedding of one head's row `x` (`d` values, even), rounding to bfloat16 where transformers does:
/// `out = round(round(x · cos) + round(rotate_half(x) · sin))` with `rotate_half(x) = (-x2, x1)` for the halves
/// `x1`, `x2`. `cos`, `sin` and `out` have `d` values.
pub(super) fn rotary_row_bf16(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512.
        return unsafe { x86::rotary_row_bf16(x, cos, sin, out) };
    }
    let d = x.len();
    assert!(d.is_multiple_of(2) && cos.len() == d && sin.len() == d && out.len() == d);
    let half = d / 2;
    for (j, o) in out.iter_mut().enumerate() {
        let rotated = if j < half { -x[j + half] } else { x[j - half] };
        o.write(round_bf16(round_bf16(x[j] * cos[j]) + round_bf16(rotated * sin[j])));
    }
}

/// RMSNorm of one row with bfloat16 rounding, as transformers computes it for a bfloat16 checkpoint:
/// `out = round(round(x / sqrt(mean(x²) + eps)) · w)`, the mean in float32. `w` and `out` are as long as `x`.
pub(super) fn rms_row_bf16(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512.
        return unsafe { x86::rms_row_bf16(x, w, eps, out) };
    }
    assert!(w.len() == x.len() && out.len() == x.len());
    let scale = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        o.write(round_bf16(round_bf16(v / scale) * w));
    }
}

/// Whether this CPU runs the vector code here.
#[cfg(target_arch = "x86_64")]
fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// The AVX-512 code: callers check [`available`] first.
#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Each lane rounded to the nearest bfloat16 (ties to even), as [`crate::model::round_bf16`] does: a NaN
    /// stays as it is.
    #[target_feature(enable = "avx512f")]
    pub fn round_bf16(x: __m512) -> __m512 {
        let bits = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let up = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
        let rounded = _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(0xffff_0000_u32 as i32)));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_blend_ps(nan, rounded, x)
    }

    /// `e^x` in each lane, within 2 units in the last place of float32: infinity above about 88.7, zero (through
    /// the subnormals) below about -103.3, and NaN for NaN.
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        // Past these bounds the result is infinite or zero anyway; clamping keeps the reduction below exact.
        // `min`/`max` return their second operand when either is NaN, so NaN passes through.
        let x = _mm512_max_ps(_mm512_set1_ps(-104.0), _mm512_min_ps(_mm512_set1_ps(89.0), x));
        // x = n ln 2 + r with |r| <= ln 2 / 2; ln 2 in two parts, the first with few enough bits that n times
        // it is exact.
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        // e^r by its Taylor series to r^7 (truncation below 1e-8 relative on this interval), Horner's rule.
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for k in [720.0f32, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / k));
        }
        // p · 2^n, with overflow to infinity and underflow through the subnormals to zero.
        _mm512_scalef_ps(p, n)
    }

    /// [`super::silu_mul_bf16`], with [`exp`].
    #[target_feature(enable = "avx512f")]
    pub fn silu_mul_bf16(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
        assert!(gate.len() == out.len() && up.len() == out.len());
        for first in (0..out.len()).step_by(16) {
            let mask = lanes_from(first, out.len());
            // SAFETY: the mask covers only elements below the slices' common length.
            unsafe {
                let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(first));
                let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(first));
                let e = exp(negate(g));
                let silu = round_bf16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e)));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(first).cast(), mask, round_bf16(_mm512_mul_ps(silu, u)));
            }
        }
    }

    /// [`super::rotary_row_bf16`]: both halves of the row 16 lanes at a time.
    #[target_feature(enable = "avx512f")]
    pub fn rotary_row_bf16(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [MaybeUninit<f32>]) {
        let d = x.len();
        assert!(d.is_multiple_of(2) && cos.len() == d && sin.len() == d && out.len() == d);
        let half = d / 2;
        let term = |a: __m512, c: __m512, b: __m512, s: __m512| {
            round_bf16(_mm512_add_ps(round_bf16(_mm512_mul_ps(a, c)), round_bf16(_mm512_mul_ps(b, s))))
        };
        for j in (0..half).step_by(16) {
            let mask = lanes_from(j, half);
            // SAFETY: the mask covers only elements below `half`, and each slice has `2 · half` values.
            unsafe {
                let load = |v: &[f32], at: usize| _mm512_maskz_loadu_ps(mask, v.as_ptr().add(at));
                let (x1, x2) = (load(x, j), load(x, half + j));
                let low = term(x1, load(cos, j), negate(x2), load(sin, j));
                let high = term(x2, load(cos, half + j), x1, load(sin, half + j));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(j).cast(), mask, low);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(half + j).cast(), mask, high);
            }
        }
    }

    /// [`super::rms_row_bf16`]: the squares summed in 16 lanes, then across them.
    #[target_feature(enable = "avx512f")]
    pub fn rms_row_bf16(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
        let n = x.len();
        assert!(w.len() == n && out.len() == n);
        let mut squares = _mm512_setzero_ps();
        for first in (0..n).step_by(16) {
            // SAFETY: the mask covers only elements below `n`.
            let v = unsafe { _mm512_maskz_loadu_ps(lanes_from(first, n), x.as_ptr().add(first)) };
            squares = _mm512_fmadd_ps(v, v, squares);
        }
        let scale = _mm512_set1_ps((_mm512_reduce_add_ps(squares) / n as f32 + eps).sqrt());
        for first in (0..n).step_by(16) {
            let mask = lanes_from(first, n);
            // SAFETY: the mask covers only elements below the slices' common length.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(first));
                let w = _mm512_maskz_loadu_ps(mask, w.as_ptr().add(first));
                let y = round_bf16(_mm512_mul_ps(round_bf16(_mm512_div_ps(v, scale)), w));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(first).cast(), mask, y);
            }
        }
    }

    /// `-x` in each lane (the sign bit flipped, as scalar negation does).
    #[target_feature(enable = "avx512f")]
    fn negate(x: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)))
    }

    /// The lanes of a 16-wide vector that start at `first` and lie below `len`.
    #[target_feature(enable = "avx512f")]
    fn lanes_from(first: usize, len: usize) -> __mmask16 {
        let n = (len - first).min(16);
        ((1u32 << n) - 1) as __mmask16
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    use super::*;

    /// `f` applied to 16 values at a time.
    fn lanes(values: &[f32], f: unsafe fn(__m512) -> __m512) -> Vec<f32> {
        values
            .chunks(16)
            .flat_map(|chunk| {
                let mut v = [0f32; 16];
                v[..chunk.len()].copy_from_slice(chunk);
                // SAFETY: the callers check `available()`; the array has 16 values.
                let out: [f32; 16] = unsafe { std::mem::transmute(f(_mm512_loadu_ps(v.as_ptr()))) };
                out[..chunk.len()].to_vec()
            })
            .collect()
    }

    #[test]
    fn rounding_equals_the_scalar_rounding() {
        if !available() {
            return;
        }
        let mut rng = crate::model::Rng::new(3);
        let mut values: Vec<f32> = (0..4096).map(|_| f32::from_bits(rng.next_u64() as u32)).collect();
        // Ties both ways, the largest finite value (rounds to infinity), subnormals, infinities.
        values.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MAX, 1e-40, -1e-45, f32::INFINITY, -0.0]);
        let got = lanes(&values, x86::round_bf16);
        for (v, g) in values.iter().zip(got) {
            let want = crate::model::round_bf16(*v);
            assert!(g.to_bits() == want.to_bits() || (v.is_nan() && g.is_nan()), "{v:e}: {g:e} vs {want:e}");
        }
    }

    #[test]
    fn exp_is_within_two_ulps_of_float64_exp() {
        if !available() {
            return;
        }
        let mut rng = crate::model::Rng::new(4);
        let mut values: Vec<f32> = (0..20_000).map(|_| (rng.next_f64() * 220.0 - 115.0) as f32).collect();
        values.extend((0..2000).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32));
        values.extend([0.0, -0.0, 88.7, 88.8, -87.0, -100.0, -103.0, -110.0, 1e30, -1e30]);
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        let got = lanes(&values, x86::exp);
        for (v, g) in values.iter().zip(got) {
            let want = (f64::from(*v)).exp() as f32;
            if v.is_nan() {
                assert!(g.is_nan());
                continue;
            }
            // Units in the last place, counted as the distance between the bit patterns of positive floats.
            let ulps = (i64::from(g.to_bits()) - i64::from(want.to_bits())).abs();
            assert!(ulps <= 2, "exp({v:e}) = {g:e}, want {want:e} ({ulps} ulps)");
        }
    }

    /// A pass's inner loop: two inputs, one output as long as the first input.
    type Pass = fn(&[f32], &[f32], &mut [MaybeUninit<f32>]);

    /// `f(a, b)`'s output.
    fn run(f: Pass, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![MaybeUninit::new(f32::NAN); a.len()];
        f(a, b, &mut out);
        // SAFETY: initialised above.
        out.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    /// `n` random bfloat16 values in `-scale..scale`.
    fn values(n: usize, scale: f64, rng: &mut crate::model::Rng) -> Vec<f32> {
        (0..n).map(|_| crate::model::round_bf16(((rng.next_f64() * 2.0 - 1.0) * scale) as f32)).collect()
    }

    #[test]
    fn silu_product_equals_the_scalar_one() {
        let scalar: Pass = |g, u, out| {
            for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                o.write(crate::model::round_bf16(crate::model::round_bf16(silu(*g)) * u));
            }
        };
        let mut rng = crate::model::Rng::new(6);
        let (mut same, mut all) = (0, 0);
        // Every length up to 40 (partial vectors), and many values.
        for len in (0..40).chain([4096]) {
            let (gate, up) = (values(len, 8.0, &mut rng), values(len, 8.0, &mut rng));
            let (got, want) = (run(silu_mul_bf16, &gate, &up), run(scalar, &gate, &up));
            for (g, w) in got.iter().zip(&want) {
                // The exponentials differ by an ulp or two, which moves a rounding to bfloat16 at most one step.
                let steps = (i64::from(g.to_bits()) - i64::from(w.to_bits())).abs() >> 16;
                assert!(steps <= 1 && g.to_bits() & 0xffff == 0, "{g:e} vs {w:e}");
                same += usize::from(g.to_bits() == w.to_bits());
            }
            all += len;
        }
        assert!(same * 1000 >= all * 999, "{same} of {all} equal");
    }

    #[test]
    fn rotary_row_equals_the_scalar_one() {
        // The second input holds the tables: cos then sin.
        let scalar: Pass = |x, tables, out| {
            let (d, r) = (x.len(), crate::model::round_bf16);
            let (cos, sin) = tables.split_at(d);
            for (j, o) in out.iter_mut().enumerate() {
                let rotated = if j < d / 2 { -x[j + d / 2] } else { x[j - d / 2] };
                o.write(r(r(x[j] * cos[j]) + r(rotated * sin[j])));
            }
        };
        let vector: Pass = |x, tables, out| {
            let (cos, sin) = tables.split_at(x.len());
            rotary_row_bf16(x, cos, sin, out)
        };
        let mut rng = crate::model::Rng::new(7);
        for d in (2..=80).step_by(2).chain([128]) {
            let (x, tables) = (values(d, 2.0, &mut rng), values(2 * d, 1.0, &mut rng));
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
            assert_eq!(bits(run(vector, &x, &tables)), bits(run(scalar, &x, &tables)), "d = {d}");
        }
    }

    #[test]
    fn rms_row_is_the_scalar_one_up_to_the_order_of_the_sum() {
        let mut rng = crate::model::Rng::new(8);
        let (mut same, mut all) = (0, 0);
        for n in (1..40).chain([2048]) {
            let (x, w) = (values(n, 3.0, &mut rng), values(n, 2.0, &mut rng));
            let mut got = vec![MaybeUninit::new(f32::NAN); n];
            rms_row_bf16(&x, &w, 1e-5, &mut got);
            let scale = (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / n as f64 + 1e-5).sqrt();
            for ((g, v), w) in got.into_iter().zip(&x).zip(&w) {
                // SAFETY: initialised above.
                let g = unsafe { g.assume_init() };
                let r = crate::model::round_bf16;
                let want = r(r((f64::from(*v) / scale) as f32) * w);
                // A float32 sum in another order may move a rounding to bfloat16 by one step.
                let steps = (i64::from(g.to_bits()) - i64::from(want.to_bits())).abs() >> 16;
                assert!(steps <= 1 && g.to_bits() & 0xffff == 0, "n = {n}: {g:e} vs {want:e}");
                same += usize::from(g.to_bits() == want.to_bits());
            }
            all += n;
        }
        assert!(same * 100 >= all * 99, "{same} of {all} equal");
    }
}
