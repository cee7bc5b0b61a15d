//! QUANTILE_8BIT: 256 buckets bounded by approximate quantiles, each decoded to its mean
//! (hivemind/compression/quantization.py Quantile8BitQuantization).
//!
//! Like hivemind: the flattened float32 values are cut into balanced chunks of at least 10^5;
//! each chunk's 257 quantiles at j/256 are taken with numpy's "linear" method (float32 virtual
//! indices, float64 interpolation weights, float32 results); the 257 quantiles of all those
//! (kept in float64) give 255 inner borders; `index = #borders < x`.

use super::codebook::{encode_with, BINS};
use super::keys::{order_key, KeyCounter};
use super::parallel::par_chunks;
use super::{unsupported, Result};
use crate::tensor::{DType, TensorView};

const MIN_CHUNK: usize = 100_000;
const QUANTILES: usize = BINS + 1;

pub(super) fn encode(view: &TensorView<'_>, buf: &mut Vec<u8>) -> Result<()> {
    if view.dtype() == DType::BF16 {
        return Err(unsupported("QUANTILE_8BIT", DType::BF16, "hivemind peers cannot decode it"));
    }
    encode_with(&view.to_f32(), buf, quantize);
    Ok(())
}

/// hivemind's `get_chunk_size`: chunks of at least `min` that split `n` evenly.
fn chunk_size(n: usize, min: usize) -> usize {
    if min >= n {
        return min;
    }
    let (chunks, leftover) = (n / min, n % min);
    if leftover == 0 {
        min
    } else {
        min + (leftover - 1) / chunks + 1
    }
}

/// Writes the bucket index of each value into `out`.
fn quantize(values: &[f32], out: &mut [u8]) {
    if values.is_empty() {
        return;
    }
    let chunk = chunk_size(values.len(), MIN_CHUNK);
    let mut partition = vec![0f32; values.len().div_ceil(chunk) * QUANTILES];
    par_chunks(values, chunk, &mut partition, QUANTILES, 1, |_, parts, out| {
        let mut scratch = Vec::new();
        for (part, row) in parts.chunks(chunk).zip(out.chunks_mut(QUANTILES)) {
            let sorted = sort_f32(part, &mut scratch);
            for (o, q) in row.iter_mut().zip(linear_quantiles(sorted)) {
                *o = q as f32;
            }
        }
    });
    let mut scratch = Vec::new();
    let all = sort_f32(&partition, &mut scratch);
    let quantiles: Vec<f64> = linear_quantiles(all).collect();
    let buckets = Buckets::new(&quantiles[1..BINS]);
    par_chunks(values, 1, out, 1, 1 << 18, |_, v, o| {
        for (q, &x) in o.iter_mut().zip(v) {
            *q = buckets.index(x);
        }
    });
}

/// torch.bucketize against float64 borders, for float32 values: the number of borders below x.
///
/// For a float32 x, `x > b` (compared in float64) holds exactly when `x > t`, where t is the
/// largest float32 not above b; so each border becomes the order key of its t.
struct Buckets(KeyCounter);

impl Buckets {
    fn new(borders: &[f64]) -> Buckets {
        let mut keys: Vec<u32> =
            borders.iter().map(|&b| if b.is_nan() { u32::MAX } else { order_key(round_down_f32(b)) }).collect();
        keys.sort_unstable();
        Buckets(KeyCounter::new(keys))
    }

    #[inline]
    fn index(&self, x: f32) -> u8 {
        if x.is_nan() {
            return 0;
        }
        self.0.count_below(order_key(x)) as u8
    }
}

/// The largest float32 that is not above `b` (+0.0 when that is a zero of either sign, since
/// `x > ±0` means the same for both).
fn round_down_f32(b: f64) -> f32 {
    let t = b as f32;
    let t = if f64::from(t) > b { next_down(t) } else { t };
    if t == 0.0 {
        0.0
    } else {
        t
    }
}

fn next_down(t: f32) -> f32 {
    if t == f32::NEG_INFINITY || t.is_nan() {
        return t;
    }
    if t == 0.0 {
        return -f32::from_bits(1);
    }
    let bits = t.to_bits();
    f32::from_bits(if t > 0.0 { bits - 1 } else { bits + 1 })
}

/// numpy's `np.quantile(sorted, linspace(0, 1, 257, dtype=float32))`, method "linear", for
/// float32 data: returns each quantile in float64 before the final cast. A NaN makes every
/// quantile NaN, as numpy sorts NaN last and then propagates it.
fn linear_quantiles(sorted: &[f32]) -> impl Iterator<Item = f64> + '_ {
    let n = sorted.len();
    let last = sorted[n - 1];
    let has_nan = last.is_nan();
    (0..QUANTILES).map(move |j| {
        if has_nan {
            return f64::NAN;
        }
        let q = j as f32 / (QUANTILES - 1) as f32;
        let virtual_index = (n - 1) as f32 * q;
        let (a, b, gamma) = if virtual_index >= (n - 1) as f32 {
            (last, last, f64::from(virtual_index) + 1.0)
        } else {
            let prev = virtual_index.floor();
            let i = prev as usize;
            (sorted[i], sorted[i + 1], f64::from(virtual_index) - f64::from(prev))
        };
        let diff = b - a;
        if gamma >= 0.5 {
            f64::from(b) - f64::from(diff) * (1.0 - gamma)
        } else {
            f64::from(a) + f64::from(diff) * gamma
        }
    })
}

/// Sorts a copy of `values` (NaN last) with an 11-bit LSD radix sort on order-preserving keys.
fn sort_f32<'a>(values: &[f32], scratch: &'a mut Vec<u32>) -> &'a [f32] {
    const BITS: u32 = 11;
    const RADIX: usize = 1 << BITS;
    let n = values.len();
    let mut keys: Vec<u32> = values.iter().map(|&v| order_key(v)).collect();
    scratch.clear();
    scratch.resize(n, 0);
    let mut hist = [[0usize; RADIX]; 3];
    for &k in &keys {
        for (pass, h) in hist.iter_mut().enumerate() {
            h[((k >> (pass as u32 * BITS)) as usize) & (RADIX - 1)] += 1;
        }
    }
    for h in hist.iter_mut() {
        let mut total = 0;
        for c in h.iter_mut() {
            let count = *c;
            *c = total;
            total += count;
        }
    }
    let [h0, h1, h2] = &mut hist;
    scatter(&keys, scratch, h0, 0);
    scatter(scratch, &mut keys, h1, BITS);
    scatter(&keys, scratch, h2, 2 * BITS);
    for k in scratch.iter_mut() {
        *k = if *k >> 31 == 1 { *k & 0x7FFF_FFFF } else { !*k };
    }
    bytemuck::cast_slice(&scratch[..])
}

/// One stable counting-sort pass on the digit at `shift`; `offsets` are the digit's start slots.
fn scatter(src: &[u32], dst: &mut [u32], offsets: &mut [usize], shift: u32) {
    let mask = offsets.len() - 1;
    for &k in src {
        let slot = &mut offsets[((k >> shift) as usize) & mask];
        dst[*slot] = k;
        *slot += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_hivemind() {
        assert_eq!(chunk_size(10, 100_000), 100_000);
        assert_eq!(chunk_size(300_000, 100_000), 100_000);
        // 250 001 = 2 chunks + 50 001 left over: each chunk grows by ceil(50 001 / 2).
        assert_eq!(chunk_size(250_001, 100_000), 125_001);
    }

    #[test]
    fn radix_sort_orders_signed_values_and_nan_last() {
        let values = [3.0f32, -0.5, f32::NAN, -7.25, 0.0, 1e-30, -1e30, 2.5];
        let mut scratch = Vec::new();
        let sorted = sort_f32(&values, &mut scratch).to_vec();
        assert_eq!(&sorted[..7], &[-1e30, -7.25, -0.5, 0.0, 1e-30, 2.5, 3.0]);
        assert!(sorted[7].is_nan());
    }

    #[test]
    fn bucket_lookup_agrees_with_float64_comparison() {
        let borders: Vec<f64> = (0..255).map(|i| (f64::from(i) - 127.0) * 0.013 + 1e-9 * f64::from(i % 3)).collect();
        let mut borders = borders;
        borders[100] = 0.0;
        borders[101] = borders[100];
        borders.sort_by(f64::total_cmp);
        let buckets = Buckets::new(&borders);
        let mut x = -2.0f32;
        while x < 2.0 {
            for v in [x, -0.0, 0.0, f32::from_bits(1), -f32::from_bits(1)] {
                let expected = borders.iter().filter(|&&b| b < f64::from(v)).count();
                assert_eq!(buckets.index(v) as usize, expected, "x = {v}");
            }
            x += 0.000_37;
        }
    }

    #[test]
    fn linear_quantiles_interpolate_like_numpy() {
        // np.quantile([0,1,2,3,4], j/256) for j = 0, 64, 128, 255, 256 is 0, 1, 2, 3.984375, 4.
        let q: Vec<f64> = linear_quantiles(&[0.0, 1.0, 2.0, 3.0, 4.0]).collect();
        assert_eq!([q[0], q[64], q[128], q[255], q[256]], [0.0, 1.0, 2.0, 3.984375, 4.0]);
    }
}
