//! How many elements of the averaged vector each peer reduces, from the peers' bandwidths
//! (hivemind 1.1.10.post2: hivemind/averaging/load_balancing.py).
//!
//! hivemind solves a linear program with scipy; where its optimum is unique (every peer with the
//! same bandwidth, or bandwidths left unspecified, which is hivemind's default) this module gives
//! the same split. Where the program has many optima, scipy's pick depends on its solver, and
//! this module picks the one spreading the work in proportion to each peer's spare capacity.

use crate::error::{Error, Result};

/// Decimals hivemind rounds the scores to.
const SCORE_DECIMALS: i32 = 9;

/// The number of elements each peer reduces, summing to `vector_size`. A bandwidth of `None`
/// means "the mean of the others"; `Some(0.0)` peers (clients) reduce nothing; peers whose
/// share would be under `min_size` elements get nothing when some other peer reaches it.
pub fn load_balance_peers(vector_size: usize, bandwidths: &[Option<f64>], min_size: usize) -> Result<Vec<usize>> {
    if bandwidths.is_empty() {
        return Err(Error::invalid_argument("cannot balance an empty group"));
    }
    if bandwidths.iter().flatten().any(|b| !b.is_finite() || *b < 0.0) {
        return Err(Error::invalid_argument(format!("bandwidths must be finite and non-negative: {bandwidths:?}")));
    }
    let specified: Vec<f64> = bandwidths.iter().flatten().copied().filter(|b| *b > 0.0).collect();
    let scores = if specified.is_empty() {
        if bandwidths.iter().all(Option::is_some) {
            return Err(Error::invalid_argument("at least one peer must have a nonzero bandwidth"));
        }
        bandwidths.iter().map(|b| if b.is_none() { 1.0 } else { 0.0 }).collect()
    } else {
        let mean = specified.iter().sum::<f64>() / specified.len() as f64;
        let filled: Vec<f64> = bandwidths.iter().map(|b| b.unwrap_or(mean)).collect();
        optimize_parts(vector_size, &filled, min_size)
    };
    Ok(hagenbach_bishoff(vector_size, &scores))
}

/// Scores (fractions up to scale) minimising the slowest peer's time in butterfly all-reduce:
/// peer i moves `vector_size * (1 + (n - 2) * w_i)` elements at bandwidth `b_i`.
fn optimize_parts(vector_size: usize, bandwidths: &[f64], min_size: usize) -> Vec<f64> {
    let n = bandwidths.len();
    let active: Vec<usize> = (0..n).filter(|&i| bandwidths[i] > 0.0).collect();
    let mut scores = vec![0.0; n];
    if n <= 2 {
        // The program leaves the split free; split evenly among the peers that can reduce.
        for &i in &active {
            scores[i] = 1.0 / active.len() as f64;
        }
    } else {
        let slope = (n - 2) as f64;
        // The most peer i may take when the slowest peer needs `time`.
        let capacity = |time: f64, i: usize| ((time * bandwidths[i] - 1.0) / slope).clamp(0.0, 1.0);
        let total = |time: f64| active.iter().map(|&i| capacity(time, i)).sum::<f64>();
        let floor = active.iter().map(|&i| 1.0 / bandwidths[i]).fold(0.0, f64::max);
        let time = if total(floor) >= 1.0 {
            floor
        } else {
            let (mut low, mut high) = (floor, floor.max(1.0));
            while total(high) < 1.0 {
                high *= 2.0;
            }
            for _ in 0..200 {
                let mid = 0.5 * (low + high);
                if total(mid) < 1.0 {
                    low = mid;
                } else {
                    high = mid;
                }
            }
            high
        };
        let sum = total(time);
        for &i in &active {
            scores[i] = capacity(time, i) / sum;
        }
    }
    let threshold = min_size as f64 / vector_size.max(1) as f64;
    if scores.iter().copied().fold(0.0, f64::max) >= threshold {
        for s in scores.iter_mut().filter(|s| **s < threshold) {
            *s = 0.0;
        }
    }
    let scale = 10f64.powi(SCORE_DECIMALS);
    scores.iter().map(|s| (s * scale).round() / scale).collect()
}

/// Integer shares of `vector_size` in proportion to `scores` (hivemind's `hagenbach_bishoff`,
/// with the same float arithmetic and the same tie-break: the first largest quotient).
pub fn hagenbach_bishoff(vector_size: usize, scores: &[f64]) -> Vec<usize> {
    let total: f64 = scores.iter().sum();
    let mut allocated: Vec<usize> = scores.iter().map(|s| (vector_size as f64 * s / total) as usize).collect();
    while allocated.iter().sum::<usize>() < vector_size {
        let mut best = 0;
        let mut best_quotient = f64::NEG_INFINITY;
        for (i, (score, given)) in scores.iter().zip(&allocated).enumerate() {
            let quotient = score / (*given as f64 + 1.0);
            if quotient > best_quotient {
                best_quotient = quotient;
                best = i;
            }
        }
        allocated[best] += 1;
    }
    allocated
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected splits are what hivemind's load_balance_peers returns for the same input.
    #[test]
    fn unspecified_and_equal_bandwidths_split_like_hivemind() {
        assert_eq!(load_balance_peers(1000, &[None, None, None], 0).unwrap(), vec![334, 333, 333]);
        assert_eq!(load_balance_peers(1000, &[Some(1.0), None, None], 0).unwrap(), vec![334, 333, 333]);
        assert_eq!(load_balance_peers(1_000_000, &[Some(1.0), Some(1.0)], 0).unwrap(), vec![500_000, 500_000]);
        assert_eq!(
            load_balance_peers(1_000_000, &[Some(1.0), Some(0.0), Some(2.0)], 0).unwrap(),
            vec![0, 0, 1_000_000]
        );
        assert_eq!(load_balance_peers(10, &[None, Some(0.0), None, None], 0).unwrap(), vec![4, 0, 3, 3]);
    }

    #[test]
    fn a_fast_peer_takes_everything_when_it_alone_is_fastest() {
        // hivemind: load_balance_peers(10**6, [5.0, 1.0, 1.0, 1.0]) == (10**6, 0, 0, 0).
        assert_eq!(
            load_balance_peers(1_000_000, &[Some(5.0), Some(1.0), Some(1.0), Some(1.0)], 0).unwrap(),
            vec![1_000_000, 0, 0, 0]
        );
    }

    #[test]
    fn shares_grow_with_bandwidth_and_sum_to_the_vector() {
        let split = load_balance_peers(999_983, &[Some(1.0), Some(1.5), Some(2.0), Some(3.0)], 0).unwrap();
        assert_eq!(split.iter().sum::<usize>(), 999_983);
        assert!(split.windows(2).all(|w| w[0] <= w[1]), "{split:?}");
    }

    #[test]
    fn all_zero_bandwidths_are_refused() {
        assert!(load_balance_peers(10, &[Some(0.0), Some(0.0)], 0).is_err());
        assert!(load_balance_peers(10, &[Some(-1.0), None], 0).is_err());
    }

    #[test]
    fn hagenbach_bishoff_gives_leftovers_to_the_largest_quotient() {
        assert_eq!(hagenbach_bishoff(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(hagenbach_bishoff(7, &[0.5, 0.25, 0.25]), vec![4, 2, 1]);
    }
}
