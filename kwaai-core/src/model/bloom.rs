//! BLOOM decoder blocks (ALiBi), as transformers 4.33 computes them.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::config::ModelConfig;
use super::ops::{alibi_bias, alibi_slopes, attention, layer_norm, Linear};
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
}

impl BloomBlock {
    /// Tensors one block reads.
    pub const TENSORS: usize = 12;

    pub(crate) fn load(l: &mut Loader<'_, '_>, p: &str, c: &ModelConfig) -> Result<Self> {
        let h = c.hidden_size;
        let mut lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear {
                weight: l.get(&format!("{p}{name}.weight"), &[out, inp])?,
                bias: Some(l.get(&format!("{p}{name}.bias"), &[out])?),
            })
        };
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
        })
    }

    /// Runs the block on `x` (B, T, hidden), appending this step's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut LayerCache) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (nh, d) = (self.heads, self.head_dim);
        let ln = layer_norm(x, &self.ln1.0, &self.ln1.1, self.eps)?;
        let residual = if self.residual_post_layernorm { &ln } else { x };
        let qkv = self.qkv.forward(&ln)?.reshape((b, t, nh, 3, d))?;
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(3, i, 1)?.squeeze(3)?.transpose(1, 2)?) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let (k, v) = cache.append(&k, &v)?;
        let bias = alibi_bias(&self.slopes, k.dim(2)?, false, 1.0)?;
        let a = attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), Some(&bias))?;
        let a = a.transpose(1, 2)?.reshape((b, t, hidden))?;
        let attn_out = (self.dense.forward(&a)? + residual)?;
        let ln = layer_norm(&attn_out, &self.ln2.0, &self.ln2.1, self.eps)?;
        let residual = if self.residual_post_layernorm { &ln } else { &attn_out };
        let mlp = self.down.forward(&self.up.forward(&ln)?.gelu()?)?;
        Ok((mlp + residual)?)
    }
}
