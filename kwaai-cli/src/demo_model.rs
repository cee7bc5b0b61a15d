//! The demo model: a small Llama-shaped model that kwaainet writes itself, so that `kwaainet demo`
//! needs no download.
//!
//! Why made, not shipped: a checkpoint in the repository would be binary weight data to review and
//! keep in sync with the code; writing it takes milliseconds and the bytes depend only on
//! [`DEMO_SEED`], so every machine gets the same model. Why Llama: it is the family Petals serves
//! most, and grouped-query attention (4 query heads, 2 key/value heads) exercises more of the block
//! than plain attention. Why a word-level tokenizer: random weights produce random tokens, and
//! random English words read better in a terminal than random bytes; the vocabulary is a fixed list
//! of common words, lower-cased, split on whitespace and punctuation, anything else `<unk>`.
//!
//! The directory holds what transformers 4.33 reads (`config.json`, `generation_config.json`,
//! `model.safetensors` with `format: pt`, and a fast tokenizer: `tokenizer.json`,
//! `tokenizer_config.json`, `special_tokens_map.json`), so Python Petals and transformers load it
//! as they load any Hugging Face Llama checkpoint.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use crate::failure::Failure;

/// The seed of the demo weights.
pub const DEMO_SEED: u64 = 20_231_002;
/// Width of the residual stream.
pub const HIDDEN: usize = 64;
/// Decoder blocks (two servers of two blocks each in the demo swarm).
pub const LAYERS: usize = 4;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const INTERMEDIATE: usize = 176;
/// Standard deviation of the weights: larger than transformers' 0.02 so that greedy generation
/// wanders through the vocabulary instead of repeating one word.
const INIT_STD: f64 = 0.5;

/// Ids 0..4: `<unk> <s> </s> <pad>`, then the words.
const SPECIALS: [&str; 4] = ["<unk>", "<s>", "</s>", "<pad>"];
const BOS: u32 = 1;
const EOS: u32 = 2;
const PAD: u32 = 3;

/// The demo vocabulary after the special tokens.
const WORDS: &str = "the of and to in a is that for it as was with be by on not he this are or his from at which \
but have an they you were her she there one all we their been has when who will more no if out so said what up \
its about into than them can only other new some could time these two may then do first any my now such like our \
over man me even most made after also did many before must through back years where much your way well down \
should because each just those people how too little state good very make world still own see men work long get \
here between both life being under never day same another know while last might us great old year off come since \
against go came right used take three river mountain light stone water fire wind forest road city house door \
window garden bird song voice dream night morning evening summer winter sea star moon sun cloud rain snow field \
bridge tower ship island valley lake path story letter book word name heart mind hand eye face child friend king \
queen music color green blue red white black golden silver quiet bright dark slow quick gentle wild ancient young \
open hidden far near deep high small large warm cold soft hard sweet strange happy brave";

/// The words of the vocabulary, in id order after the special tokens.
pub fn words() -> Vec<&'static str> {
    WORDS.split_whitespace().collect()
}

/// The vocabulary size.
pub fn vocab_size() -> usize {
    SPECIALS.len() + words().len()
}

/// A small deterministic generator (SplitMix64) with Box-Muller normals.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Normal { state: seed, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f64 {
        if let Some(x) = self.spare.take() {
            return x;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    fn tensor(&mut self, len: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..len).map(|_| (mean + std * self.sample()) as f32).collect()
    }
}

/// The tensors of the model, by name, with shapes, in a fixed order.
fn weights() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Normal::new(DEMO_SEED);
    let (h, v, i) = (HIDDEN, vocab_size(), INTERMEDIATE);
    let kv = KV_HEADS * (HIDDEN / HEADS);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, mean: f64, std: f64| {
        let data = rng.tensor(shape.iter().product(), mean, std);
        out.push((name, shape, data));
    };
    add("model.embed_tokens.weight".into(), vec![v, h], 0.0, INIT_STD);
    for layer in 0..LAYERS {
        let p = format!("model.layers.{layer}.");
        add(format!("{p}input_layernorm.weight"), vec![h], 1.0, 0.1);
        add(format!("{p}self_attn.q_proj.weight"), vec![h, h], 0.0, INIT_STD);
        add(format!("{p}self_attn.k_proj.weight"), vec![kv, h], 0.0, INIT_STD);
        add(format!("{p}self_attn.v_proj.weight"), vec![kv, h], 0.0, INIT_STD);
        add(format!("{p}self_attn.o_proj.weight"), vec![h, h], 0.0, INIT_STD);
        add(format!("{p}post_attention_layernorm.weight"), vec![h], 1.0, 0.1);
        add(format!("{p}mlp.gate_proj.weight"), vec![i, h], 0.0, INIT_STD);
        add(format!("{p}mlp.up_proj.weight"), vec![i, h], 0.0, INIT_STD);
        add(format!("{p}mlp.down_proj.weight"), vec![h, i], 0.0, INIT_STD);
    }
    add("model.norm.weight".into(), vec![h], 1.0, 0.1);
    add("lm_head.weight".into(), vec![v, h], 0.0, INIT_STD);
    out
}

fn config_json() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "initializer_range": INIT_STD,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "pretraining_tp": 1,
        "tie_word_embeddings": false,
        "vocab_size": vocab_size(),
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "torch_dtype": "float32",
        "use_cache": true,
        "transformers_version": "4.33.3",
    })
}

fn tokenizer_json() -> serde_json::Value {
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIALS.iter().copied().chain(words()).enumerate() {
        vocab.insert(token.to_owned(), json!(id));
    }
    let bos = |type_id: u32| json!({"SpecialToken": {"id": "<s>", "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos(0), seq("A", 0)],
            "pair": [bos(0), seq("A", 0), bos(1), seq("B", 1)],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}},
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<(), Failure> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::new(format!("encoding {name}: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| Failure::io(format!("writing {}", path.display()), e))
}

/// Writes the demo model into `dir` (created if missing); the same bytes every time.
pub fn write_demo_model(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::io(format!("creating {}", dir.display()), e))?;
    write_json(dir, "config.json", &config_json())?;
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "transformers_version": "4.33.3"}),
    )?;
    write_json(dir, "tokenizer.json", &tokenizer_json())?;
    write_json(
        dir,
        "tokenizer_config.json",
        &json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512,
                "clean_up_tokenization_spaces": false}),
    )?;
    write_json(
        dir,
        "special_tokens_map.json",
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}),
    )?;
    let tensors = weights();
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, data)| data.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| Failure::new(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let path = dir.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, Some(metadata), &path)
        .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwaai_core::model::{BlockSpan, ClientModel, LoadOptions, TextTokenizer};

    #[test]
    fn the_vocabulary_has_no_duplicates() {
        let words = words();
        let unique: std::collections::HashSet<_> = words.iter().collect();
        assert_eq!(unique.len(), words.len());
        assert!(words.iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase())), "lower-case words only");
    }

    #[test]
    fn the_model_is_deterministic_and_loads() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_demo_model(a.path()).unwrap();
        write_demo_model(b.path()).unwrap();
        for name in ["config.json", "tokenizer.json", "model.safetensors"] {
            assert_eq!(
                std::fs::read(a.path().join(name)).unwrap(),
                std::fs::read(b.path().join(name)).unwrap(),
                "{name}"
            );
        }
        let client = ClientModel::load(a.path()).unwrap();
        assert_eq!(client.config().vocab_size, vocab_size());
        assert_eq!(client.config().num_kv_heads, KV_HEADS);
        let span = BlockSpan::load(a.path(), 0, LAYERS, LoadOptions::default()).unwrap();
        assert_eq!(span.end(), LAYERS);
        let tokenizer = TextTokenizer::from_dir(a.path()).unwrap();
        let ids = tokenizer.encode("The old River, far", true).unwrap();
        let word_id = |w: &str| (SPECIALS.len() + words().iter().position(|x| *x == w).unwrap()) as u32;
        assert_eq!(ids, vec![BOS, word_id("the"), word_id("old"), word_id("river"), 0, word_id("far")]);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "the old river far");
    }
}
