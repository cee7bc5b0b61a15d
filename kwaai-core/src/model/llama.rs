//! Llama decoder blocks (also Mistral-architecture checkpoints), as transformers 4.33 computes them.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::config::{ModelConfig, RopeScaling};
use super::ops::{apply_rotary, attention, rms_norm, rotary_tables, Linear};
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
}

impl LlamaBlock {
    /// Tensors one block reads.
    pub const TENSORS: usize = 9;

    pub(crate) fn load(l: &mut Loader<'_, '_>, p: &str, c: &ModelConfig) -> Result<Self> {
        let (h, d, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let kv = c.num_kv_heads * d;
        let mut lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear { weight: l.get(&format!("{p}{name}.weight"), &[out, inp])?, bias: None })
        };
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
        })
    }

    fn rotary(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let d = self.head_dim;
        match self.rope_scaling {
            None => rotary_tables(d, self.rope_theta, 1.0, start, len),
            Some(RopeScaling::Linear(f)) => rotary_tables(d, self.rope_theta, f as f32, start, len),
            Some(RopeScaling::Dynamic(f)) => {
                let total = start + len;
                let mut base = self.rope_theta;
                if total > self.max_positions {
                    let grow = f * total as f64 / self.max_positions as f64 - (f - 1.0);
                    base *= grow.powf(d as f64 / (d as f64 - 2.0));
                }
                rotary_tables(d, base, 1.0, start, len)
            }
        }
    }

    /// Runs the block on `x` (B, T, hidden), appending this step's keys and values to `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut LayerCache) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let d = self.head_dim;
        let h = rms_norm(x, &self.input_norm, self.eps)?;
        let q = self.q.forward(&h)?.reshape((b, t, self.heads, d))?.transpose(1, 2)?;
        let k = self.k.forward(&h)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let v = self.v.forward(&h)?.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let (cos, sin) = self.rotary(cache.len(), t)?;
        let q = apply_rotary(&q, &cos, &sin)?;
        let k = apply_rotary(&k, &cos, &sin)?;
        let (k, v) = cache.append(&k, &v)?;
        let a = attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), None)?;
        let a = a.transpose(1, 2)?.reshape((b, t, hidden))?;
        let x = (x + self.o.forward(&a)?)?;
        let h = rms_norm(&x, &self.post_norm, self.eps)?;
        let mlp = self.down.forward(&(self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }
}
