//! BLOOM decoder blocks (ALiBi), as transformers 4.33 computes them.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::config::ModelConfig;
use super::ops::{alibi_bias, alibi_slopes, attention, layer_norm, Linear, Rounding};
use super::weights::Loader;
use crate::Result;

/// One BLOOM block: LayerNorm, fused-QKV attention with ALiBi, LayerNorm, GELU MLP.
#[derive(Debug, Clone)]
pub struct BloomBlock {
    ln1: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
    qkv: Linear,
    dense: Linear,
    up: Linear,
    down: Linear,
    heads: usize,
    head_dim: usize,
    eps: f64,
    residual_post_layernorm: bool,
    slopes: Vec<f32>,
    round: Rounding,
}

impl BloomBlock {
    /// Tensors one block reads.
    pub const TENSORS: usize = 12;

    pub(crate) fn load(l: &mut Loader<'_, '_>, p: &str, c: &ModelConfig, round: Rounding) -> Result<Self> {
        let h = c.hidden_size;
        let mut lin = |name: &str, out: usize, inp: usize| l.linear(&format!("{p}{name}"), out, inp, true);
        let qkv = lin("self_attention.query_key_value", 3 * h, h)?;
        let dense = lin("self_attention.dense", h, h)?;
        let up = lin("mlp.dense_h_to_4h", 4 * h, h)?;
        let down = lin("mlp.dense_4h_to_h", h, 4 * h)?;
        let mut norm = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((l.get(&format!("{p}{name}.weight"), &[h])?, l.get(&format!("{p}{name}.bias"), &[h])?))
        };
        Ok(BloomBlock {
            ln1: norm("input_layernorm")?,
            ln2: norm("post_attention_layernorm")?,
            qkv,
            dense,
            up,
            down,
            heads: c.num_heads,
            head_dim: c.head_dim(),
            eps: c.norm_eps,
            residual_post_layernorm: c.residual_post_layernorm,
            slopes: alibi_slopes(c.num_heads),
            round,
        })
    }

    /// BLOOM's tanh GELU; with rounding, each elementwise step is rounded as transformers' formula is.
    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        let r = self.round;
        if !r.is_on() {
            return Ok(x.gelu()?);
        }
        let inner = r.r((r.r((r.r(x.sqr()?)? * 0.044715)?)? + 1.0)?)?;
        let arg = r.r((r.r((x * 0.79788456)?)? * inner)?)?;
        let t = r.r((r.r(arg.tanh()?)? + 1.0)?)?;
        r.r((r.r((x * 0.5)?)? * t)?)
    }

    /// Runs the block on `x` (B, T, hidden), appending this step's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut LayerCache) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (nh, d, r) = (self.heads, self.head_dim, self.round);
        let ln = layer_norm(x, &self.ln1.0, &self.ln1.1, self.eps, r)?;
        let residual = if self.residual_post_layernorm { &ln } else { x };
        let qkv = self.qkv.forward_r(&ln, r)?.reshape((b, t, nh, 3, d))?;
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(3, i, 1)?.squeeze(3)?.transpose(1, 2)?) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let (k, v) = cache.append(&k, &v)?;
        let bias = r.r(alibi_bias(&self.slopes, k.dim(2)?, false, 1.0)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let a = attention(&q, &k, &v, r, |s| r.r((s * scale)?.broadcast_add(&bias)?))?;
        let a = a.transpose(1, 2)?.reshape((b, t, hidden))?;
        let attn_out = r.r((self.dense.forward_r(&a, r)? + residual)?)?;
        let ln = layer_norm(&attn_out, &self.ln2.0, &self.ln2.1, self.eps, r)?;
        let residual = if self.residual_post_layernorm { &ln } else { &attn_out };
        let mlp = self.down.forward_r(&self.gelu(&self.up.forward_r(&ln, r)?)?, r)?;
        r.r((mlp + residual)?)
    }
}
