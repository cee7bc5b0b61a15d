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
    if prompt.is_empty() {
        return Err(Error::invalid_argument("the prompt is empty"));
    }
    let mut sampler = Sampler::new(config.sampling.clone())?;
    let mut seen = prompt.to_vec();
    let mut out = Vec::with_capacity(config.max_new_tokens);
    let mut input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    while out.len() < config.max_new_tokens {
        let hidden = blocks(&client.embed(&input)?)?;
        let t = hidden.dim(1)?;
        let mut logits = client.logits(&hidden.i((.., t - 1..t))?)?.flatten_all()?.to_vec1::<f32>()?;
        if out.len() < config.min_new_tokens {
            for &s in &config.stop_tokens {
                if let Some(l) = logits.get_mut(s as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = sampler.next(&logits, &seen)?;
        out.push(token);
        seen.push(token);
        on_token(token);
        if config.stop_tokens.contains(&token) || ends_with_any(&out, &config.stop_sequences) {
            break;
        }
        input = Tensor::new(&[token], &Device::Cpu)?.unsqueeze(0)?;
    }
    Ok(out)
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
