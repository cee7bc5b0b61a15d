//! The DHT as a client: hivemind's iterative `rpc_find` for a batch of keys, starting at the
//! connected node and going on through the peers it names (reached through `kwaai.forward`),
//! merging every answer as kwaai-core's search does (dictionaries per subkey, newest values).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::future::join_all;
use kwaai_core::dht::find::{decode_found, find_request, parse_find_response, DhtValue, FindAnswer, SearchState};
use kwaai_core::dht::validation::Validators;
use kwaai_core::dht::{dht_time, DhtId, RPC_FIND};
use kwaai_core::wire::dht::NodeInfo;
use kwaai_core::{PeerId, Result};
use rmpv::Value;

use super::net::Connection;
use super::rpc::call_unary;

/// Nodes kept nearest to each key (hivemind's `bucket_size`).
const BEAM_SIZE: usize = 20;
/// Parallel `rpc_find` calls per key.
const WORKERS: usize = 4;
/// Keys asked in one `rpc_find`.
const KEYS_PER_FIND: usize = 16;
/// Most peers asked per key beyond the connected node.
const MAX_ASKED: usize = 32;

/// One `rpc_find` of `keys` at `peer`: the answering node's ID and an answer per key.
async fn find(
    connection: &Connection,
    peer: PeerId,
    keys: &[DhtId],
    limit: Duration,
) -> Result<(Option<DhtId>, Vec<FindAnswer>)> {
    // A client sends an empty node ID, so that nodes do not add it to their routing tables.
    let request = find_request(keys, NodeInfo { node_id: Vec::new() });
    let reply = call_unary(connection, peer, RPC_FIND, request, limit).await?;
    parse_find_response(&Validators::default(), keys, &reply)
}

/// The newest values of `keys` in the swarm (`None` where nobody holds one).
pub async fn get_many(connection: &Connection, keys: &[Value], limit: Duration) -> Result<Vec<Option<DhtValue>>> {
    let now = dht_time();
    let ids: Vec<DhtId> = keys.iter().map(DhtId::of_key).collect();
    let node = connection.peer();
    let mut states: Vec<SearchState> = ids.iter().map(|_| SearchState::new(f64::INFINITY)).collect();
    let mut starts: Vec<Vec<(DhtId, PeerId)>> = vec![Vec::new(); ids.len()];
    let mut node_id = None;
    for (chunk_index, chunk) in ids.chunks(KEYS_PER_FIND).enumerate() {
        let (sender, answers) = find(connection, node, chunk, limit).await?;
        let sender = sender.unwrap_or_else(|| DhtId::of_key(&Value::from(node.to_base58())));
        node_id = Some(sender);
        for (offset, answer) in answers.into_iter().enumerate() {
            let index = chunk_index * KEYS_PER_FIND + offset;
            states[index].add(answer.value, sender, now);
            starts[index] = answer.nearest;
        }
    }
    let searches =
        ids.iter().zip(states).zip(starts).map(|((id, state), nearest)| {
            lookup(connection, *id, state, node_id.into_iter().collect(), nearest, limit)
        });
    let found = join_all(searches).await;
    Ok(ids
        .iter()
        .zip(found)
        .map(|(id, state)| {
            let value = state.into_value().filter(|v| v.expiration >= now)?;
            decode_found(&Validators::default(), *id, value, now).ok()
        })
        .collect())
}

/// Beam search for `target` from the peers the node named: asks the nearest unvisited
/// candidates, `WORKERS` at a time, until no candidate is nearer than the beam's farthest node.
async fn lookup(
    connection: &Connection,
    target: DhtId,
    mut state: SearchState,
    visited: Vec<DhtId>,
    nearest: Vec<(DhtId, PeerId)>,
    limit: Duration,
) -> SearchState {
    let now = dht_time();
    let mut visited: HashSet<DhtId> = visited.into_iter().collect();
    let mut beam: BTreeMap<DhtId, DhtId> = visited.iter().map(|node| (node.distance(&target), *node)).collect();
    let mut candidates: BTreeMap<DhtId, (DhtId, PeerId)> =
        nearest.into_iter().map(|(node, peer)| (node.distance(&target), (node, peer))).collect();
    let mut asked = 0;
    while asked < MAX_ASKED {
        let mut batch = Vec::new();
        while batch.len() < WORKERS {
            let Some((distance, (node, peer))) = candidates.pop_first() else { break };
            if beam.len() >= BEAM_SIZE && beam.last_key_value().is_some_and(|(far, _)| distance >= *far) {
                candidates.clear();
                break;
            }
            if visited.insert(node) && peer != connection.peer() {
                batch.push((node, peer));
            }
        }
        if batch.is_empty() {
            break;
        }
        asked += batch.len();
        let calls = batch.iter().map(|(_, peer)| find(connection, *peer, std::slice::from_ref(&target), limit));
        let outcomes = join_all(calls).await;
        for ((node, peer), outcome) in batch.into_iter().zip(outcomes) {
            let Ok((_, mut answers)) = outcome else {
                tracing::debug!(%peer, "rpc_find failed");
                continue;
            };
            let Some(answer) = answers.pop() else { continue };
            beam.insert(node.distance(&target), node);
            while beam.len() > BEAM_SIZE {
                beam.pop_last();
            }
            state.add(answer.value, node, now);
            for (other, other_peer) in answer.nearest {
                if !visited.contains(&other) {
                    candidates.insert(other.distance(&target), (other, other_peer));
                }
            }
        }
    }
    state
}
