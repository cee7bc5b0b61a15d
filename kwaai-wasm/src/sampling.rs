//! Choosing the next token from a row of logits, as transformers' `generate` does.

use kwaai_core::model::SamplingConfig;
use wasm_bindgen::prelude::*;

use crate::js_error;

/// The index of the largest logit (the first one on ties, as `torch.argmax`): greedy decoding.
#[wasm_bindgen]
pub fn argmax(logits: &[f32]) -> Result<u32, JsError> {
    if logits.is_empty() {
        return Err(JsError::new("invalid_argument: empty logits"));
    }
    Ok(kwaai_core::model::argmax(logits))
}

/// Picks next tokens: greedy, or sampled after a repetition penalty, temperature, top-k and top-p
/// (transformers' order), from a seeded generator so a seed repeats its choices.
#[wasm_bindgen]
pub struct Sampler(kwaai_core::model::Sampler);

#[wasm_bindgen]
impl Sampler {
    /// `new Sampler(doSample, temperature, topK, topP, repetitionPenalty, seed)`: `topK` 0 and
    /// `topP` 1 keep every token, `repetitionPenalty` 1 is off, `seed` is a BigInt. Throws on a
    /// non-positive temperature (when sampling), `topP` outside (0, 1] or a non-positive penalty.
    #[wasm_bindgen(constructor)]
    pub fn new(
        do_sample: bool,
        temperature: f32,
        top_k: u32,
        top_p: f32,
        repetition_penalty: f32,
        seed: u64,
    ) -> Result<Sampler, JsError> {
        let config = SamplingConfig { do_sample, temperature, top_k: top_k as usize, top_p, repetition_penalty, seed };
        kwaai_core::model::Sampler::new(config).map(Sampler).map_err(js_error)
    }

    /// A sampler that always takes the most likely token.
    pub fn greedy() -> Sampler {
        Sampler(kwaai_core::model::Sampler::new(SamplingConfig::default()).expect("the default config is valid"))
    }

    /// The next token for one row of logits, given the ids seen so far (prompt and generated, for
    /// the repetition penalty).
    pub fn next(&mut self, logits: &[f32], seen: &[u32]) -> Result<u32, JsError> {
        self.0.next(logits, seen).map_err(js_error)
    }
}
