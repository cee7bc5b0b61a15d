//! Finding the best live experts of a grid as hivemind's `MoEBeamSearcher` does
//! (hivemind/moe/client/beam_search.py): the first dimension's indices are tried best first
//! under `"{prefix}{i}."` until `beam_size` live prefixes are found, then each later dimension
//! extends the best prefixes by their live successors; every expert seen along the way competes
//! on the sum of its per-dimension scores.

use rmpv::Value;

use super::uid::{is_valid_prefix, is_valid_uid, ExpertInfo, FLAT_EXPERT, UID_DELIMITER};
use crate::dht::{dht_time, Dht, DhtValue};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::wire::msgpack;

/// How long a "no such prefix" entry lives when negative caching is on (hivemind's default).
pub const DEFAULT_CACHE_EXPIRATION: f64 = 300.0;

/// The live successors of a prefix: (next coordinate, an expert under it), in DHT order.
type Successors = Vec<(i64, ExpertInfo)>;

/// One beam entry: its score, its prefix and the live successors found under it.
type BeamEntry = (f64, String, Successors);

/// Beam search over one expert grid.
#[derive(Clone)]
pub struct MoeBeamSearcher {
    dht: Dht,
    runtime: tokio::runtime::Handle,
    prefix: String,
    grid_size: Vec<usize>,
    negative_caching: bool,
    cache_expiration: f64,
}

impl std::fmt::Debug for MoeBeamSearcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoeBeamSearcher").field("prefix", &self.prefix).field("grid_size", &self.grid_size).finish()
    }
}

impl MoeBeamSearcher {
    /// A searcher for experts `{prefix}.{i}.{j}…` with `grid_size[d]` indices along dimension
    /// `d` (a missing trailing `.` is added). With `negative_caching`, prefixes found empty are
    /// written to the DHT as empty (subkey −1 → nil) for [`DEFAULT_CACHE_EXPIRATION`] seconds.
    pub fn new(node: &Node, prefix: &str, grid_size: Vec<usize>, negative_caching: bool) -> Result<MoeBeamSearcher> {
        let prefix =
            if prefix.ends_with(UID_DELIMITER) { prefix.to_owned() } else { format!("{prefix}{UID_DELIMITER}") };
        if !is_valid_prefix(&prefix) {
            return Err(Error::invalid_argument(format!("{prefix:?} is not a valid expert prefix")));
        }
        if grid_size.is_empty() || grid_size.contains(&0) {
            return Err(Error::invalid_argument("every grid dimension needs at least one index"));
        }
        Ok(MoeBeamSearcher {
            dht: node.dht()?,
            runtime: node.runtime_handle()?,
            prefix,
            grid_size,
            negative_caching,
            cache_expiration: DEFAULT_CACHE_EXPIRATION,
        })
    }

    /// The prefix, ending in `.`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The grid's size along each dimension.
    pub fn grid_size(&self) -> &[usize] {
        &self.grid_size
    }

    /// Up to `beam_size` live experts with the highest total score, best first; `grid_scores[d]`
    /// scores the indices of dimension `d` (blocking).
    pub fn find_best_experts(&self, grid_scores: &[Vec<f32>], beam_size: usize) -> Result<Vec<ExpertInfo>> {
        self.runtime.block_on(self.find_best_experts_async(grid_scores, beam_size))
    }

    /// [`MoeBeamSearcher::find_best_experts`] for async callers.
    pub async fn find_best_experts_async(&self, grid_scores: &[Vec<f32>], beam_size: usize) -> Result<Vec<ExpertInfo>> {
        if grid_scores.len() != self.grid_size.len() || beam_size == 0 {
            return Err(Error::invalid_argument(format!(
                "need one score list per grid dimension ({}) and a positive beam size",
                self.grid_size.len()
            )));
        }
        let mut beam = self.initial_beam(&grid_scores[0], beam_size).await?;
        let mut best = BestExperts::new(beam_size);
        // The middle dimensions (none for 1-D and 2-D grids); the last one is scored at the end.
        for dim_scores in grid_scores.iter().take(grid_scores.len() - 1).skip(1) {
            best.add_matching(&beam, grid_scores);
            let mut candidates: Vec<(f64, String)> = beam
                .iter()
                .flat_map(|(score, prefix, successors)| {
                    successors.iter().filter(|(c, _)| *c >= 0 && (*c as usize) < dim_scores.len()).map(
                        move |(coordinate, _)| {
                            (score + f64::from(dim_scores[*coordinate as usize]), format!("{prefix}{coordinate}."))
                        },
                    )
                })
                .collect();
            // heapq.nlargest: the largest (score, prefix) pairs, best first.
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
            candidates.dedup_by(|a, b| a.1 == b.1);
            candidates.truncate(beam_size);
            let prefixes: Vec<String> = candidates.iter().map(|(_, p)| p.clone()).collect();
            let successors = self.active_successors(&prefixes).await?;
            beam = candidates
                .into_iter()
                .zip(successors)
                .filter(|(_, s)| !s.is_empty())
                .map(|((score, prefix), s)| (score, prefix, s))
                .collect();
            if beam.is_empty() {
                tracing::warn!(prefix = %self.prefix, "beam search ended early: the beam is empty");
                break;
            }
        }
        best.add_matching(&beam, grid_scores);
        Ok(best.into_sorted())
    }

    /// [`MoeBeamSearcher::find_best_experts`] for every sample of a batch, concurrently.
    pub async fn batch_find_best_experts_async(
        &self,
        batch_grid_scores: &[Vec<Vec<f32>>],
        beam_size: usize,
    ) -> Result<Vec<Vec<ExpertInfo>>> {
        futures::future::try_join_all(batch_grid_scores.iter().map(|s| self.find_best_experts_async(s, beam_size)))
            .await
    }

    /// The best live prefixes of the first dimension: indices tried best first (ties: the
    /// higher index first, as hivemind's sort-and-pop does), `beam_size` at a time.
    async fn initial_beam(&self, scores: &[f32], beam_size: usize) -> Result<Vec<BeamEntry>> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
        order.reverse();
        let mut beam = Vec::new();
        for chunk in order.chunks(beam_size) {
            let prefixes: Vec<String> = chunk.iter().map(|i| format!("{}{i}{UID_DELIMITER}", self.prefix)).collect();
            let found = self.dht.get_many(prefixes.iter().map(|p| Value::from(p.as_str())).collect(), false).await?;
            for ((index, prefix), value) in chunk.iter().zip(prefixes).zip(found) {
                if beam.len() >= beam_size {
                    break;
                }
                let successors = valid_entries(value.as_ref(), None);
                if !successors.is_empty() {
                    beam.push((f64::from(scores[*index]), prefix, successors));
                } else if value.is_none() {
                    self.cache_missing(prefix);
                }
            }
            if beam.len() >= beam_size {
                break;
            }
        }
        Ok(beam)
    }

    /// The live successors of each prefix (empty where none).
    async fn active_successors(&self, prefixes: &[String]) -> Result<Vec<Successors>> {
        let found = self.dht.get_many(prefixes.iter().map(|p| Value::from(p.as_str())).collect(), false).await?;
        Ok(prefixes
            .iter()
            .zip(found)
            .map(|(prefix, value)| {
                let successors = valid_entries(value.as_ref(), None);
                if successors.is_empty() {
                    self.cache_missing(prefix.clone());
                }
                successors
            })
            .collect())
    }

    /// Writes "no experts under `prefix`" (subkey −1 → nil) in the background.
    fn cache_missing(&self, prefix: String) {
        if !self.negative_caching {
            return;
        }
        let dht = self.dht.clone();
        let expiration = dht_time() + self.cache_expiration;
        self.runtime.spawn(async move {
            tracing::debug!(%prefix, "negative caching: no experts under this prefix");
            let _ = dht.store(Value::from(prefix), Some(Value::from(FLAT_EXPERT)), Value::Nil, expiration).await;
        });
    }
}

/// The well-formed `coordinate → (uid, peer_b58)` entries of a prefix dictionary
/// (hivemind's `_select_valid_entries`), optionally only coordinates in `0..grid_size`.
fn valid_entries(value: Option<&DhtValue>, grid_size: Option<usize>) -> Successors {
    let Some(DhtValue::Dictionary { entries, .. }) = value else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| {
            let coordinate = match &entry.subkey {
                Value::Integer(i) => i.as_i64()?,
                _ => return None,
            };
            if grid_size.is_some_and(|g| coordinate < 0 || coordinate as usize >= g) {
                return None;
            }
            let items = msgpack::as_tuple(&entry.value)?;
            let [Value::String(uid), Value::String(peer)] = items.as_slice() else { return None };
            let uid = uid.as_str()?;
            if !is_valid_uid(uid) {
                return None;
            }
            let peer_id = peer.as_str()?.parse().ok()?;
            Some((coordinate, ExpertInfo { uid: uid.to_owned(), peer_id }))
        })
        .collect()
}

/// The `beam_size` best experts seen so far (hivemind keeps a min-heap of `(score, info)`).
struct BestExperts {
    capacity: usize,
    kept: Vec<(f64, ExpertInfo)>,
    seen: std::collections::HashSet<String>,
}

impl BestExperts {
    fn new(capacity: usize) -> BestExperts {
        BestExperts { capacity, kept: Vec::new(), seen: Default::default() }
    }

    /// Offers every expert attached to `beam` that fits the grid, scored by its coordinates.
    fn add_matching(&mut self, beam: &[BeamEntry], grid_scores: &[Vec<f32>]) {
        for (score, _, successors) in beam {
            for (coordinate, expert) in successors {
                let total = if grid_scores.len() == 1 && *coordinate == FLAT_EXPERT {
                    Some(*score)
                } else {
                    expert_score(&expert.uid, grid_scores)
                };
                match total {
                    Some(total) => self.offer(total, expert),
                    None => tracing::warn!(uid = %expert.uid, "found an expert that does not fit the grid"),
                }
            }
        }
    }

    fn offer(&mut self, score: f64, expert: &ExpertInfo) {
        if !self.seen.insert(expert.uid.clone()) {
            return;
        }
        let key = |s: f64, e: &ExpertInfo| (s, e.uid.clone());
        if self.kept.len() < self.capacity {
            self.kept.push((score, expert.clone()));
            return;
        }
        let (worst, _) = self
            .kept
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.0.total_cmp(&b.0).then_with(|| a.1.uid.cmp(&b.1.uid)))
            .expect("capacity is positive");
        let (worst_score, worst_uid) = key(self.kept[worst].0, &self.kept[worst].1);
        if score > worst_score || (score == worst_score && expert.uid > worst_uid) {
            self.kept[worst] = (score, expert.clone());
        }
    }

    fn into_sorted(mut self) -> Vec<ExpertInfo> {
        self.kept.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.uid.cmp(&a.1.uid)));
        self.kept.into_iter().map(|(_, e)| e).collect()
    }
}

/// The sum of `uid`'s per-dimension scores, if it has one in-range coordinate per dimension.
fn expert_score(uid: &str, grid_scores: &[Vec<f32>]) -> Option<f64> {
    let coordinates: Vec<&str> = uid.split(UID_DELIMITER).skip(1).collect();
    if coordinates.len() != grid_scores.len() {
        return None;
    }
    coordinates.iter().zip(grid_scores).try_fold(0.0f64, |sum, (c, scores)| {
        let index: usize = c.parse().ok()?;
        scores.get(index).map(|s| sum + f64::from(*s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experts_are_scored_by_their_coordinates() {
        let scores = vec![vec![0.5, 1.0], vec![0.25, -1.0, 2.0]];
        assert_eq!(expert_score("ffn.1.2", &scores), Some(3.0));
        assert_eq!(expert_score("ffn.0.0", &scores), Some(0.75));
        assert_eq!(expert_score("ffn.0.3", &scores), None, "out of the grid");
        assert_eq!(expert_score("ffn.0", &scores), None, "too few coordinates");
    }

    #[test]
    fn the_best_experts_are_kept_best_first() {
        let peer = libp2p::PeerId::random();
        let info = |uid: &str| ExpertInfo { uid: uid.into(), peer_id: peer };
        let mut best = BestExperts::new(2);
        for (score, uid) in [(1.0, "a.0"), (3.0, "a.1"), (2.0, "a.2"), (0.5, "a.3"), (3.0, "a.1")] {
            best.offer(score, &info(uid));
        }
        assert_eq!(best.into_sorted(), vec![info("a.1"), info("a.2")]);
    }
}
