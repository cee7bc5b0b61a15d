//! Which blocks to serve when the user does not fix the span, chosen as Petals 2.2 chooses them
//! (petals/server/block_selection.py `choose_best_blocks`, petals/utils/dht.py `compute_spans`).
//!
//! Every JOINING or ONLINE server adds its announced throughput to each block of its span; a new
//! server takes the `num_blocks` consecutive blocks whose throughputs, sorted, are the smallest
//! lexicographically (the weakest part of the swarm first), the leftmost on ties.

use rmpv::Value;
use std::collections::BTreeMap;

use super::announce::Span;
use super::info::{ServerInfo, ServerState};
use super::prefix::block_uid;
use crate::dht::{Dht, DhtValue};
use crate::error::{Error, Result};

/// The servers announced under one block's DHT key (Petals `RemoteModuleInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteModuleInfo {
    /// The block's uid, `"{dht_prefix}.{index}"`.
    pub uid: String,
    /// Each server's record, by base58 peer id (so iteration follows Petals' sorted order).
    pub servers: BTreeMap<String, ServerInfo>,
}

/// The blocks one server serves, as the swarm sees them (Petals `RemoteSpanInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpan {
    /// The server's base58 peer id.
    pub peer: String,
    /// First block, relative to the first module info.
    pub start: usize,
    /// One past the last block.
    pub end: usize,
    /// The record the span was built from.
    pub info: ServerInfo,
}

/// Each server's span from the per-block records, counting only servers in `min_state` or a later
/// state; a record's own `start_block`/`end_block` win over the blocks it was found under.
pub fn compute_spans(module_infos: &[RemoteModuleInfo], min_state: ServerState) -> BTreeMap<String, RemoteSpan> {
    let offset = module_infos.first().and_then(|m| block_index(&m.uid)).unwrap_or(0);
    let total = module_infos.len();
    let mut spans: BTreeMap<String, RemoteSpan> = BTreeMap::new();
    for (block, module) in module_infos.iter().enumerate() {
        for (peer, info) in &module.servers {
            if (info.state as u8) < (min_state as u8) {
                continue;
            }
            match spans.get_mut(peer) {
                Some(span) if (span.info.state as u8) >= (info.state as u8) => {
                    if span.info.state == info.state {
                        span.end = span.end.max(block + 1);
                    }
                }
                _ => {
                    let mut span = RemoteSpan { peer: peer.clone(), start: block, end: block + 1, info: info.clone() };
                    if let (Some(start), Some(end)) = (info.start_block, info.end_block) {
                        span.start = (i64::from(start) - offset).max(0) as usize;
                        span.end = (i64::from(end) - offset).clamp(0, total as i64) as usize;
                    }
                    spans.insert(peer.clone(), span);
                }
            }
        }
    }
    spans
}

/// The block index a uid ends with (`"prefix.7"` gives 7).
fn block_index(uid: &str) -> Option<i64> {
    uid.rsplit_once('.').and_then(|(_, index)| index.parse().ok())
}

/// The total announced throughput of each of `total_blocks` blocks, summed in peer-id order as
/// Petals sums it (so the floats agree to the last bit).
pub fn compute_throughputs(spans: &BTreeMap<String, RemoteSpan>, total_blocks: usize) -> Vec<f64> {
    let mut throughputs = vec![0.0; total_blocks];
    for span in spans.values() {
        let end = span.end.min(total_blocks);
        for t in throughputs.iter_mut().take(end).skip(span.start) {
            *t += span.info.throughput;
        }
    }
    throughputs
}

/// The first block of the best window of `num_blocks` blocks: the one whose sorted throughputs
/// are lexicographically smallest, the leftmost among equals.
pub fn choose_best_start(throughputs: &[f64], num_blocks: usize) -> Result<usize> {
    if num_blocks == 0 || num_blocks > throughputs.len() {
        return Err(Error::invalid_argument(format!("cannot choose {num_blocks} blocks among {}", throughputs.len())));
    }
    let sorted_window = |start: usize| {
        let mut window = throughputs[start..start + num_blocks].to_vec();
        window.sort_by(f64::total_cmp);
        window
    };
    let mut best = (sorted_window(0), 0);
    for start in 1..=throughputs.len() - num_blocks {
        let window = sorted_window(start);
        if window.iter().zip(&best.0).map(|(a, b)| a.total_cmp(b)).find(|o| o.is_ne()) == Some(std::cmp::Ordering::Less)
        {
            best = (window, start);
        }
    }
    Ok(best.1)
}

/// The `num_blocks` blocks a new server should serve given what the swarm announces (JOINING and
/// ONLINE servers count), as absolute block indices.
pub fn choose_best_blocks(num_blocks: usize, module_infos: &[RemoteModuleInfo]) -> Result<Span> {
    let spans = compute_spans(module_infos, ServerState::Joining);
    let throughputs = compute_throughputs(&spans, module_infos.len());
    let start = choose_best_start(&throughputs, num_blocks)?;
    let offset = module_infos.first().and_then(|m| block_index(&m.uid)).unwrap_or(0);
    let start =
        u32::try_from(start as i64 + offset).map_err(|_| Error::invalid_argument("block index out of range"))?;
    Span::new(start, start + num_blocks as u32)
}

/// Reads the records of blocks `0..total_blocks` of model `dht_prefix` from the DHT, newest
/// versions, as petals/utils/dht.py `get_remote_module_infos` does: entries whose subkey is not
/// base58 or whose value is not a valid `ServerInfo` are skipped.
pub async fn get_remote_module_infos(dht: &Dht, dht_prefix: &str, total_blocks: u32) -> Result<Vec<RemoteModuleInfo>> {
    let uids: Vec<String> = (0..total_blocks).map(|i| block_uid(dht_prefix, i)).collect();
    let found = dht.get_many(uids.iter().map(|uid| Value::from(uid.as_str())).collect(), true).await?;
    Ok(uids.into_iter().zip(found).map(|(uid, value)| module_info(uid, value)).collect())
}

fn module_info(uid: String, value: Option<DhtValue>) -> RemoteModuleInfo {
    let mut servers = BTreeMap::new();
    match value {
        Some(DhtValue::Dictionary { entries, .. }) => {
            for entry in entries {
                let Some(peer) = entry.subkey.as_str().filter(|p| is_base58(p)) else {
                    tracing::warn!(%uid, subkey = %entry.subkey, "skipping a block record whose subkey is not base58");
                    continue;
                };
                match ServerInfo::from_value(&entry.value) {
                    Ok(info) => {
                        servers.insert(peer.to_owned(), info);
                    }
                    Err(e) => tracing::warn!(%uid, peer, error = %e, "skipping an invalid block record"),
                }
            }
        }
        Some(DhtValue::Regular { .. }) => tracing::warn!(%uid, "skipping a block record that is not a dictionary"),
        None => {}
    }
    RemoteModuleInfo { uid, servers }
}

/// Whether `text` decodes as base58, the only check Petals makes of a record's peer id.
fn is_base58(text: &str) -> bool {
    const ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    text.chars().all(|c| ALPHABET.contains(c))
}

/// Chooses the span a server of `num_blocks` blocks (at most the model's `total_blocks`) should
/// serve, from the records currently in the DHT under `dht_prefix`.
pub async fn choose_blocks_from_dht(dht: &Dht, dht_prefix: &str, total_blocks: u32, num_blocks: u32) -> Result<Span> {
    let num_blocks = num_blocks.min(total_blocks);
    let infos = get_remote_module_infos(dht, dht_prefix, total_blocks).await?;
    let span = choose_best_blocks(num_blocks as usize, &infos)?;
    tracing::info!(start = span.start, end = span.end, "chose blocks to serve from the swarm's throughputs");
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(state: ServerState, throughput: f64, span: Option<(u32, u32)>) -> ServerInfo {
        ServerInfo {
            start_block: span.map(|s| s.0),
            end_block: span.map(|s| s.1),
            ..ServerInfo::new(state, throughput)
        }
    }

    /// Module infos for `total` blocks where each server appears under every block of `blocks`.
    fn infos(total: usize, servers: &[(&str, ServerInfo, std::ops::Range<usize>)]) -> Vec<RemoteModuleInfo> {
        (0..total)
            .map(|b| RemoteModuleInfo {
                uid: format!("m.{b}"),
                servers: servers
                    .iter()
                    .filter(|(_, _, blocks)| blocks.contains(&b))
                    .map(|(peer, info, _)| ((*peer).to_owned(), info.clone()))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn the_weakest_window_is_chosen_leftmost_first() {
        assert_eq!(choose_best_start(&[1.0, 2.0, 1.0, 2.5, 3.25, 0.75], 1).unwrap(), 5);
        assert_eq!(choose_best_start(&[1.0, 2.0, 1.0, 2.5, 3.25, 0.75], 2).unwrap(), 4);
        assert_eq!(choose_best_start(&[1.0, 2.0, 1.0, 2.5, 3.25, 0.75], 3).unwrap(), 3);
        // (1, 2) twice: the first wins; then the second-smallest value decides.
        assert_eq!(choose_best_start(&[1.0, 2.0, 1.0, 3.0], 2).unwrap(), 0);
        assert_eq!(choose_best_start(&[2.0, 1.0, 1.5, 5.0], 2).unwrap(), 1);
        assert_eq!(choose_best_start(&[0.0; 4], 4).unwrap(), 0);
        assert!(choose_best_start(&[0.0; 4], 5).is_err());
        assert!(choose_best_start(&[0.0; 4], 0).is_err());
    }

    #[test]
    fn spans_count_joining_and_online_servers_and_trust_announced_bounds() {
        let infos = infos(
            6,
            &[
                ("QmA", server(ServerState::Online, 1.0, Some((0, 2))), 0..2),
                ("QmB", server(ServerState::Joining, 0.5, None), 2..4),
                ("QmC", server(ServerState::Offline, 9.0, Some((0, 6))), 0..6),
                // Found only under block 5 but announcing 3..6.
                ("QmD", server(ServerState::Online, 2.0, Some((3, 6))), 5..6),
            ],
        );
        let spans = compute_spans(&infos, ServerState::Joining);
        let ranges: Vec<_> = spans.values().map(|s| (s.peer.as_str(), s.start, s.end)).collect();
        assert_eq!(ranges, [("QmA", 0, 2), ("QmB", 2, 4), ("QmD", 3, 6)]);
        assert_eq!(compute_throughputs(&spans, 6), [1.0, 1.0, 0.5, 2.5, 2.0, 2.0]);
        assert_eq!(choose_best_blocks(2, &infos).unwrap(), Span::new(1, 3).unwrap());
        let online = compute_spans(&infos, ServerState::Online);
        assert_eq!(online.keys().collect::<Vec<_>>(), ["QmA", "QmD"]);
    }

    #[test]
    fn a_later_state_replaces_an_earlier_one_and_equal_states_extend() {
        let infos = infos(
            4,
            &[
                ("QmA", server(ServerState::Joining, 1.0, None), 0..1),
                ("QmA", server(ServerState::Online, 3.0, None), 2..4),
            ],
        );
        let spans = compute_spans(&infos, ServerState::Joining);
        let span = &spans["QmA"];
        assert_eq!((span.start, span.end, span.info.throughput), (2, 4, 3.0));
    }

    #[test]
    fn spans_are_relative_to_the_first_uid_and_clamped() {
        let mut infos = infos(3, &[("QmA", server(ServerState::Online, 1.0, Some((1, 9))), 0..3)]);
        for (i, info) in infos.iter_mut().enumerate() {
            info.uid = format!("m.{}", i + 2);
        }
        let spans = compute_spans(&infos, ServerState::Joining);
        assert_eq!((spans["QmA"].start, spans["QmA"].end), (0, 3));
        // No blocks to choose from.
        assert_eq!(choose_best_blocks(2, &infos[..0]).err().map(|e| e.kind()), Some(crate::ErrorKind::InvalidArgument));
        assert_eq!(choose_best_blocks(3, &infos).unwrap(), Span::new(2, 5).unwrap());
    }

    #[test]
    fn records_with_bad_subkeys_or_values_are_skipped() {
        let peer = libp2p::PeerId::random().to_base58();
        let other = libp2p::PeerId::random().to_base58();
        let entry = |subkey: &str, value: Value| crate::dht::DictionaryEntry {
            subkey: Value::from(subkey),
            value,
            expiration: 0.0,
        };
        let good = ServerInfo::new(ServerState::Online, 1.0).to_value();
        let value = DhtValue::Dictionary {
            entries: vec![entry(&peer, good.clone()), entry("not base58", good), entry(&other, Value::from(1u64))],
            expiration: 0.0,
        };
        let info = module_info("m.0".into(), Some(value));
        assert_eq!(info.servers.keys().collect::<Vec<_>>(), [&peer]);
        let regular = DhtValue::Regular { value: Value::from(1u64), expiration: 0.0 };
        assert!(module_info("m.0".into(), Some(regular)).servers.is_empty());
    }
}
