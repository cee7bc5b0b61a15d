//! Building blocks shared by the families: linear layers, norms, rotary and ALiBi positions, attention.
//!
//! Each op has a fast path (candle's fused CPU kernels) and a path built from differentiable primitives, taken
//! when the input is tracked for backward.

use candle_core::{DType, Device, Storage, Tensor, D};
use half::slice::HalfFloatSliceExt;

use std::mem::MaybeUninit;
use std::sync::Arc;

use super::gemm::matmul_t_prefill_many;
use super::kernels::{matmul_t, widen_bf16, Int8Weight, WeightBits, MAX_ROWS};
use super::threads::for_each_chunk_mut;

use super::config::RopeScaling;
use super::simd;
use crate::Result;

/// Values from which an elementwise pass (rounding) is split across threads.
const ROUND_PARALLEL_MIN: usize = 1 << 16;
/// Size of the float32 slab a bfloat16 weight is widened into for many-row matmuls.
const BF16_SLAB_BYTES: usize = 4 << 20;

/// A dense layer: `y = x W^T + b`, with `W` of shape (out, in), stored as float32 or bfloat16 (`weight`), or
/// as 8-bit integers (`int8`, then `weight` is unused).
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) int8: Option<Arc<Int8Weight>>,
}

impl Linear {
    /// A layer over float32 or bfloat16 weights, optionally quantized to 8 bits.
    pub fn new(weight: Tensor, bias: Option<Tensor>, quantize: bool) -> Result<Self> {
        if !quantize {
            return Ok(Linear { weight, bias, int8: None });
        }
        let (out, inp) = weight.dims2()?;
        let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let int8 = Int8Weight::quantize(&w, out, inp);
        let placeholder = Tensor::zeros((out, 0), DType::F32, &Device::Cpu)?;
        Ok(Linear { weight: placeholder, bias, int8: Some(Arc::new(int8)) })
    }

    /// Applies the layer to `x` of shape (..., in), rounding the result.
    pub fn forward_r(&self, x: &Tensor, round: Rounding) -> Result<Tensor> {
        Ok(Self::forward_each_r(&[self], x, round)?.remove(0))
    }

    /// Applies each of `layers` to the same `x` of shape (..., in), rounding the results. Over many rows the
    /// prefill kernel runs them all in one pass where it can (and rounds to bfloat16 as it writes).
    pub fn forward_each_r(layers: &[&Linear], x: &Tensor, round: Rounding) -> Result<Vec<Tensor>> {
        let (ys, rounded) = Self::apply_each(layers, x, round.0 == Some(DType::BF16))?;
        match rounded {
            true => Ok(ys),
            false => ys.into_iter().map(|y| round.r(y)).collect(),
        }
    }

    /// Each of `layers` applied to `x` (..., in), as (..., out) float32 with the biases added, and whether the
    /// values came out rounded to bfloat16: the prefill kernel rounds as it writes if `round_bf16` asks for it
    /// and no layer adds a bias afterwards.
    fn apply_each(layers: &[&Linear], x: &Tensor, round_bf16: bool) -> Result<(Vec<Tensor>, bool)> {
        let dims = x.dims();
        let inner = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let in_kernel = round_bf16 && layers.iter().all(|l| l.bias.is_none());
        let fused = match rows > MAX_ROWS {
            true => Self::prefill_each(layers, &x.reshape((rows, inner))?, in_kernel)?,
            false => None,
        };
        let (products, rounded) = match fused {
            Some(ys) => (ys, in_kernel),
            None => (layers.iter().map(|l| l.product(x, rows, inner)).collect::<Result<_>>()?, false),
        };
        let ys = products
            .into_iter()
            .zip(layers)
            .map(|(y, l)| {
                let y = match &l.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                let mut shape = dims[..dims.len() - 1].to_vec();
                shape.push(y.dim(1)?);
                Ok(y.reshape(shape)?)
            })
            .collect::<Result<_>>()?;
        Ok((ys, rounded))
    }

    /// `x W^T` as (rows, out) float32 by the decode kernels, candle's matmul, or the 8-bit weights widened.
    fn product(&self, x: &Tensor, rows: usize, inner: usize) -> Result<Tensor> {
        let out = self.weight.dim(0)?;
        if let Some(y) = self.small_rows(x, rows, inner, out)? {
            return Ok(y);
        }
        let x2 = x.reshape((rows, inner))?;
        Ok(match (&self.int8, self.bf16_chunks(&x2)?) {
            (None, Some(y)) => y,
            (Some(q), _) => x2.matmul(&Tensor::from_vec(q.dequantize(), (q.out, q.inp), &Device::Cpu)?.t()?)?,
            (None, None) => x2.matmul(&self.weight.to_dtype(DType::F32)?.t()?)?,
        })
    }

    /// Calls `f` with the float32 or bfloat16 weight as stored; `None` for another dtype, or a weight not
    /// contiguous in CPU memory.
    fn with_weight_bits<T>(&self, f: impl FnOnce(WeightBits<'_>) -> T) -> Result<Option<T>> {
        let (storage, layout) = self.weight.storage_and_layout();
        Ok(weight_bits(&self.weight, &storage, layout)?.map(f))
    }

    /// `x W^T` for bfloat16 `W` and many rows where [`Linear::prefill_each`] declines: `W` is widened to float32 a
    /// slab of output rows at a time (so the float32 copy stays small and in cache) and each slab goes through
    /// the float32 matmul.
    fn bf16_chunks(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.weight.dtype() != DType::BF16 {
            return Ok(None);
        }
        let (out, inp) = self.weight.dims2()?;
        let slab = (BF16_SLAB_BYTES / (4 * inp)).clamp(16, out.max(16));
        let slabs = |w: WeightBits<'_>| -> Result<Option<Vec<Tensor>>> {
            let WeightBits::Bf16(bits) = w else {
                return Ok(None);
            };
            let slab_product = |first: usize| -> Result<Tensor> {
                let n = slab.min(out - first);
                let wide = widen_bf16(&bits[first * inp..(first + n) * inp]);
                Ok(x.matmul(&Tensor::from_vec(wide, (n, inp), &Device::Cpu)?.t()?)?)
            };
            (0..out).step_by(slab).map(slab_product).collect::<Result<_>>().map(Some)
        };
        match self.with_weight_bits(slabs)?.transpose()?.flatten() {
            Some(parts) => Ok(Some(Tensor::cat(&parts, 1)?)),
            None => Ok(None),
        }
    }

    /// The prefill path: many rows of float32 `x` (rows, in) without a gradient, through every layer in one
    /// pass of [`matmul_t_prefill_many`] (AVX-512), which reads float32 or bfloat16 weights as stored; `None`
    /// where it declines. With `round_bf16`, the results are rounded to bfloat16.
    fn prefill_each(layers: &[&Linear], x: &Tensor, round_bf16: bool) -> Result<Option<Vec<Tensor>>> {
        let stored = |l: &&Linear| l.int8.is_none() && matches!(l.weight.dtype(), DType::F32 | DType::BF16);
        if x.track_op() || x.dtype() != DType::F32 || !layers.iter().all(stored) {
            return Ok(None);
        }
        let (rows, inp) = x.dims2()?;
        let x = x.contiguous()?;
        // The weights' storage stays locked for reading while the kernel reads it.
        let held: Vec<_> = layers.iter().map(|l| l.weight.storage_and_layout()).collect();
        let mut weights = Vec::with_capacity(layers.len());
        for (l, (storage, layout)) in layers.iter().zip(&held) {
            match weight_bits(&l.weight, storage, layout)? {
                Some(bits) => weights.push((bits, l.weight.dim(0)?)),
                None => return Ok(None),
            }
        }
        let ys = with_f32_values(&x, |xs| matmul_t_prefill_many(xs, rows, inp, &weights, round_bf16))?.flatten();
        let tensor = |(y, &(_, out)): (Vec<f32>, _)| Ok(Tensor::from_vec(y, (rows, out), &Device::Cpu)?);
        ys.map(|ys| ys.into_iter().zip(&weights).map(tensor).collect()).transpose()
    }

    /// The decode path: a few rows, no gradient, weights streamed once by our kernels.
    fn small_rows(&self, x: &Tensor, rows: usize, inner: usize, out: usize) -> Result<Option<Tensor>> {
        if rows > MAX_ROWS || x.track_op() || !self.weight.is_contiguous() {
            return Ok(None);
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let y = match &self.int8 {
            Some(q) => Some(matmul_t(&xs, rows, inner, WeightBits::Int8 { q: &q.q, scale: &q.scale }, out)),
            None => self.with_weight_bits(|w| matmul_t(&xs, rows, inner, w, out))?,
        };
        Ok(y.map(|y| Tensor::from_vec(y, (rows, out), &Device::Cpu)).transpose()?)
    }
}

/// RMSNorm as in Llama: `x / sqrt(mean(x^2) + eps) * w`; with rounding, the normalised value and the product
/// are each rounded, as transformers does.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, round: Rounding) -> Result<Tensor> {
    if round.0 == Some(DType::BF16) {
        if let Some(y) = rms_norm_bf16(x, w, eps)? {
            return Ok(y);
        }
    }
    if round.is_on() {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = round.r(x.broadcast_div(&(var + eps)?.sqrt()?)?)?;
        return round.r(normed.broadcast_mul(w)?);
    }
    if !x.track_op() && x.is_contiguous() {
        return Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?);
    }
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(w)?)
}

/// [`rms_norm`] with bfloat16 rounding in one parallel pass over rows of `x` read in place; `None` where it
/// does not apply (a gradient to carry, or not contiguous float32 on the CPU).
fn rms_norm_bf16(x: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let n = x.dim(D::Minus1)?;
    if x.track_op() || w.track_op() || w.dims() != [n] || w.dtype() != DType::F32 || n == 0 {
        return Ok(None);
    }
    let w = w.to_vec1::<f32>()?;
    // Whole rows per chunk.
    let chunk = (ROUND_PARALLEL_MIN / 2 / n).max(1) * n;
    let normed = with_f32_values(x, |x| {
        fill_values(x.len(), chunk, |first, dst| {
            for (dst, row) in dst.chunks_exact_mut(n).zip(x[first..].chunks_exact(n)) {
                simd::rms_row_bf16(row, &w, eps as f32, dst);
            }
        })
    })?;
    Ok(normed.map(|normed| Tensor::from_vec(normed, x.shape().clone(), &Device::Cpu)).transpose()?)
}

/// LayerNorm over the last dimension with weight and bias (one rounding of the result).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, round: Rounding) -> Result<Tensor> {
    if !x.track_op() && x.is_contiguous() {
        return round.r(candle_nn::ops::layer_norm(x, w, b, eps as f32)?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    round.r(normed.broadcast_mul(w)?.broadcast_add(b)?)
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() && x.is_contiguous() {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// `cos` and `sin` tables of shape (len, head_dim) for positions `start..start + len`, computed in float32 the
/// way transformers does (`inv_freq = 1 / base^(2i/d)`, `freqs = t * inv_freq`, `emb = cat(freqs, freqs)`).
pub fn rotary_tables(head_dim: usize, base: f64, pos_scale: f32, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
    tables_of(&inverse_frequencies(head_dim, base), pos_scale, start, len)
}

/// `1 / base^(2i/d)` for `i < d/2`, in float32.
fn inverse_frequencies(head_dim: usize, base: f64) -> Vec<f32> {
    let base = base as f32;
    (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Llama 3.1's frequencies (transformers' `_compute_llama3_parameters`, in float32): wavelengths
/// longer than `original / low` are divided by `factor`, shorter than `original / high` kept, and
/// the band between blended linearly in `original / wavelength`.
fn llama3_frequencies(inv: Vec<f32>, factor: f64, low: f64, high: f64, original: usize) -> Vec<f32> {
    let (factor, low, high, original) = (factor as f32, low as f32, high as f32, original as f32);
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    inv.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

fn tables_of(inv: &[f32], pos_scale: f32, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
    let head_dim = 2 * inv.len();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in start..start + len {
        let t = p as f32 / pos_scale;
        for _ in 0..2 {
            for f in inv {
                let a = t * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((Tensor::from_vec(cos, (len, head_dim), &Device::Cpu)?, Tensor::from_vec(sin, (len, head_dim), &Device::Cpu)?))
}

/// Rotary tables with transformers' scaling: linear divides positions by the factor; dynamic NTK grows the base
/// once `start + len` exceeds `max_positions`; llama3 rescales the frequencies by wavelength.
pub fn scaled_rotary_tables(
    head_dim: usize,
    theta: f64,
    scaling: Option<RopeScaling>,
    max_positions: usize,
    start: usize,
    len: usize,
) -> Result<(Tensor, Tensor)> {
    match scaling {
        None => rotary_tables(head_dim, theta, 1.0, start, len),
        Some(RopeScaling::Linear(f)) => rotary_tables(head_dim, theta, f as f32, start, len),
        Some(RopeScaling::Dynamic(f)) => {
            let total = start + len;
            let mut base = theta;
            if total > max_positions {
                let d = head_dim as f64;
                base *= (f * total as f64 / max_positions as f64 - (f - 1.0)).powf(d / (d - 2.0));
            }
            rotary_tables(head_dim, base, 1.0, start, len)
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions }) => {
            let inv = inverse_frequencies(head_dim, theta);
            let inv = llama3_frequencies(inv, factor, low_freq_factor, high_freq_factor, original_max_positions);
            tables_of(&inv, 1.0, start, len)
        }
    }
}

/// Applies rotary embeddings to `x` of shape (B, H, T, head_dim): `x * cos + rotate_half(x) * sin`. With
/// rounding, the tables, both products and the sum are rounded, as transformers does.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, round: Rounding) -> Result<Tensor> {
    if round.0 == Some(DType::BF16) {
        if let Some(y) = rotary_bf16(x, cos, sin)? {
            return Ok(y);
        }
    }
    if round.is_on() {
        let (cos, sin) = (round.r(cos.clone())?, round.r(sin.clone())?);
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let a = round.r(x.broadcast_mul(&cos)?)?;
        let b = round.r(rotated.broadcast_mul(&sin)?)?;
        return round.r((a + b)?);
    }
    if !x.track_op() {
        let half = x.dim(D::Minus1)? / 2;
        let c = cos.narrow(1, 0, half)?.contiguous()?;
        let s = sin.narrow(1, 0, half)?.contiguous()?;
        return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &c, &s)?);
    }
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok(x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)?)
}

/// [`apply_rotary`] with bfloat16 rounding, in one parallel pass that reads `x` (B, H, T, d) in place whatever
/// its strides and writes a contiguous result, rounding where the op-by-op path does: the tables, each product
/// and the sum. `None` where it does not apply: a gradient to carry, or not float32 on the CPU.
fn rotary_bf16(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if x.track_op() || x.dtype() != DType::F32 || !x.device().is_cpu() || cos.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, h, t, d) = x.dims4()?;
    if cos.dims2()? != (t, d) || sin.dims2()? != (t, d) || d % 2 != 0 {
        return Ok(None);
    }
    let table = |m: &Tensor| -> Result<Vec<f32>> {
        Ok(m.flatten_all()?.to_vec1::<f32>()?.into_iter().map(round_bf16).collect())
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let src = cpu.as_slice::<f32>()?;
    let (base, stride) = (layout.start_offset(), layout.stride());
    let len = b * h * t * d;
    let out = fill_values(len, t * d, |first, dst| {
        let head = first / (t * d);
        let head_start = base + (head / h) * stride[0] + (head % h) * stride[1];
        // A strided row is gathered here first (no allocation for contiguous rows).
        let mut row = Vec::new();
        for (p, dst) in dst.chunks_exact_mut(d).enumerate() {
            let start = head_start + p * stride[2];
            let x = match stride[3] {
                1 => &src[start..start + d],
                _ => {
                    row.clear();
                    row.extend((0..d).map(|j| src[start + j * stride[3]]));
                    &row
                }
            };
            simd::rotary_row_bf16(x, &cos[p * d..][..d], &sin[p * d..][..d], dst);
        }
    });
    drop(storage);
    Ok(Some(Tensor::from_vec(out, (b, h, t, d), &Device::Cpu)?))
}

/// ALiBi slopes for `num_heads` heads, as BLOOM and Falcon compute them (float32).
pub fn alibi_slopes(num_heads: usize) -> Vec<f32> {
    let closest = 1usize << (usize::BITS - 1 - num_heads.leading_zeros());
    let base = 2f32.powf(-(2f32.powf(-((closest as f32).log2() - 3.0))));
    let mut slopes: Vec<f32> = (1..=closest).map(|p| base.powi(p as i32)).collect();
    if closest != num_heads {
        let extra_base = 2f32.powf(-(2f32.powf(-((2.0 * closest as f32).log2() - 3.0))));
        let remaining = closest.min(num_heads - closest);
        slopes.extend((0..remaining).map(|i| extra_base.powi((2 * i + 1) as i32)));
    }
    slopes
}

/// Rounds to the nearest bfloat16 (ties to even), as `tensor.bfloat16()` does.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let rounding = 0x7fff + ((bits >> 16) & 1);
    f32::from_bits(bits.wrapping_add(rounding) & 0xffff_0000)
}

/// An ALiBi bias of shape (1, H, 1, S) for key positions `0..len`: `slope_h * j`, optionally rounded through
/// bfloat16 as Falcon does.
pub fn alibi_bias(slopes: &[f32], len: usize, bf16_rounding: bool, scale: f32) -> Result<Tensor> {
    let mut data = Vec::with_capacity(slopes.len() * len);
    for &s in slopes {
        for j in 0..len {
            let v = if bf16_rounding { round_bf16(round_bf16(s) * j as f32) } else { s * j as f32 };
            data.push(v * scale);
        }
    }
    Ok(Tensor::from_vec(data, (1, slopes.len(), 1, len), &Device::Cpu)?)
}

/// The float32 or bfloat16 weights of `w` as stored, given its storage and layout; `None` for another dtype, or
/// a weight not contiguous in CPU memory.
fn weight_bits<'a>(w: &Tensor, storage: &'a Storage, layout: &candle_core::Layout) -> Result<Option<WeightBits<'a>>> {
    let (Storage::Cpu(cpu), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    Ok(match w.dtype() {
        DType::F32 => Some(WeightBits::F32(&cpu.as_slice::<f32>()?[start..end])),
        DType::BF16 => Some(WeightBits::Bf16(cpu.as_slice::<half::bf16>()?[start..end].reinterpret_cast())),
        _ => None,
    })
}

/// Calls `f` with the values of a contiguous float32 CPU tensor, read in place; `None` for any other tensor.
fn with_f32_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<Option<T>> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    Ok(Some(f(&cpu.as_slice::<f32>()?[start..end])))
}

/// A new vector of `len` values written by `fill(first, part)` for parts of it of up to `chunk` values (`first`
/// is the part's offset; every part but the last is `chunk` long): in parallel over large lengths, and without
/// zeroing the vector first.
fn fill_values(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if len >= ROUND_PARALLEL_MIN {
        for_each_chunk_mut(spare, chunk, |i, part| fill(i * chunk, part));
    } else {
        spare.chunks_mut(chunk).enumerate().for_each(|(i, part)| fill(i * chunk, part));
    }
    // SAFETY: `fill` writes every element of its part, and the parts cover the first `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// `f` of every value, into a new vector (see [`fill_values`]).
fn map_values(values: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    fill_values(values.len(), ROUND_PARALLEL_MIN / 2, |first, chunk| {
        chunk.iter_mut().zip(&values[first..]).for_each(|(o, v)| {
            o.write(f(*v));
        })
    })
}

/// `round_bf16(f(a, b))` elementwise over two float32 CPU tensors of one shape, in one parallel pass that reads
/// both in place; `None` where it does not apply: rounding other than bfloat16, a gradient to carry, or inputs
/// that are not contiguous float32 tensors of equal shapes on the CPU.
fn zip_bf16(a: &Tensor, b: &Tensor, r: Rounding, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Option<Tensor>> {
    zip_parts_bf16(a, b, r, |a, b, out| {
        out.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| {
            o.write(round_bf16(f(*a, *b)));
        })
    })
}

/// [`zip_bf16`] with the pass's inner loop given: `fill(a_part, b_part, out_part)` writes every value of
/// `out_part` from the equally long parts of `a` and `b`.
fn zip_parts_bf16(
    a: &Tensor,
    b: &Tensor,
    r: Rounding,
    fill: impl Fn(&[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Result<Option<Tensor>> {
    if r.0 != Some(DType::BF16) || a.track_op() || b.track_op() || a.dims() != b.dims() {
        return Ok(None);
    }
    let values = with_f32_values(a, |a| {
        with_f32_values(b, |b| {
            fill_values(a.len(), ROUND_PARALLEL_MIN / 2, |first, part| {
                let n = part.len();
                fill(&a[first..first + n], &b[first..first + n], part)
            })
        })
    })?;
    let Some(values) = values.transpose()?.flatten() else {
        return Ok(None);
    };
    Ok(Some(Tensor::from_vec(values, a.shape().clone(), &Device::Cpu)?))
}

/// The SwiGLU product `round(round(silu(gate)) · up)` with bfloat16 rounding, in one parallel pass; `None` where
/// it does not apply (as for [`zip_bf16`]).
pub fn silu_mul_bf16(gate: &Tensor, up: &Tensor, r: Rounding) -> Result<Option<Tensor>> {
    zip_parts_bf16(gate, up, r, simd::silu_mul_bf16)
}

/// `a + b`, rounded: by [`zip_bf16`] where it applies.
pub fn add_rounded(a: &Tensor, b: &Tensor, r: Rounding) -> Result<Tensor> {
    match zip_bf16(a, b, r, |a, b| a + b)? {
        Some(sum) => Ok(sum),
        None => r.r((a + b)?),
    }
}

/// SiLU as candle computes it in float32: `v / (1 + e^-v)`.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// Where a half-precision checkpoint's reference rounds: transformers runs such checkpoints in their own dtype,
/// so each op's result is rounded to it. Our math stays float32; rounding at the same points keeps the results
/// equal to the reference's. `Rounding(None)` (float32 checkpoints) does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rounding(pub Option<DType>);

impl Rounding {
    /// Rounds a float32 tensor through the reference dtype. A bfloat16 rounding without a gradient to carry
    /// runs in one pass over a copy of the values ([`round_bf16`]) instead of two conversions.
    pub fn r(&self, t: Tensor) -> Result<Tensor> {
        match self.0 {
            Some(DType::BF16) if t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op() => {
                let t = t.contiguous()?;
                match with_f32_values(&t, |values| map_values(values, round_bf16))? {
                    Some(rounded) => Ok(Tensor::from_vec(rounded, t.shape().clone(), &Device::Cpu)?),
                    None => Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?),
                }
            }
            Some(dt) => Ok(t.to_dtype(dt)?.to_dtype(DType::F32)?),
            None => Ok(t),
        }
    }

    /// Whether rounding is on.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }
}

/// Dot-product attention with grouped key/value heads and a causal mask.
///
/// `q`: (B, H, T, d); `k`, `v`: (B, Hkv, S, d) with `S = past + T`. `logits` maps the raw scores `q k^T`
/// (B, H, T, S) to the pre-mask logits (scaling, position bias). The softmax runs in float32; its result and the
/// output are rounded by `round`. Returns (B, H, T, d).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    round: Rounding,
    logits: impl Fn(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, hkv, s, _) = k.dims4()?;
    let groups = h / hkv;
    let q = q.contiguous()?.reshape((b, hkv, groups * t, d))?;
    let scores = logits(q.matmul(&k.t()?)?.reshape((b, h, t, s))?)?;
    let scores = if t > 1 { scores.broadcast_add(&causal_mask(t, s)?)? } else { scores };
    let probs = round.r(softmax_last(&scores)?)?.reshape((b, hkv, groups * t, s))?;
    round.r(probs.matmul(v)?.reshape((b, h, t, d))?)
}

/// Additive causal mask (T, S): query `i` (at position `S - T + i`) sees keys `0..=S - T + i`.
fn causal_mask(t: usize, s: usize) -> Result<Tensor> {
    let past = s - t;
    let data: Vec<f32> =
        (0..t).flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(data, (t, s), &Device::Cpu)?)
}

/// The dtype all block math runs in: float32 (candle has no bfloat16 matmul on the CPU).
pub const COMPUTE_DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_bf16_rotary_rounds_as_the_op_by_op_path_on_strided_input() {
        let (b, t, h, d) = (2, 5, 3, 8);
        let r = Rounding(Some(DType::BF16));
        let (cos, sin) = rotary_tables(d, 10_000.0, 1.0, 3, t).unwrap();
        // Bfloat16 values laid out (B, T, H, d), seen as (B, H, T, d), as a block's projections are; and laid out
        // (B, H, d, T), whose rows are not contiguous.
        let by_tokens = r.r(Tensor::randn(0f32, 1.0, (b, t, h, d), &Device::Cpu).unwrap()).unwrap();
        let by_dims = r.r(Tensor::randn(0f32, 1.0, (b, h, d, t), &Device::Cpu).unwrap()).unwrap();
        for x in [by_tokens.transpose(1, 2).unwrap(), by_dims.transpose(2, 3).unwrap()] {
            let fused = rotary_bf16(&x, &cos, &sin).unwrap().expect("the fused path applies");
            assert!(fused.is_contiguous());

            let (cos, sin) = (r.r(cos.clone()).unwrap(), r.r(sin.clone()).unwrap());
            let half = |start| x.narrow(3, start, d / 2).unwrap();
            let rotated = Tensor::cat(&[&half(d / 2).neg().unwrap(), &half(0)], 3).unwrap();
            let a = r.r(x.broadcast_mul(&cos).unwrap()).unwrap();
            let c = r.r(rotated.broadcast_mul(&sin).unwrap()).unwrap();
            let want = r.r((a + c).unwrap()).unwrap();
            assert_eq!(values(&fused), values(&want));
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn fused_bf16_elementwise_ops_round_as_the_op_by_op_path() {
        let r = Rounding(Some(DType::BF16));
        let rounded = |shape: (usize, usize)| r.r(Tensor::randn(0f32, 2.0, shape, &Device::Cpu).unwrap()).unwrap();
        // Large enough to be split across threads.
        let (g, u) = (rounded((70, 1000)), rounded((70, 1000)));
        let fused = zip_bf16(&g, &u, r, |g, u| round_bf16(silu(g)) * u).unwrap().expect("applies");
        let want = r.r((r.r(g.silu().unwrap()).unwrap() * &u).unwrap()).unwrap();
        assert_eq!(values(&fused), values(&want));
        assert_eq!(values(&add_rounded(&g, &u, r).unwrap()), values(&r.r((&g + &u).unwrap()).unwrap()));
        // No fusion across a gradient, another rounding or different shapes.
        let v = candle_core::Var::from_tensor(&g).unwrap();
        assert!(zip_bf16(v.as_tensor(), &u, r, |a, b| a + b).unwrap().is_none());
        assert!(zip_bf16(&g, &u, Rounding(Some(DType::F16)), |a, b| a + b).unwrap().is_none());
        assert!(zip_bf16(&g, &u.reshape((1000, 70)).unwrap(), r, |a, b| a + b).unwrap().is_none());
    }

    #[test]
    fn fused_bf16_rms_norm_is_within_a_rounding_step_of_the_op_by_op_path() {
        let r = Rounding(Some(DType::BF16));
        // Large enough to be split across threads, in whole rows.
        let x = r.r(Tensor::randn(0f32, 1.0, (2, 400, 96), &Device::Cpu).unwrap()).unwrap();
        let w = r.r(Tensor::randn(1f32, 0.1, 96, &Device::Cpu).unwrap()).unwrap();
        let fused = rms_norm_bf16(&x, &w, 1e-6).unwrap().expect("applies");
        let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = r.r(x.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap()).unwrap();
        let want = r.r(normed.broadcast_mul(&w).unwrap()).unwrap();
        let (got, want) = (values(&fused), values(&want));
        // The sums of squares may differ in order, so a value may land one bfloat16 step away.
        let apart = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= b.abs() / 64.0), "{got:?} vs {want:?}");
        assert!(apart < got.len() / 20, "{apart} of {} values differ", got.len());
    }
}
