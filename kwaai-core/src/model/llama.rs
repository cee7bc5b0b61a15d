//! Llama decoder blocks (also Mistral-architecture checkpoints), as transformers 4.33 computes them,
//! and Mixtral's (the same block with a sparse mixture of SwiGLU experts as its MLP), as transformers
//! 4.46 computes them.

use candle_core::{DType, Tensor};

use super::attention::causal_attention;
use super::cache::LayerCache;
use super::config::{ModelConfig, RopeScaling, SparseExperts};
use super::ops::{add_rounded, apply_rotary, attention, rms_norm, silu_mul_bf16, softmax_last, Linear, Rounding};
use super::weights::Loader;
use crate::Result;

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
struct SwiGlu {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl SwiGlu {
    fn forward(&self, h: &Tensor, r: Rounding) -> Result<Tensor> {
        let [gate, up] = Linear::forward_each_r(&[&self.gate, &self.up], h, r)?.try_into().expect("two layers");
        let product = match silu_mul_bf16(&gate, &up, r)? {
            Some(product) => product,
            None => r.r((r.r(gate.silu()?)? * up)?)?,
        };
        self.down.forward_r(&product, r)
    }
}

/// A block's MLP: one SwiGLU (Llama), or a router over SwiGLU experts (Mixtral).
#[derive(Debug, Clone)]
enum Mlp {
    Dense(SwiGlu),
    Sparse { router: Linear, experts: Vec<SwiGlu>, top_k: usize },
}

/// One Llama block: RMSNorm, rotary grouped-query attention, RMSNorm, SwiGLU MLP (or experts).
#[derive(Debug, Clone)]
pub struct LlamaBlock {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp: Mlp,
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
    pub fn tensors(c: &ModelConfig) -> usize {
        match c.experts {
            None => 9,
            Some(e) => 7 + 3 * e.num_experts,
        }
    }

    pub(crate) fn load(l: &mut Loader<'_, '_>, p: &str, c: &ModelConfig, round: Rounding) -> Result<Self> {
        let (h, d, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let kv = c.num_kv_heads * d;
        let mut lin = |name: &str, out: usize, inp: usize| l.linear(&format!("{p}{name}"), out, inp, false);
        let q = lin("self_attn.q_proj", h, h)?;
        let k = lin("self_attn.k_proj", kv, h)?;
        let v = lin("self_attn.v_proj", kv, h)?;
        let o = lin("self_attn.o_proj", h, h)?;
        let mlp = match c.experts {
            None => Mlp::Dense(SwiGlu {
                gate: lin("mlp.gate_proj", i, h)?,
                up: lin("mlp.up_proj", i, h)?,
                down: lin("mlp.down_proj", h, i)?,
            }),
            Some(SparseExperts { num_experts, top_k }) => Mlp::Sparse {
                router: lin("block_sparse_moe.gate", num_experts, h)?,
                experts: (0..num_experts)
                    .map(|e| {
                        let mut expert =
                            |w: &str, out, inp| lin(&format!("block_sparse_moe.experts.{e}.{w}"), out, inp);
                        Ok(SwiGlu { gate: expert("w1", i, h)?, up: expert("w3", i, h)?, down: expert("w2", h, i)? })
                    })
                    .collect::<Result<_>>()?,
                top_k,
            },
        };
        Ok(LlamaBlock {
            input_norm: l.get(&format!("{p}input_layernorm.weight"), &[h])?,
            post_norm: l.get(&format!("{p}post_attention_layernorm.weight"), &[h])?,
            q,
            k,
            v,
            o,
            mlp,
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
        let [q, k, v] = Linear::forward_each_r(&[&self.q, &self.k, &self.v], &h, r)?.try_into().expect("three layers");
        let q = q.reshape((b, t, self.heads, d))?.transpose(1, 2)?;
        let k = k.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let v = v.reshape((b, t, self.kv_heads, d))?.transpose(1, 2)?;
        let (cos, sin) = self.rotary(cache.len(), t)?;
        let q = apply_rotary(&q, &cos, &sin, r)?;
        let k = apply_rotary(&k, &cos, &sin, r)?;
        let (k, v) = cache.append(&k, &v)?;
        let scale = 1.0 / (d as f64).sqrt();
        let a = match causal_attention(&q, &k, &v, scale, r)? {
            Some(a) => a,
            None => attention(&q, &k, &v, r, |s| r.r((r.r(s)? * scale)?))?.transpose(1, 2)?.reshape((b, t, hidden))?,
        };
        let x = add_rounded(x, &self.o.forward_r(&a, r)?, r)?;
        let h = rms_norm(&x, &self.post_norm, self.eps, r)?;
        let mlp = match &self.mlp {
            Mlp::Dense(mlp) => mlp.forward(&h, r)?,
            Mlp::Sparse { router, experts, top_k } => sparse_mlp(&h, router, experts, *top_k, r)?,
        };
        add_rounded(&x, &mlp, r)
    }
}

/// Mixtral's sparse MLP: each token goes to the `top_k` experts its router scores highest
/// (softmax in float32), weighted by those probabilities renormalised to sum to one. The weights stay
/// tensors so that gradients reach the router's input too.
fn sparse_mlp(h: &Tensor, router: &Linear, experts: &[SwiGlu], top_k: usize, r: Rounding) -> Result<Tensor> {
    let (b, t, hidden) = h.dims3()?;
    let tokens = h.reshape((b * t, hidden))?;
    let probs = softmax_last(&router.forward_r(&tokens, r)?.to_dtype(DType::F32)?)?;
    // Which experts each token goes to, and per expert the tokens routed to it.
    let mut chosen = vec![0f32; b * t * experts.len()];
    let mut routed: Vec<Vec<u32>> = vec![Vec::new(); experts.len()];
    for (token, row) in probs.to_vec2::<f32>()?.into_iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Highest first; ties go to the lower index, as torch.topk does on CPU.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &e in &order[..top_k] {
            chosen[token * experts.len() + e] = 1.0;
            routed[e].push(token as u32);
        }
    }
    let chosen = Tensor::from_vec(chosen, (b * t, experts.len()), tokens.device())?;
    let kept = (&probs * &chosen)?;
    // (experts, tokens): one contiguous row of weights per expert.
    let weights = kept.broadcast_div(&kept.sum_keepdim(1)?)?.to_dtype(tokens.dtype())?.t()?.contiguous()?;
    let mut out = tokens.zeros_like()?;
    for (e, (expert, ids)) in experts.iter().zip(routed).enumerate() {
        if ids.is_empty() {
            continue;
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, tokens.device())?;
        let y = expert.forward(&tokens.index_select(&ids, 0)?, r)?;
        let w = weights.get(e)?.index_select(&ids, 0)?.unsqueeze(1)?;
        out = out.index_add(&ids, &r.r(y.broadcast_mul(&w)?)?, 0)?;
    }
    Ok(out.reshape((b, t, hidden))?)
}
