//! Building blocks shared by the families: linear layers, norms, rotary and ALiBi positions, attention.
//!
//! Each op has a fast path (candle's fused CPU kernels) and a path built from differentiable primitives, taken
//! when the input is tracked for backward.

use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// A dense layer: `y = x W^T + b`, with `W` of shape (out, in).
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// Applies the layer to `x` of shape (..., in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inner = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let out = self.weight.dim(0)?;
        let y = x.reshape((rows, inner))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut shape = dims[..dims.len() - 1].to_vec();
        shape.push(out);
        Ok(y.reshape(shape)?)
    }
}

/// RMSNorm as in Llama: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && x.is_contiguous() {
        return Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?);
    }
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(w)?)
}

/// LayerNorm over the last dimension with weight and bias.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && x.is_contiguous() {
        return Ok(candle_nn::ops::layer_norm(x, w, b, eps as f32)?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(w)?.broadcast_add(b)?)
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
    let half = head_dim / 2;
    let base = base as f32;
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in start..start + len {
        let t = p as f32 / pos_scale;
        for _ in 0..2 {
            for f in &inv {
                let a = t * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((Tensor::from_vec(cos, (len, head_dim), &Device::Cpu)?, Tensor::from_vec(sin, (len, head_dim), &Device::Cpu)?))
}

/// Applies rotary embeddings to `x` of shape (B, H, T, head_dim): `x * cos + rotate_half(x) * sin`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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

/// Scaled dot-product attention with grouped key/value heads and a causal mask.
///
/// `q`: (B, H, T, d); `k`, `v`: (B, Hkv, S, d) with `S = past + T`; `bias`: broadcastable to (B, H, T, S), added
/// after scaling. Returns (B, H, T, d).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, hkv, s, _) = k.dims4()?;
    let groups = h / hkv;
    let q = q.contiguous()?.reshape((b, hkv, groups * t, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, h, t, s))?;
    let scores = match bias {
        Some(bias) => scores.broadcast_add(bias)?,
        None => scores,
    };
    let scores = if t > 1 { scores.broadcast_add(&causal_mask(t, s)?)? } else { scores };
    let probs = softmax_last(&scores)?.reshape((b, hkv, groups * t, s))?;
    Ok(probs.matmul(&v.contiguous()?)?.reshape((b, h, t, d))?)
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
