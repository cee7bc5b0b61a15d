//! The ends of the model that a client runs: token embeddings before the first block, and the final norm and
//! LM head after the last.

use candle_core::{DType, Tensor};

use super::config::{Family, ModelConfig};
use super::ops::{layer_norm, rms_norm, Linear, Rounding, COMPUTE_DTYPE};
use super::weights::{Checkpoint, Loader};
use crate::{Error, Result};

/// Embeddings, final norm and LM head of a model.
#[derive(Debug, Clone)]
pub struct ClientModel {
    config: ModelConfig,
    embeddings: Tensor,
    /// BLOOM's layer norm right after the embeddings.
    embeddings_norm: Option<(Tensor, Tensor)>,
    /// Final norm: weight, and bias for LayerNorm families.
    final_norm: (Tensor, Option<Tensor>),
    lm_head: Linear,
    round: Rounding,
}

fn first_present(ckpt: &Checkpoint, names: &[&str]) -> Result<String> {
    names
        .iter()
        .find(|n| ckpt.contains(n))
        .map(|n| n.to_string())
        .ok_or_else(|| Error::invalid_argument(format!("the checkpoint has none of {names:?}")))
}

impl ClientModel {
    /// Reads the embeddings, final norm and LM head of the model `config` describes from its checkpoint (no
    /// blocks are read).
    pub fn from_checkpoint(config: ModelConfig, ckpt: &Checkpoint) -> Result<Self> {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let (emb_names, norm_prefixes): (&[&str], &[&str]) = match config.family {
            Family::Llama => (&["model.embed_tokens.weight", "embed_tokens.weight"], &["model.norm.", "norm."]),
            Family::Bloom => {
                (&["word_embeddings.weight", "transformer.word_embeddings.weight"], &["ln_f.", "transformer.ln_f."])
            }
            Family::Falcon => {
                (&["transformer.word_embeddings.weight", "word_embeddings.weight"], &["transformer.ln_f.", "ln_f."])
            }
        };
        let emb_name = first_present(ckpt, emb_names)?;
        let stored = ckpt.dtype_of(&emb_name)?;
        let round = Rounding((stored == DType::BF16).then_some(DType::BF16));
        let mut l = Loader { ckpt, dtype: COMPUTE_DTYPE, done: 0, total: 0, bytes: 0, progress: None, quantize: false };
        let embeddings = l.get(&emb_name, &[v, h])?;
        let embeddings_norm = if config.family == Family::Bloom {
            let p = if emb_name.starts_with("transformer.") { "transformer." } else { "" };
            Some((
                l.get(&format!("{p}word_embeddings_layernorm.weight"), &[h])?,
                l.get(&format!("{p}word_embeddings_layernorm.bias"), &[h])?,
            ))
        } else {
            None
        };
        let norm_w = first_present(
            ckpt,
            &norm_prefixes
                .iter()
                .map(|p| format!("{p}weight"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        let norm_prefix = norm_w.trim_end_matches("weight").to_owned();
        let final_norm = match config.family {
            Family::Llama => (l.get(&norm_w, &[h])?, None),
            _ => (l.get(&norm_w, &[h])?, Some(l.get(&format!("{norm_prefix}bias"), &[h])?)),
        };
        let lm_weight = match l.get_opt("lm_head.weight", &[v, h])? {
            Some(w) if !config.tie_word_embeddings => w,
            _ => embeddings.clone(),
        };
        Ok(ClientModel {
            config,
            embeddings,
            embeddings_norm,
            final_norm,
            lm_head: Linear::new(lm_weight, None, false)?,
            round,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Hidden states (B, T, hidden) in float32 for token ids (B, T).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let v = self.config.vocab_size as u32;
        if let Some(bad) = ids.to_vec1::<u32>()?.into_iter().find(|&i| i >= v) {
            return Err(Error::invalid_argument(format!("token id {bad} is outside the vocabulary of {v}")));
        }
        let x = self.embeddings.index_select(&ids, 0)?.reshape((b, t, self.config.hidden_size))?;
        match &self.embeddings_norm {
            Some((w, bias)) => layer_norm(&x, w, bias, self.config.norm_eps, self.round),
            None => Ok(x),
        }
    }

    /// Logits (B, T, vocab) in float32 for hidden states after the last block.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = hidden.to_dtype(COMPUTE_DTYPE)?;
        let r = self.round;
        let x = match &self.final_norm {
            (w, None) => rms_norm(&x, w, self.config.norm_eps, r)?,
            (w, Some(b)) => layer_norm(&x, w, b, self.config.norm_eps, r)?,
        };
        self.lm_head.forward_r(&x, r)
    }
}
