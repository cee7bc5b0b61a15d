//! Token-by-token generation around a chain of blocks (local or remote).

use candle_core::{Device, IndexOp, Tensor};

use super::client::ClientModel;
use super::sampling::{Sampler, SamplingConfig};
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Stop tokens are suppressed until this many tokens were generated (as transformers' `min_new_tokens`).
    pub min_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingConfig,
    /// Generation ends after any of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
    /// Generation ends once the new tokens end with any of these sequences (included in the
    /// output), e.g. the ids of a stop string.
    pub stop_sequences: Vec<Vec<u32>>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 32,
            min_new_tokens: 0,
            sampling: SamplingConfig::default(),
            stop_tokens: vec![],
            stop_sequences: vec![],
        }
    }
}

/// Generates tokens after `prompt` (batch 1). `blocks` runs every block of the model on hidden states (1, T,
/// hidden), keeping its own cache: it is called once with the whole prompt, then once per new token.
/// `on_token` sees each token as it is chosen. Returns the new tokens.
pub fn generate(
    client: &ClientModel,
    prompt: &[u32],
    config: &GenerationConfig,
    mut blocks: impl FnMut(&Tensor) -> Result<Tensor>,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let mut generation = Generation::new(prompt, config.clone())?;
    while let Some(embedded) = generation.next_input(client)? {
        let token = generation.accept(client, &blocks(&embedded)?)?;
        on_token(token);
    }
    Ok(generation.into_tokens())
}

/// A generation driven one step at a time, for callers whose blocks run asynchronously (the
/// browser): [`Generation::next_input`] gives the embedded input of the next step, the caller runs
/// it through every block, and [`Generation::accept`] chooses the next token from the output.
/// [`generate`] is this loop with blocking blocks, so both produce the same tokens.
pub struct Generation {
    config: GenerationConfig,
    sampler: Sampler,
    seen: Vec<u32>,
    out: Vec<u32>,
    input: Vec<u32>,
    done: bool,
}

impl Generation {
    /// A generation after `prompt` (not empty).
    pub fn new(prompt: &[u32], config: GenerationConfig) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::invalid_argument("the prompt is empty"));
        }
        let sampler = Sampler::new(config.sampling.clone())?;
        let done = config.max_new_tokens == 0;
        let out = Vec::with_capacity(config.max_new_tokens);
        Ok(Generation { config, sampler, seen: prompt.to_vec(), out, input: prompt.to_vec(), done })
    }

    /// The embeddings `(1, T, hidden)` of the tokens the blocks have not seen yet (the prompt,
    /// then the last token), or `None` once the generation is over.
    pub fn next_input(&self, client: &ClientModel) -> Result<Option<Tensor>> {
        if self.done {
            return Ok(None);
        }
        let ids = Tensor::new(self.input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        client.embed(&ids).map(Some)
    }

    /// Chooses the next token from the last block's output `(1, T, hidden)` for the last input.
    pub fn accept(&mut self, client: &ClientModel, hidden: &Tensor) -> Result<u32> {
        if self.done {
            return Err(Error::invalid_argument("the generation is over"));
        }
        let t = hidden.dim(1)?;
        let mut logits = client.logits(&hidden.i((.., t - 1..t))?)?.flatten_all()?.to_vec1::<f32>()?;
        if self.out.len() < self.config.min_new_tokens {
            for &s in &self.config.stop_tokens {
                if let Some(l) = logits.get_mut(s as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = self.sampler.next(&logits, &self.seen)?;
        self.out.push(token);
        self.seen.push(token);
        self.input = vec![token];
        self.done = self.out.len() >= self.config.max_new_tokens
            || self.config.stop_tokens.contains(&token)
            || ends_with_any(&self.out, &self.config.stop_sequences);
        Ok(token)
    }

    /// Tokens the blocks will have seen once the generation ends (prompt and new tokens), at most.
    pub fn max_length(&self) -> usize {
        self.seen.len() - self.out.len() + self.config.max_new_tokens
    }

    /// The tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.out
    }

    /// The tokens generated.
    pub fn into_tokens(self) -> Vec<u32> {
        self.out
    }
}

/// Whether `tokens` ends with one of `sequences` (empty sequences never match).
fn ends_with_any(tokens: &[u32], sequences: &[Vec<u32>]) -> bool {
    sequences.iter().any(|s| !s.is_empty() && tokens.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::ends_with_any;

    #[test]
    fn stop_sequences_match_the_end_of_the_generated_tokens() {
        let stops = vec![vec![5, 6], vec![], vec![9]];
        assert!(ends_with_any(&[1, 5, 6], &stops));
        assert!(ends_with_any(&[9], &stops));
        assert!(!ends_with_any(&[5, 6, 1], &stops), "only at the end");
        assert!(!ends_with_any(&[6], &stops), "the whole sequence");
        assert!(!ends_with_any(&[1, 2], &[vec![]]), "an empty sequence never stops");
    }
}
