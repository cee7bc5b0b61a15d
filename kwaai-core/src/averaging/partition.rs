//! Splitting the averaged tensors into parts, assigning parts to reducers, and reducing the
//! parts a peer is responsible for (hivemind 1.1.10.post2: hivemind/averaging/partition.py).

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::tensor::CompressionType;

/// hivemind's default part size: 512 KiB after compression.
pub const DEFAULT_PART_SIZE_BYTES: usize = 1 << 19;

/// How many float32 values fit in one part of `part_size_bytes` under `compression`
/// (hivemind: `int(part_size_bytes / (element_size * estimate_compression_ratio))`).
pub fn part_size_values(part_size_bytes: usize, compression: CompressionType) -> usize {
    let ratio = match compression {
        CompressionType::None => 1.0,
        CompressionType::Float16 | CompressionType::Meanstd16bit => 16.0 / 32.0,
        CompressionType::Quantile8bit | CompressionType::Uniform8bit | CompressionType::Blockwise8bit => 8.0 / 32.0,
    };
    ((part_size_bytes as f64 / (4.0 * ratio)) as usize).max(1)
}

/// One part: a run of one tensor's flattened elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// Which tensor.
    pub tensor: usize,
    /// The first element, in the flattened tensor.
    pub start: usize,
    /// How many elements.
    pub len: usize,
}

/// Every part of every tensor and the reducer of each (hivemind's `TensorPartContainer` split).
/// Parts are numbered in tensor order; each peer reduces one contiguous run of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartPlan {
    /// All parts, tensor by tensor.
    pub parts: Vec<Part>,
    /// For each peer, the range of part numbers it reduces.
    pub by_peer: Vec<std::ops::Range<usize>>,
}

impl PartPlan {
    /// Splits tensors of `sizes` elements into parts of `part_size` values and assigns them to
    /// peers in proportion to `peer_shares` (element counts), exactly as hivemind does: a part
    /// that straddles two peers' shares goes to the peer that overlaps it most.
    pub fn new(sizes: &[usize], peer_shares: &[usize], part_size: usize) -> Result<PartPlan> {
        if peer_shares.is_empty() || part_size == 0 {
            return Err(Error::invalid_argument("a part plan needs at least one peer and a positive part size"));
        }
        let total: usize = sizes.iter().sum();
        let share_sum: usize = peer_shares.iter().sum();
        if share_sum == 0 {
            return Err(Error::invalid_argument("every peer share is zero"));
        }
        let mut cumulative = 0usize;
        let mut pivots: Vec<usize> = peer_shares
            .iter()
            .map(|share| {
                cumulative += share;
                (cumulative as f64 / share_sum as f64 * total as f64) as usize
            })
            .collect();
        *pivots.last_mut().expect("non-empty") = total;

        let mut parts = Vec::new();
        let mut owner = Vec::new();
        let mut current_length = 0usize;
        let mut peer = 0usize;
        for (tensor, &size) in sizes.iter().enumerate() {
            let mut start = 0;
            while start < size {
                let len = part_size.min(size - start);
                let end = current_length + len;
                if end > pivots[peer] {
                    let first = peer;
                    let mut overlaps = vec![pivots[peer].saturating_sub(current_length)];
                    while end > pivots[peer] {
                        peer += 1;
                        overlaps.push(end.min(pivots[peer]) - pivots[peer - 1]);
                    }
                    let best = overlaps
                        .iter()
                        .enumerate()
                        .fold((0, 0), |best, (i, &o)| if o > best.1 { (i, o) } else { best })
                        .0;
                    owner.push(first + best);
                } else {
                    owner.push(peer);
                }
                parts.push(Part { tensor, start, len });
                current_length = end;
                start += len;
            }
        }
        let by_peer = (0..peer_shares.len())
            .map(|p| {
                let first = owner.iter().position(|&o| o >= p).unwrap_or(owner.len());
                let end = owner.iter().position(|&o| o > p).unwrap_or(owner.len());
                first..end
            })
            .collect();
        Ok(PartPlan { parts, by_peer })
    }

    /// How many parts each peer reduces.
    pub fn parts_per_peer(&self) -> Vec<usize> {
        self.by_peer.iter().map(|r| r.len()).collect()
    }

    /// How many parts each of the `tensors` tensors was split into.
    pub fn parts_per_tensor(&self, tensors: usize) -> Vec<usize> {
        let mut counts = vec![0; tensors];
        for part in &self.parts {
            counts[part.tensor] += 1;
        }
        counts
    }
}

/// Why a reducer refused a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReduceError {
    /// The sender was excluded (it failed or was too slow); stop taking its parts.
    Banned,
    /// The reducer stopped before this part was averaged.
    Finished,
    /// The part does not fit (wrong index or length).
    Invalid(String),
}

/// Averages the parts one peer is responsible for, part by part, from every sender
/// (hivemind's `TensorPartReducer`). A part is done once every sender still in the round gave
/// it; a sender that fails is excluded from the parts it has not sent yet.
pub struct PartReducer {
    state: Mutex<ReducerState>,
    /// Bumped whenever a part is done or the reducer finishes.
    progress: watch::Sender<usize>,
}

struct ReducerState {
    part_lens: Vec<usize>,
    current: usize,
    accumulator: Vec<f32>,
    denominator: f64,
    accumulated_from: usize,
    current_senders: usize,
    received: Vec<usize>,
    failed_after: Vec<Option<usize>>,
    results: Vec<Option<Arc<Vec<f32>>>>,
    finished: bool,
}

impl ReducerState {
    fn senders_for(&self, part: usize) -> usize {
        self.failed_after.iter().filter(|f| f.is_none_or(|after| part < after)).count()
    }

    /// Finishes the current part if every expected sender gave it, then any later part whose
    /// senders have all failed. Returns whether anything changed.
    fn advance(&mut self) -> bool {
        let mut changed = false;
        while !self.finished && self.accumulated_from >= self.current_senders {
            let denominator = self.denominator as f32;
            let average: Vec<f32> = if self.accumulated_from == 0 {
                vec![0.0; self.part_lens[self.current]]
            } else {
                std::mem::take(&mut self.accumulator).into_iter().map(|v| v / denominator).collect()
            };
            self.results[self.current] = Some(Arc::new(average));
            self.current += 1;
            changed = true;
            if self.current >= self.part_lens.len() {
                self.finished = true;
                break;
            }
            self.accumulator = vec![0.0; self.part_lens[self.current]];
            self.denominator = 0.0;
            self.accumulated_from = 0;
            self.current_senders = self.senders_for(self.current);
        }
        changed
    }
}

impl PartReducer {
    /// A reducer of parts of `part_lens` elements from `senders` senders.
    pub fn new(part_lens: Vec<usize>, senders: usize) -> PartReducer {
        let parts = part_lens.len();
        let first = part_lens.first().copied().unwrap_or(0);
        let state = ReducerState {
            current: 0,
            accumulator: vec![0.0; first],
            denominator: 0.0,
            accumulated_from: 0,
            current_senders: senders,
            received: vec![0; senders],
            failed_after: vec![None; senders],
            results: vec![None; parts],
            finished: parts == 0 || senders == 0,
            part_lens,
        };
        let (progress, _) = watch::channel(0);
        PartReducer { state: Mutex::new(state), progress }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReducerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of parts.
    pub fn num_parts(&self) -> usize {
        self.lock().part_lens.len()
    }

    /// Adds `sender`'s `part` (number `index`, weighted by `weight`) and waits for the average
    /// of that part over every sender.
    pub async fn accumulate(
        &self,
        sender: usize,
        index: usize,
        part: &[f32],
        weight: f64,
    ) -> std::result::Result<Arc<Vec<f32>>, ReduceError> {
        let mut progress = self.progress.subscribe();
        {
            let state = self.lock();
            if sender >= state.received.len() || index >= state.part_lens.len() {
                return Err(ReduceError::Invalid(format!("no part {index} from sender {sender}")));
            }
            if part.len() != state.part_lens[index] {
                return Err(ReduceError::Invalid(format!(
                    "part {index} has {} values, expected {}",
                    part.len(),
                    state.part_lens[index]
                )));
            }
        }
        // Wait for the earlier parts to be done.
        loop {
            {
                let mut state = self.lock();
                if state.failed_after[sender].is_some() {
                    return Err(ReduceError::Banned);
                }
                if state.finished && state.results[index].is_none() {
                    return Err(ReduceError::Finished);
                }
                if index <= state.current || state.finished {
                    if index == state.current && !state.finished {
                        state.received[sender] += 1;
                        let w = weight as f32;
                        for (acc, v) in state.accumulator.iter_mut().zip(part) {
                            *acc += w * v;
                        }
                        state.denominator += weight;
                        state.accumulated_from += 1;
                        if state.advance() {
                            self.progress.send_modify(|n| *n += 1);
                        }
                    } else {
                        return Err(ReduceError::Invalid(format!("part {index} was already averaged")));
                    }
                    break;
                }
            }
            if progress.changed().await.is_err() {
                return Err(ReduceError::Finished);
            }
        }
        loop {
            {
                let state = self.lock();
                if let Some(result) = &state.results[index] {
                    return Ok(result.clone());
                }
                if state.finished {
                    return Err(ReduceError::Finished);
                }
            }
            if progress.changed().await.is_err() {
                return Err(ReduceError::Finished);
            }
        }
    }

    /// Excludes `sender` from every part it has not sent yet.
    pub fn on_sender_failed(&self, sender: usize) {
        let mut state = self.lock();
        if sender >= state.failed_after.len() || state.failed_after[sender].is_some() {
            return;
        }
        state.failed_after[sender] = Some(state.received[sender]);
        if state.finished {
            return;
        }
        let current = state.current;
        state.current_senders = state.senders_for(current);
        if state.advance() {
            drop(state);
            self.progress.send_modify(|n| *n += 1);
        }
    }

    /// Stops the reducer: parts still waiting fail with [`ReduceError::Finished`].
    pub fn finish(&self) {
        let mut state = self.lock();
        if !state.finished {
            state.finished = true;
            drop(state);
            self.progress.send_modify(|n| *n += 1);
        }
    }
}

impl std::fmt::Debug for PartReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("PartReducer").field("parts", &state.part_lens.len()).field("current", &state.current).finish()
    }
}

/// The error a peer gets when its part was refused.
pub(crate) fn reduce_error(e: ReduceError) -> Error {
    match e {
        ReduceError::Banned => Error::new(ErrorKind::Protocol, "the sender was excluded from this round"),
        ReduceError::Finished => Error::new(ErrorKind::Closed, "the reducer finished before this part"),
        ReduceError::Invalid(text) => Error::new(ErrorKind::Protocol, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(plan: &PartPlan, peer: usize) -> Vec<usize> {
        plan.parts[plan.by_peer[peer].clone()].iter().map(|p| p.len).collect()
    }

    // Expected values: hivemind's TensorPartContainer for tensors of 300000, 5, 200000 and
    // 1000x300 float32 elements split among load_balance_peers(total, [None] * 3).
    #[test]
    fn plan_matches_hivemind_container() {
        let sizes = [300_000, 5, 200_000, 300_000];
        let shares = [266_669, 266_668, 266_668];
        let plan =
            PartPlan::new(&sizes, &shares, part_size_values(DEFAULT_PART_SIZE_BYTES, CompressionType::None)).unwrap();
        assert_eq!(plan.parts_per_tensor(4), vec![3, 1, 2, 3]);
        assert_eq!(plan.parts_per_peer(), vec![2, 4, 3]);
        assert_eq!(lens(&plan, 1), vec![37_856, 5, 131_072, 68_928]);
        assert_eq!(lens(&plan, 2), vec![131_072, 131_072, 37_856]);

        let plan = PartPlan::new(&sizes, &shares, part_size_values(DEFAULT_PART_SIZE_BYTES, CompressionType::Float16))
            .unwrap();
        assert_eq!(plan.parts_per_tensor(4), vec![2, 1, 1, 2]);
        assert_eq!(plan.parts_per_peer(), vec![1, 3, 2]);
        let plan =
            PartPlan::new(&sizes, &shares, part_size_values(DEFAULT_PART_SIZE_BYTES, CompressionType::Uniform8bit))
                .unwrap();
        assert_eq!(plan.parts_per_peer(), vec![1, 2, 1]);
        // hivemind: TensorPartContainer(tensors, (1, 0, 5), part_size_bytes=100000).
        let plan = PartPlan::new(&sizes, &[1, 0, 5], part_size_values(100_000, CompressionType::None)).unwrap();
        assert_eq!(plan.parts_per_tensor(4), vec![12, 1, 8, 12]);
        assert_eq!(plan.parts_per_peer(), vec![5, 0, 28]);
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn reducer_averages_with_weights_part_by_part() {
        block_on(async {
            let reducer = Arc::new(PartReducer::new(vec![2, 1], 2));
            let r = reducer.clone();
            let first = tokio::spawn(async move {
                let a = r.accumulate(0, 0, &[1.0, 2.0], 1.0).await.unwrap();
                let b = r.accumulate(0, 1, &[10.0], 1.0).await.unwrap();
                (a, b)
            });
            let a = reducer.accumulate(1, 0, &[4.0, 8.0], 2.0).await.unwrap();
            let b = reducer.accumulate(1, 1, &[40.0], 2.0).await.unwrap();
            assert_eq!(*a, vec![3.0, 6.0]);
            assert_eq!(*b, vec![30.0]);
            let (a2, b2) = first.await.unwrap();
            assert_eq!((a2, b2), (a, b));
        });
    }

    #[test]
    fn a_failed_sender_is_left_out_of_later_parts() {
        block_on(async {
            let reducer = Arc::new(PartReducer::new(vec![1, 1], 2));
            let r = reducer.clone();
            let waiting = tokio::spawn(async move { r.accumulate(0, 0, &[2.0], 1.0).await });
            tokio::task::yield_now().await;
            reducer.on_sender_failed(1);
            assert_eq!(*waiting.await.unwrap().unwrap(), vec![2.0]);
            assert_eq!(*reducer.accumulate(0, 1, &[5.0], 1.0).await.unwrap(), vec![5.0]);
            assert_eq!(reducer.accumulate(1, 1, &[1.0], 1.0).await.unwrap_err(), ReduceError::Banned);
        });
    }

    #[test]
    fn wrong_lengths_are_refused() {
        block_on(async {
            let reducer = PartReducer::new(vec![3], 1);
            assert!(matches!(reducer.accumulate(0, 0, &[1.0], 1.0).await, Err(ReduceError::Invalid(_))));
            assert!(matches!(reducer.accumulate(0, 5, &[1.0], 1.0).await, Err(ReduceError::Invalid(_))));
        });
    }
}
