//! Falcon decoder blocks (RW-1B, 7B and 40B/180B layouts), as transformers 4.33 computes them.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::config::{FalconLayout, ModelConfig, RopeScaling};
use super::ops::{alibi_bias, alibi_slopes, apply_rotary, attention, layer_norm, Linear, Rounding};
use super::weights::Loader;
use crate::Result;

/// One Falcon block.
#[derive(Debug, Clone)]
pub struct FalconBlock {
    /// `ln_attn` (new layout) or `input_layernorm`.
    ln_attn: (Tensor, Tensor),
    /// `ln_mlp` (new layout) or `post_attention_layernorm` (sequential layout); none for parallel old layout.
    ln_mlp: Option<(Tensor, Tensor)>,
    qkv: Linear,
    dense: Linear,
    up: Linear,
    down: Linear,
    layout: FalconLayout,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    rope_theta: f64,
    rope_scaling: Option<RopeScaling>,
    slopes: Vec<f32>,
    max_positions: usize,
    round: Rounding,
}

impl FalconBlock {
    /// Tensors one block reads (at most).
    pub fn tensors(c: &ModelConfig) -> usize {
        let lf = c.falcon;
        let norms = if lf.new_decoder_architecture || !lf.parallel_attn { 4 } else { 2 };
        norms + if lf.bias { 8 } else { 4 }
    }

    pub(crate) fn load(l: &mut Loader<'_, '_>, p: &str, c: &ModelConfig, round: Rounding) -> Result<Self> {
        let (h, d) = (c.hidden_size, c.head_dim());
        let lf = c.falcon;
        let qkv_out = if lf.new_decoder_architecture {
            (c.num_heads + 2 * c.num_kv_heads) * d
        } else if lf.multi_query {
            h + 2 * d
        } else {
            3 * h
        };
        let mut lin = |name: &str, out: usize, inp: usize| l.linear(&format!("{p}{name}"), out, inp, lf.bias);
        let qkv = lin("self_attention.query_key_value", qkv_out, h)?;
        let dense = lin("self_attention.dense", h, h)?;
        let up = lin("mlp.dense_h_to_4h", 4 * h, h)?;
        let down = lin("mlp.dense_4h_to_h", h, 4 * h)?;
        let mut norm = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((l.get(&format!("{p}{name}.weight"), &[h])?, l.get(&format!("{p}{name}.bias"), &[h])?))
        };
        let (ln_attn, ln_mlp) = if lf.new_decoder_architecture {
            (norm("ln_attn")?, Some(norm("ln_mlp")?))
        } else if lf.parallel_attn {
            (norm("input_layernorm")?, None)
        } else {
            (norm("input_layernorm")?, Some(norm("post_attention_layernorm")?))
        };
        Ok(FalconBlock {
            ln_attn,
            ln_mlp,
            qkv,
            dense,
            up,
            down,
            layout: lf,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            eps: c.norm_eps,
            rope_theta: c.rope_theta,
            rope_scaling: c.rope_scaling,
            slopes: alibi_slopes(c.num_heads),
            max_positions: c.max_position_embeddings,
            round,
        })
    }

    fn rotary(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        super::ops::scaled_rotary_tables(
            self.head_dim,
            self.rope_theta,
            self.rope_scaling,
            self.max_positions,
            start,
            len,
        )
    }

    /// Splits the fused projection into q (B, H, T, d) and k, v (B, Hkv, T, d).
    fn split(&self, fused: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = fused.dims3()?;
        let (nh, nkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let (q, k, v) = if self.layout.new_decoder_architecture {
            let g = nh / nkv;
            let f = fused.reshape((b, t, nkv, g + 2, d))?;
            (
                f.narrow(3, 0, g)?.reshape((b, t, nh, d))?,
                f.narrow(3, g, 1)?.squeeze(3)?,
                f.narrow(3, g + 1, 1)?.squeeze(3)?,
            )
        } else if self.layout.multi_query {
            let f = fused.reshape((b, t, nh + 2, d))?;
            (f.narrow(2, 0, nh)?, f.narrow(2, nh, 1)?, f.narrow(2, nh + 1, 1)?)
        } else {
            let f = fused.reshape((b, t, nh, 3, d))?;
            (f.narrow(3, 0, 1)?.squeeze(3)?, f.narrow(3, 1, 1)?.squeeze(3)?, f.narrow(3, 2, 1)?.squeeze(3)?)
        };
        Ok((q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?))
    }

    /// Runs the block on `x` (B, T, hidden), appending this step's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut LayerCache) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (d, r) = (self.head_dim, self.round);
        let ln_a = layer_norm(x, &self.ln_attn.0, &self.ln_attn.1, self.eps, r)?;
        let (q, k, v) = self.split(&self.qkv.forward_r(&ln_a, r)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let (q, k) = if self.layout.alibi {
            (q, k)
        } else {
            let (cos, sin) = self.rotary(cache.len(), t)?;
            (apply_rotary(&q, &cos, &sin, r)?, apply_rotary(&k, &cos, &sin, r)?)
        };
        let (k, v) = cache.append(&k, &v)?;
        let a = if self.layout.alibi {
            let bias = alibi_bias(&self.slopes, k.dim(2)?, true, 1.0)?;
            attention(&q, &k, &v, r, |s| r.r((r.r(s)?.broadcast_add(&bias)? * scale)?))?
        } else {
            attention(&q, &k, &v, r, |s| r.r((r.r(s)? * scale)?))?
        };
        let attn_out = self.dense.forward_r(&a.transpose(1, 2)?.reshape((b, t, hidden))?, r)?;
        let mlp =
            |h: &Tensor| -> Result<Tensor> { self.down.forward_r(&r.r(self.up.forward_r(h, r)?.gelu_erf()?)?, r) };
        if self.layout.new_decoder_architecture || self.layout.parallel_attn {
            let mlp_in = match (&self.ln_mlp, self.layout.new_decoder_architecture) {
                (Some((w, b)), true) => layer_norm(x, w, b, self.eps, r)?,
                _ => ln_a,
            };
            r.r((r.r((mlp(&mlp_in)? + attn_out)?)? + x)?)
        } else {
            let residual = r.r((attn_out + x)?)?;
            let (w, b) = self.ln_mlp.as_ref().ok_or_else(|| crate::Error::invalid_argument("missing norm"))?;
            let mlp_in = layer_norm(&residual, w, b, self.eps, r)?;
            r.r((mlp(&mlp_in)? + residual)?)
        }
    }
}
