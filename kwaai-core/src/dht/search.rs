//! Iterative lookup: hivemind's beam search over `rpc_find`, for one key.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;

use super::find::SearchState;
use super::id::DhtId;
use super::protocol::Protocol;

/// Beam search for the value of `target`: keeps the `beam_size` nearest nodes that answered, asks
/// the nearest unvisited candidates `num_workers` at a time, and stops once `state` has a
/// sufficient value or no candidate is nearer than the beam's farthest node. Returns the merged
/// search state and the `beam_size` nearest nodes it knows of (asked or not), nearest first, as
/// hivemind's traversal reports them when a query ends.
pub(crate) async fn lookup(
    protocol: &Arc<Protocol>,
    target: DhtId,
    beam_size: usize,
    mut state: SearchState,
) -> (SearchState, Vec<(DhtId, PeerId)>) {
    let now = super::storage::dht_time();
    let mut candidates: BTreeMap<DhtId, (DhtId, PeerId)> = protocol
        .nearest_known(&target, beam_size)
        .into_iter()
        .map(|(node, peer)| (node.distance(&target), (node, peer)))
        .collect();
    let mut known = candidates.clone();
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
        state.add(answer.value, node, now);
        for (node, peer) in answer.nearest {
            if node != protocol.node_id {
                known.insert(node.distance(&target), (node, peer));
            }
            if !visited.contains(&node) {
                candidates.insert(node.distance(&target), (node, peer));
            }
        }
    }
    (state, known.into_values().take(beam_size).collect())
}

/// One query of [`lookup_many`].
struct Query {
    target: DhtId,
    candidates: BTreeMap<DhtId, (DhtId, PeerId)>,
    visited: HashSet<DhtId>,
    beam: BTreeMap<DhtId, (DhtId, PeerId)>,
    in_flight: usize,
}

impl Query {
    /// Whether asking `node` may still improve this query's beam.
    fn wants(&self, node: &DhtId, beam_size: usize) -> bool {
        let distance = node.distance(&self.target);
        !self.visited.contains(node)
            && self.candidates.contains_key(&distance)
            && (self.beam.len() < beam_size || self.beam.last_key_value().is_some_and(|(far, _)| distance < *far))
    }

    /// The nearest candidate worth asking, if any.
    fn next_candidate(&self, beam_size: usize) -> Option<(DhtId, PeerId)> {
        self.candidates.values().copied().find(|(node, _)| self.wants(node, beam_size))
    }

    fn mark_asked(&mut self, node: DhtId) {
        self.candidates.remove(&node.distance(&self.target));
        self.visited.insert(node);
        self.in_flight += 1;
    }
}

/// Beam search for several targets at once (hivemind's `traverse_dht`): each request asks one node
/// about every query that still wants that node, up to √n queries per `rpc_find`, and the next
/// request goes to the least-served query's nearest useful candidate. Returns, per target, the
/// nearest nodes that answered, nearest first.
pub(crate) async fn lookup_many(
    protocol: &Arc<Protocol>,
    targets: &[DhtId],
    beam_size: usize,
) -> Vec<Vec<(DhtId, PeerId)>> {
    let mut queries: Vec<Query> = targets
        .iter()
        .map(|&target| Query {
            target,
            candidates: protocol
                .nearest_known(&target, beam_size)
                .into_iter()
                .map(|(node, peer)| (node.distance(&target), (node, peer)))
                .collect(),
            visited: HashSet::from([protocol.node_id]),
            beam: BTreeMap::new(),
            in_flight: 0,
        })
        .collect();
    let per_call = ((targets.len() as f64).sqrt() as usize).max(1);
    let workers = protocol.config.num_workers.max(1);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < workers {
            let next = (0..queries.len())
                .filter_map(|i| queries[i].next_candidate(beam_size).map(|c| (queries[i].in_flight, i, c)))
                .min_by_key(|(served, ..)| *served);
            let Some((_, first, (node, peer))) = next else { break };
            let mut batch = vec![first];
            batch.extend(
                (0..queries.len()).filter(|&i| i != first && queries[i].wants(&node, beam_size)).take(per_call - 1),
            );
            for &i in &batch {
                queries[i].mark_asked(node);
            }
            let keys: Vec<DhtId> = batch.iter().map(|&i| queries[i].target).collect();
            let protocol = protocol.clone();
            in_flight.push(async move { (node, peer, batch, protocol.call_find(peer, &keys).await) });
        }
        let Some((node, peer, batch, answer)) = in_flight.next().await else { break };
        for &i in &batch {
            queries[i].in_flight -= 1;
        }
        let Ok(answers) = answer else { continue };
        for (i, answer) in batch.into_iter().zip(answers) {
            let query = &mut queries[i];
            query.beam.insert(node.distance(&query.target), (node, peer));
            while query.beam.len() > beam_size {
                query.beam.pop_last();
            }
            for (other, other_peer) in answer.nearest {
                if !query.visited.contains(&other) {
                    query.candidates.insert(other.distance(&query.target), (other, other_peer));
                }
            }
        }
    }
    queries.into_iter().map(|q| q.beam.into_values().collect()).collect()
}
