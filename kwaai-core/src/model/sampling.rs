//! Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty, with a seedable
//! RNG; processors apply in transformers' order (penalty, temperature, top-k, top-p).

use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Sample from the distribution (true) or take the most likely token (false, greedy).
    pub do_sample: bool,
    /// Logits are divided by this before sampling (> 0).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1.0: all).
    pub top_p: f32,
    /// Divide positive / multiply negative logits of tokens already seen by this (1.0: off).
    pub repetition_penalty: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { do_sample: false, temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

/// A small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks next tokens according to a [`SamplingConfig`].
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: Rng,
}

impl Sampler {
    /// Checks the config and seeds the RNG.
    pub fn new(config: SamplingConfig) -> Result<Self> {
        if config.do_sample && !(config.temperature > 0.0 && config.temperature.is_finite()) {
            return Err(Error::invalid_argument("temperature must be positive"));
        }
        if !(config.top_p > 0.0 && config.top_p <= 1.0) {
            return Err(Error::invalid_argument("top_p must be in (0, 1]"));
        }
        if !(config.repetition_penalty > 0.0 && config.repetition_penalty.is_finite()) {
            return Err(Error::invalid_argument("repetition_penalty must be positive"));
        }
        let rng = Rng::new(config.seed);
        Ok(Sampler { config, rng })
    }

    /// The next token given one row of logits and the ids seen so far (prompt and generated).
    pub fn next(&mut self, logits: &[f32], seen: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid_argument("empty logits"));
        }
        let mut scores = logits.to_vec();
        let penalty = self.config.repetition_penalty;
        if penalty != 1.0 {
            for &id in seen {
                if let Some(s) = scores.get_mut(id as usize) {
                    *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
                }
            }
        }
        if !self.config.do_sample {
            return Ok(argmax(&scores));
        }
        let t = self.config.temperature;
        if t != 1.0 {
            scores.iter_mut().for_each(|s| *s /= t);
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut keep = order.len();
        if self.config.top_k > 0 {
            keep = keep.min(self.config.top_k);
        }
        let max = scores[order[0]];
        let probs: Vec<f64> = order[..keep].iter().map(|&i| ((scores[i] - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        if self.config.top_p < 1.0 {
            // Keep tokens until the cumulative probability reaches top_p (always at least one).
            let mut cum = 0.0;
            let mut n = 0;
            for p in &probs {
                cum += p / total;
                n += 1;
                if cum >= self.config.top_p as f64 {
                    break;
                }
            }
            keep = n;
        }
        let probs = &probs[..keep];
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return Ok(order[i] as u32);
            }
            u -= p;
        }
        Ok(order[keep - 1] as u32)
    }
}

/// Index of the largest value (the first one on ties, as torch.argmax).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingConfig::default()).unwrap();
        assert_eq!(s.next(&[0.0, 3.0, 1.0, 3.0], &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let cfg = SamplingConfig { repetition_penalty: 4.0, ..Default::default() };
        let mut s = Sampler::new(cfg).unwrap();
        // 3.0 / 4 = 0.75 < 1.0: token 1 loses to token 2 once seen.
        assert_eq!(s.next(&[0.0, 3.0, 1.0], &[1]).unwrap(), 2);
        // Negative logits are multiplied: -1 * 4 = -4 < -2.
        assert_eq!(s.next(&[-3.0, -1.0, -2.0], &[1]).unwrap(), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -1.0];
        for cfg in [
            SamplingConfig { do_sample: true, top_k: 1, seed: 7, ..Default::default() },
            SamplingConfig { do_sample: true, top_p: 0.01, seed: 7, ..Default::default() },
        ] {
            let mut s = Sampler::new(cfg).unwrap();
            for _ in 0..50 {
                assert_eq!(s.next(&logits, &[]).unwrap(), 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        // softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0, 3f32.ln()];
        let cfg = SamplingConfig { do_sample: true, seed: 42, ..Default::default() };
        let draw = |cfg: SamplingConfig| {
            let mut s = Sampler::new(cfg).unwrap();
            (0..4000).map(|_| s.next(&logits, &[]).unwrap()).collect::<Vec<_>>()
        };
        let a = draw(cfg.clone());
        assert_eq!(a, draw(cfg.clone()), "same seed, same tokens");
        assert_ne!(a, draw(SamplingConfig { seed: 43, ..cfg.clone() }), "another seed, other tokens");
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "P(token 1) = {ones}, expected 0.75");
        // A high temperature flattens the distribution toward uniform.
        let hot = draw(SamplingConfig { temperature: 100.0, ..cfg });
        let ones = hot.iter().filter(|&&t| t == 1).count() as f64 / hot.len() as f64;
        assert!((ones - 0.5).abs() < 0.03, "P(token 1) at T=100 = {ones}, expected ~0.5");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(Sampler::new(SamplingConfig { do_sample: true, temperature: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingConfig { top_p: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingConfig { repetition_penalty: -1.0, ..Default::default() }).is_err());
    }
}
