//! Llama decoder blocks (also Mistral-architecture checkpoints), as transformers 4.33 computes them.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::config::{ModelConfig, RopeScaling};
use super::ops::{apply_rotary, attention, rms_norm, Linear, Rounding};
use super::weights::Loader;
use crate::Result;

/// One Llama block: RMSNorm, rotary grouped-query attention, RMSNorm, SwiGLU MLP.
#[derive(Debug, Clone)]
pub struct LlamaBlock {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    rope_theta: f64,
    rope_scaling: Option<RopeScaling>,
    max_positions: usize,
    round: Rounding,
}

impl LlamaBlock {
    /// Tensors one block reads.
    pub const TENSORS: usize = 9;

    pub(crate) fn load(l: &mut Loader<'_, '_>, p: &str, c: &ModelConfig, round: Rounding) -> Result<Self> {
        let (h, d, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let kv = c.num_kv_heads * d;
        let mut lin = |name: &str, out: usize, inp: usize| l.linear(&format!("{p}{name}"), out, inp, false);
        let q = lin("self_attn.q_proj", h, h)?;
        let k = lin("self_attn.k_proj", kv, h)?;
        let v = lin("self_attn.v_proj", kv, h)?;
        let o = lin("self_attn.o_proj", h, h)?;
        let gate = lin("mlp.gate_proj", i, h)?;
        let up = lin("mlp.up_proj", i, h)?;
        let down = lin("mlp.down_proj", h, i)?;
        Ok(LlamaBlock {
            input_norm: l.get(&format!("{p}input_layernorm.weight"), &[h])?,
            post_norm: l.get(&format!("{p}post_attention_layernorm.weight"), &[h])?,
            q,
            k,
            v,
            o,
            gate,
            up,
            down,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            eps: c.norm_eps,
            rope_theta: c.rope_theta,
            rope_scaling: c.rope_scaling,
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

    /// Runs the block on `x` (B, T, hidden), appending this step's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut LayerCache) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (d, r) = (self.head_dim, self.round);
        let h = rms_norm(x, &self.input_norm, self.eps, r)?;
        let q = self.q.forward_r(&h, r)?.reshape((b, t, self.heads, d))?.transpose(1, 2)?;
        let k = self.k.forward_r(&h, r)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let v = self.v.forward_r(&h, r)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let (cos, sin) = self.rotary(cache.len(), t)?;
        let q = apply_rotary(&q, &cos, &sin, r)?;
        let k = apply_rotary(&k, &cos, &sin, r)?;
        let (k, v) = cache.append(&k, &v)?;
        let scale = 1.0 / (d as f64).sqrt();
        let a = attention(&q, &k, &v, r, |s| r.r((r.r(s)? * scale)?))?;
        let a = a.transpose(1, 2)?.reshape((b, t, hidden))?;
        let x = r.r((x + self.o.forward_r(&a, r)?)?)?;
        let h = rms_norm(&x, &self.post_norm, self.eps, r)?;
        let gate = r.r(self.gate.forward_r(&h, r)?.silu()?)?;
        let mlp = self.down.forward_r(&r.r((gate * self.up.forward_r(&h, r)?)?)?, r)?;
        r.r((x + mlp)?)
    }
}
