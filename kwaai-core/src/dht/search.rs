//! Iterative lookup: hivemind's beam search over `rpc_find`, for one key.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;

use super::id::DhtId;
use super::protocol::{FoundValue, Protocol};
use super::storage::{DhtTime, StoredValue};

/// The best value seen so far for a key, merged the way hivemind merges answers: dictionaries
/// from different peers are merged per subkey; otherwise the later expiration wins.
#[derive(Debug, Default, Clone)]
pub(crate) struct SearchState {
    best: Option<FoundValue>,
    /// The search may stop once a value expiring at or after this time is found.
    sufficient_expiration: DhtTime,
}

impl SearchState {
    pub fn new(sufficient_expiration: DhtTime) -> Self {
        SearchState { best: None, sufficient_expiration }
    }

    pub fn add(&mut self, candidate: Option<FoundValue>, now: DhtTime) {
        let Some(candidate) = candidate else { return };
        match (&mut self.best, candidate) {
            (
                Some(FoundValue { value: StoredValue::Dictionary(mine), expiration }),
                FoundValue { value: StoredValue::Dictionary(theirs), expiration: their_expiration },
            ) => {
                for entry in theirs.entries(now) {
                    mine.store(entry.subkey.clone(), entry.value.clone(), entry.expiration, now);
                }
                *expiration = expiration.max(their_expiration);
            }
            (Some(best), candidate) if candidate.expiration > best.expiration => *best = candidate,
            (Some(_), _) => {}
            (None, candidate) => self.best = Some(candidate),
        }
    }

    pub fn finished(&self) -> bool {
        self.best.as_ref().is_some_and(|b| b.expiration >= self.sufficient_expiration)
    }

    pub fn into_value(self) -> Option<FoundValue> {
        self.best
    }
}

/// What a lookup found: the nearest nodes that answered (nearest first) and the merged value.
pub(crate) struct LookupResult {
    pub nearest: Vec<(DhtId, PeerId)>,
    pub state: SearchState,
}

/// Beam search for `target`: keeps the `beam_size` nearest nodes that answered, asks the nearest
/// unvisited candidates `num_workers` at a time, and stops when no candidate is nearer than the
/// beam's farthest node, or (with a `state` that wants a value) once a sufficient value is found.
pub(crate) async fn lookup(
    protocol: &Arc<Protocol>,
    target: DhtId,
    beam_size: usize,
    mut state: SearchState,
) -> LookupResult {
    let now = super::storage::dht_time();
    let mut candidates: BTreeMap<DhtId, (DhtId, PeerId)> = protocol
        .nearest_known(&target, beam_size)
        .into_iter()
        .map(|(node, peer)| (node.distance(&target), (node, peer)))
        .collect();
    let mut visited: HashSet<DhtId> = HashSet::from([protocol.node_id]);
    let mut beam: BTreeMap<DhtId, (DhtId, PeerId)> = BTreeMap::new();
    let mut in_flight = FuturesUnordered::new();
    let workers = protocol.config.num_workers.max(1);
    loop {
        if state.finished() {
            break;
        }
        while in_flight.len() < workers {
            let Some((&distance, _)) = candidates.first_key_value() else { break };
            let beam_full = beam.len() >= beam_size;
            if beam_full && beam.last_key_value().is_some_and(|(farthest, _)| distance >= *farthest) {
                candidates.clear();
                break;
            }
            let (_, (node, peer)) = candidates.pop_first().expect("non-empty");
            if !visited.insert(node) {
                continue;
            }
            let protocol = protocol.clone();
            in_flight.push(async move { (node, peer, protocol.call_find(peer, &[target]).await) });
        }
        let Some((node, peer, answer)) = in_flight.next().await else { break };
        let Ok(mut answers) = answer else { continue };
        let Some(answer) = answers.pop() else { continue };
        beam.insert(node.distance(&target), (node, peer));
        while beam.len() > beam_size {
            beam.pop_last();
        }
        state.add(answer.value, now);
        for (node, peer) in answer.nearest {
            if !visited.contains(&node) {
                candidates.insert(node.distance(&target), (node, peer));
            }
        }
    }
    LookupResult { nearest: beam.into_values().collect(), state }
}
