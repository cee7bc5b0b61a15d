//! The parts of a Hugging Face `config.json` that the block families need.

use std::path::Path;

use serde_json::Value;

use crate::{Error, ErrorKind, Result};

/// The block families served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 1/2/3 and Mistral-architecture checkpoints (RMSNorm, rotary, SwiGLU, grouped-query attention).
    Llama,
    /// BLOOM (LayerNorm, ALiBi, fused query/key/value, GELU).
    Bloom,
    /// Falcon (RW-1B, 7B, 40B/180B layouts).
    Falcon,
}

/// Rotary position embedding scaling, as transformers reads `rope_scaling` (4.33's types, and
/// Llama 3.1's `llama3` from 4.43 on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear(f64),
    /// Dynamic NTK: the base grows once the sequence exceeds `max_position_embeddings`.
    Dynamic(f64),
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, the band between blended.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_positions: usize },
}

/// Falcon's decoder layout switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FalconLayout {
    /// Two layer norms (attention, MLP) and grouped key/value heads (Falcon-40B/180B).
    pub new_decoder_architecture: bool,
    /// One key/value head shared by all query heads (Falcon-7B).
    pub multi_query: bool,
    /// Attention and MLP read the same normalised input and are summed.
    pub parallel_attn: bool,
    /// ALiBi instead of rotary embeddings.
    pub alibi: bool,
    /// Linear layers have biases.
    pub bias: bool,
}

/// A model's shape and options, family-independent where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Block family.
    pub family: Family,
    /// Hidden size (width of the residual stream).
    pub hidden_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (equal to `num_heads` without grouped-query attention).
    pub num_kv_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Epsilon of RMSNorm / LayerNorm.
    pub norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Rotary scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Maximum positions the model was trained for.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// BLOOM: the residual is taken after the layer norm.
    pub residual_post_layernorm: bool,
    /// Falcon layout switches (default for other families).
    pub falcon: FalconLayout,
    /// Token ids from the config, if present.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, if present.
    pub eos_token_id: Option<u32>,
    /// Padding token id, if present.
    pub pad_token_id: Option<u32>,
    /// The checkpoint's `torch_dtype`, if named.
    pub torch_dtype: Option<String>,
    /// Mixtral: the MLP is a sparse mixture of experts.
    pub experts: Option<SparseExperts>,
}

/// A Mixtral block's sparse MLP: `num_experts` SwiGLU experts, `top_k` of them per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseExperts {
    pub num_experts: usize,
    pub top_k: usize,
}

impl ModelConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Reads `config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("reading {}", path.display()), e))?;
        Self::from_json(&text)
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "config.json is not JSON", e))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or_default();
        let family = match model_type {
            "llama" | "mistral" | "mixtral" => Family::Llama,
            "bloom" => Family::Bloom,
            "falcon" | "RefinedWeb" | "RefinedWebModel" => Family::Falcon,
            other => {
                return Err(Error::invalid_argument(format!(
                    "unsupported architecture {other:?}: only llama, mistral, mixtral, bloom and falcon are served"
                )))
            }
        };
        let usize_of = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(Value::as_u64)).map(|x| x as usize);
        let f64_of = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(Value::as_f64));
        let bool_of = |key: &str| v.get(key).and_then(Value::as_bool);
        let id_of = |key: &str| v.get(key).and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok());
        let need = |name: &str, x: Option<usize>| {
            x.filter(|&n| n > 0).ok_or_else(|| Error::invalid_argument(format!("config.json: missing or zero {name}")))
        };

        let hidden_size = need("hidden_size", usize_of(&["hidden_size", "n_embed"]))?;
        let num_layers = need("num_hidden_layers", usize_of(&["num_hidden_layers", "n_layer"]))?;
        let num_heads = need("num_attention_heads", usize_of(&["num_attention_heads", "n_head"]))?;
        let vocab_size = need("vocab_size", usize_of(&["vocab_size"]))?;
        let mut falcon = FalconLayout::default();
        let (num_kv_heads, intermediate_size, norm_eps) = match family {
            Family::Llama => (
                usize_of(&["num_key_value_heads"]).unwrap_or(num_heads),
                need("intermediate_size", usize_of(&["intermediate_size"]))?,
                f64_of(&["rms_norm_eps"]).unwrap_or(1e-6),
            ),
            Family::Bloom => (num_heads, 4 * hidden_size, f64_of(&["layer_norm_epsilon"]).unwrap_or(1e-5)),
            Family::Falcon => {
                let new_arch = bool_of("new_decoder_architecture").unwrap_or(model_type == "RefinedWeb");
                let multi_query = bool_of("multi_query").unwrap_or(true);
                falcon = FalconLayout {
                    new_decoder_architecture: new_arch,
                    multi_query,
                    parallel_attn: bool_of("parallel_attn").unwrap_or(true),
                    alibi: bool_of("alibi").unwrap_or(false),
                    bias: bool_of("bias").unwrap_or(false),
                };
                let kv = if new_arch {
                    usize_of(&["num_kv_heads", "n_head_kv"]).unwrap_or(num_heads)
                } else if multi_query {
                    1
                } else {
                    num_heads
                };
                (kv, 4 * hidden_size, f64_of(&["layer_norm_epsilon"]).unwrap_or(1e-5))
            }
        };
        if hidden_size % num_heads != 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::invalid_argument(format!(
                "config.json: hidden_size {hidden_size}, {num_heads} heads and {num_kv_heads} kv heads do not divide"
            )));
        }
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(s) => {
                let factor = s.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
                let field = |name: &str| {
                    s.get(name)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| Error::invalid_argument(format!("config.json: rope_scaling needs {name}")))
                };
                match s.get("type").or_else(|| s.get("rope_type")).and_then(Value::as_str) {
                    Some("default") => None,
                    Some("linear") => Some(RopeScaling::Linear(factor)),
                    Some("dynamic") => Some(RopeScaling::Dynamic(factor)),
                    Some("llama3") => Some(RopeScaling::Llama3 {
                        factor: field("factor")?,
                        low_freq_factor: field("low_freq_factor")?,
                        high_freq_factor: field("high_freq_factor")?,
                        original_max_positions: field("original_max_position_embeddings")? as usize,
                    }),
                    other => return Err(Error::invalid_argument(format!("unsupported rope_scaling type {other:?}"))),
                }
            }
        };
        let experts = match model_type {
            "mixtral" => {
                let num_experts = need("num_local_experts", usize_of(&["num_local_experts"]))?;
                let top_k = need("num_experts_per_tok", usize_of(&["num_experts_per_tok"]))?;
                if top_k > num_experts {
                    return Err(Error::invalid_argument(format!(
                        "config.json: num_experts_per_tok {top_k} exceeds num_local_experts {num_experts}"
                    )));
                }
                Some(SparseExperts { num_experts, top_k })
            }
            _ => None,
        };
        let default_tie = family != Family::Llama;
        Ok(ModelConfig {
            family,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            intermediate_size,
            norm_eps,
            rope_theta: f64_of(&["rope_theta"]).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: usize_of(&["max_position_embeddings"]).unwrap_or(2048),
            vocab_size,
            tie_word_embeddings: bool_of("tie_word_embeddings").unwrap_or(default_tie),
            residual_post_layernorm: bool_of("apply_residual_connection_post_layernorm").unwrap_or(false),
            falcon,
            bos_token_id: id_of("bos_token_id"),
            eos_token_id: id_of("eos_token_id"),
            pad_token_id: id_of("pad_token_id"),
            torch_dtype: v.get("torch_dtype").and_then(Value::as_str).map(str::to_owned),
            experts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_with_gqa_and_rope_scaling() {
        let c = ModelConfig::from_json(
            r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "rope_theta": 500000.0,
                "rope_scaling": {"type": "linear", "factor": 4.0}}"#,
        )
        .unwrap();
        assert_eq!((c.family, c.num_kv_heads, c.head_dim()), (Family::Llama, 8, 128));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear(4.0)));
        assert_eq!(c.rope_theta, 500000.0);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn falcon_layouts_from_old_and_new_configs() {
        // Falcon-40B's original config (RefinedWeb): new decoder architecture with n_head_kv.
        let c = ModelConfig::from_json(
            r#"{"model_type": "RefinedWeb", "hidden_size": 8192, "n_head": 128, "n_head_kv": 8, "n_layer": 60,
                "vocab_size": 65024, "parallel_attn": true, "bias": false}"#,
        )
        .unwrap();
        assert!(c.falcon.new_decoder_architecture);
        assert_eq!((c.num_heads, c.num_kv_heads, c.num_layers), (128, 8, 60));
        // Falcon-7B: multi-query.
        let c = ModelConfig::from_json(
            r#"{"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71, "num_hidden_layers": 32,
                "vocab_size": 65024, "multi_query": true, "new_decoder_architecture": false}"#,
        )
        .unwrap();
        assert_eq!(c.num_kv_heads, 1);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn bad_configs_are_refused() {
        for (text, needle) in [
            (r#"{"model_type": "gpt2"}"#, "unsupported architecture"),
            (r#"{"model_type": "llama", "hidden_size": 64}"#, "num_hidden_layers"),
            (
                r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 5, "vocab_size": 9}"#,
                "do not divide",
            ),
            (
                r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "vocab_size": 9, "rope_scaling": {"type": "yarn", "factor": 2}}"#,
                "rope_scaling",
            ),
            (
                r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "vocab_size": 9, "rope_scaling": {"rope_type": "llama3", "factor": 8}}"#,
                "rope_scaling needs low_freq_factor",
            ),
            (
                r#"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "vocab_size": 9, "num_local_experts": 2, "num_experts_per_tok": 3}"#,
                "exceeds num_local_experts",
            ),
            (
                r#"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "vocab_size": 9}"#,
                "num_local_experts",
            ),
            ("not json", "not JSON"),
        ] {
            let err = ModelConfig::from_json(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.message().contains(needle), "{needle}: {err}");
        }
    }
}
