//! UNIFORM_8BIT: 256 equal-width buckets spanning ±3 standard deviations around the mean
//! (hivemind/compression/quantization.py Uniform8BitQuantization, `allow_inplace=False`).
//!
//! index = clamp(round_half_even((x − mean) / scale) + 128, 0, 255) with
//! scale = 6·std_unbiased/256, as `torch.quantize_per_tensor(.., zero_point=128, quint8)`
//! computes it (multiplying by the float32 reciprocal of the scale); the codebook holds the
//! mean of the original values in each bucket.

use super::codebook::encode_with_block_means;
use super::parallel::{par_sum, sum_f64, sum_sq_centered};
use super::{unsupported, Result};
use crate::tensor::{DType, TensorView};

const RANGE_IN_SIGMAS: f32 = 6.0;
const ZERO_POINT: f32 = 128.0;

pub(super) fn encode(view: &TensorView<'_>, buf: &mut Vec<u8>) -> Result<()> {
    if view.dtype() != DType::F32 {
        return Err(unsupported("UNIFORM_8BIT", view.dtype(), "hivemind quantizes only float32 this way"));
    }
    let values = view.to_f32();
    let (mean, scale) = mean_and_scale(&values);
    if !(scale.is_finite() && scale > 0.0) {
        // Every value sits at the mean (or there is a single one): all go to the zero bucket.
        encode_with_block_means(&values, buf, |_, out| out.fill(ZERO_POINT as u8));
        return Ok(());
    }
    let inv = 1.0 / scale;
    encode_with_block_means(&values, buf, |values, out| quantize(values, mean, inv, out));
    Ok(())
}

/// The mean and the bucket width: 6 unbiased standard deviations over 256 buckets.
fn mean_and_scale(values: &[f32]) -> (f32, f32) {
    let n = values.len();
    let mean = (par_sum(values, sum_f64) / n as f64) as f32;
    let sq = par_sum(values, |piece| sum_sq_centered(piece, mean));
    let std = (sq.sqrt() as f32) / (((n as f64) - 1.0).sqrt() as f32);
    (mean, RANGE_IN_SIGMAS * std / 256.0)
}

/// Writes the bucket index of each value into `out`, given the mean and 1 / scale.
fn quantize(values: &[f32], mean: f32, inv: f32, out: &mut [u8]) {
    // Adding 1.5·2^23 rounds a float32 in [-128, 127] half-to-even to an integer r, which the low
    // byte of the sum's bits then holds in two's complement: no libm call and no float-to-int
    // conversion, so the loop vectorizes.
    const ROUND: f32 = 12_582_912.0;
    for (q, &x) in out.iter_mut().zip(values) {
        let d = (x - mean) * inv;
        // NaN goes to the zero point.
        let clamped = if d.is_nan() { 0.0 } else { d.clamp(-ZERO_POINT, 127.0) };
        *q = ((clamped + ROUND).to_bits() as u8) ^ 0x80;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_round_half_to_even_and_clamp_like_quantize_per_tensor() {
        let (mean, inv) = (0.25f32, 2.0f32);
        let mut values: Vec<f32> = (-700..700).map(|i| i as f32 / 8.0 + mean).collect();
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, mean + 0.25, mean - 0.75]);
        let mut got = vec![0u8; values.len()];
        quantize(&values, mean, inv, &mut got);
        for (&x, &q) in values.iter().zip(&got) {
            let scaled = (x - mean) * inv;
            let expected =
                if scaled.is_nan() { 128 } else { (scaled.round_ties_even() + 128.0).clamp(0.0, 255.0) as u8 };
            assert_eq!(q, expected, "value {x}");
        }
    }
}
