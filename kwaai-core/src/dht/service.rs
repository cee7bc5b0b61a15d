//! [`Dht`]: the public face of a node's DHT (hivemind's `DHTNode`): bootstrap, `store`, `get`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures::future::join_all;
use libp2p::{Multiaddr, PeerId};
use rmpv::Value;

use super::id::DhtId;
use super::protocol::{subkey_tag, DhtConfig, FoundValue, Protocol, IS_REGULAR_VALUE};
use super::search::{lookup, lookup_many, SearchState};
use super::storage::{dht_time, DhtTime, StoredValue};
use super::validation::DhtRecord;
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::{HostHandle, Rpc};
use crate::wire::msgpack;

/// One item of [`Dht::store_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoreItem {
    /// The key (hashed to its [`DhtId`] as hivemind does).
    pub key: Value,
    /// A subkey makes the key a dictionary that merges subkeys from every writer.
    pub subkey: Option<Value>,
    /// The value.
    pub value: Value,
    /// Absolute expiration in DHT time (Unix seconds).
    pub expiration: DhtTime,
}

/// One subkey of a dictionary value.
#[derive(Debug, Clone, PartialEq)]
pub struct DictionaryEntry {
    /// The subkey.
    pub subkey: Value,
    /// Its value.
    pub value: Value,
    /// Its expiration.
    pub expiration: DhtTime,
}

/// A value read from the DHT.
#[derive(Debug, Clone, PartialEq)]
pub enum DhtValue {
    /// A plain value.
    Regular {
        /// The value.
        value: Value,
        /// Its expiration.
        expiration: DhtTime,
    },
    /// A dictionary: the live subkeys from every replica, merged.
    Dictionary {
        /// The subkeys, each with its own value and expiration.
        entries: Vec<DictionaryEntry>,
        /// The latest expiration among them.
        expiration: DhtTime,
    },
}

/// Keys asked in one `rpc_find` by the read fast path (hivemind's `chunk_size`).
const KEYS_PER_FIND: usize = 16;

/// An item ready to store: its key ID, subkey tag and signed, serialized value.
struct Prepared {
    key: DhtId,
    tag: Vec<u8>,
    value: Vec<u8>,
    expiration: DhtTime,
    /// Whether our own validators accept it (we store it locally only then).
    locally_valid: bool,
}

impl Prepared {
    /// The `(key, subkey tag, value, expiration)` that `rpc_store` carries.
    fn record(&self) -> (DhtId, Vec<u8>, Vec<u8>, DhtTime) {
        (self.key, self.tag.clone(), self.value.clone(), self.expiration)
    }
}

/// A handle to the node's DHT; cheap to clone. Its calls run on the node's runtime.
#[derive(Clone)]
pub struct Dht {
    protocol: Arc<Protocol>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht").field("node_id", &self.protocol.node_id).finish()
    }
}

impl Dht {
    /// Starts the DHT on `rpc` and joins the swarm through `initial_peers` (multiaddrs ending in
    /// `/p2p/<peer id>`). Like hivemind, it fails if none of them answers a validating ping.
    pub(crate) async fn start(
        config: DhtConfig,
        rpc: Rpc,
        host: &HostHandle,
        initial_peers: &[Multiaddr],
    ) -> Result<Dht> {
        let protocol = Protocol::start(DhtId::random(), config, rpc)?;
        let dht = Dht { protocol };
        if !initial_peers.is_empty() {
            dht.bootstrap(host, initial_peers).await?;
        }
        Ok(dht)
    }

    /// Unregisters the DHT's handlers (the node is shutting down).
    pub(crate) fn stop(&self) {
        self.protocol.stop();
    }

    async fn bootstrap(&self, host: &HostHandle, initial_peers: &[Multiaddr]) -> Result<()> {
        let pings = initial_peers.iter().map(|addr| async move {
            let info = host.connect(addr.clone()).await?;
            self.protocol.call_ping(info.peer_id, true).await
        });
        let results = join_all(pings).await;
        let mut errors = Vec::new();
        let mut answered = 0;
        for (addr, result) in initial_peers.iter().zip(results) {
            match result {
                Ok(Some(_)) => answered += 1,
                Ok(None) => errors.push(format!("{addr}: answered as a client-mode node")),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        if answered == 0 {
            return Err(Error::new(
                ErrorKind::Network,
                format!("DHT bootstrap failed, no initial peer answered: {}", errors.join("; ")),
            ));
        }
        // Fill the routing table with the nodes nearest to us.
        lookup_many(&self.protocol, &[self.protocol.node_id], self.protocol.config.bucket_size).await;
        tracing::info!(answered, known = self.protocol.routing_table_len(), "DHT joined the swarm");
        Ok(())
    }

    /// This node's DHT ID (random per start, as in hivemind).
    pub fn node_id(&self) -> DhtId {
        self.protocol.node_id
    }

    /// Nodes in the routing table.
    pub fn routing_table_len(&self) -> usize {
        self.protocol.routing_table_len()
    }

    /// The `k` nodes nearest to `target` that answered a lookup through the swarm, nearest first
    /// (hivemind's `find_nearest_nodes`). A node that looks up another's ID finds it exactly when
    /// that node is reachable through the DHT.
    pub async fn find_nearest_nodes(&self, target: DhtId, k: usize) -> Vec<(DhtId, PeerId)> {
        let mut found = lookup_many(&self.protocol, &[target], k.max(1)).await;
        found.pop().unwrap_or_default()
    }

    /// Stores `value` under `key` (and `subkey`, if given) on the nodes nearest to the key until
    /// `expiration`; `true` if at least one replica accepted it.
    pub async fn store(&self, key: Value, subkey: Option<Value>, value: Value, expiration: DhtTime) -> Result<bool> {
        Ok(self.store_many(vec![StoreItem { key, subkey, value, expiration }]).await?[0])
    }

    /// Stores several items, each on the replicas nearest to its key; one flag per item (`true` if
    /// a replica accepted it). Keys are looked up concurrently, and each round sends one
    /// `rpc_store` per peer carrying every item that peer should hold; replicas that fail are
    /// replaced by the next nearest nodes in the next round.
    pub async fn store_many(&self, items: Vec<StoreItem>) -> Result<Vec<bool>> {
        let config = &self.protocol.config;
        let prepared = items.iter().map(|item| self.prepare(item)).collect::<Result<Vec<_>>>()?;
        let mut by_key: HashMap<DhtId, Vec<usize>> = HashMap::new();
        for (index, item) in prepared.iter().enumerate() {
            by_key.entry(item.key).or_default().push(index);
        }
        let beam = config.bucket_size.max(config.num_replicas);
        let keys: Vec<DhtId> = by_key.keys().copied().collect();
        let found = lookup_many(&self.protocol, &keys, beam).await;
        // Per key: candidates nearest first, ourselves included (as hivemind does) unless we are
        // a client, which cannot serve what it stores.
        let mut candidates: HashMap<DhtId, VecDeque<Option<PeerId>>> = HashMap::new();
        for (key, found) in keys.iter().zip(found) {
            let mut nodes: Vec<(DhtId, Option<PeerId>)> = found.into_iter().map(|(n, p)| (n, Some(p))).collect();
            if !config.client_mode {
                nodes.push((self.protocol.node_id, None));
            }
            nodes.sort_by_key(|(node, _)| node.distance(key));
            candidates.insert(*key, nodes.into_iter().map(|(_, peer)| peer).collect());
        }
        let mut replicas: HashMap<DhtId, usize> = HashMap::new();
        let mut accepted = vec![false; items.len()];
        loop {
            let mut remote: HashMap<PeerId, Vec<DhtId>> = HashMap::new();
            for (key, queue) in &mut candidates {
                let done = replicas.get(key).copied().unwrap_or(0);
                for peer in queue.drain(..config.num_replicas.saturating_sub(done).min(queue.len())) {
                    match peer {
                        Some(peer) => remote.entry(peer).or_default().push(*key),
                        None => {
                            let now = dht_time();
                            for &index in &by_key[key] {
                                accepted[index] |= self.store_locally(&items[index], &prepared[index], now);
                            }
                            *replicas.entry(*key).or_default() += 1;
                        }
                    }
                }
            }
            if remote.is_empty() {
                break;
            }
            let calls = remote.into_iter().map(|(peer, keys)| {
                let indices: Vec<usize> = keys.iter().flat_map(|key| by_key[key].iter().copied()).collect();
                let batch: Vec<_> = indices.iter().map(|&i| prepared[i].record()).collect();
                async move { (peer, keys, indices, self.protocol.call_store(peer, &batch, false).await) }
            });
            for (peer, keys, indices, outcome) in join_all(calls).await {
                match outcome {
                    Ok(flags) => {
                        for (index, ok) in indices.into_iter().zip(flags) {
                            accepted[index] |= ok;
                        }
                        for key in keys {
                            *replicas.entry(key).or_default() += 1;
                        }
                    }
                    Err(e) => tracing::debug!(%peer, "DHT store failed: {e}"),
                }
            }
        }
        Ok(accepted)
    }

    /// Checks, signs and serializes one item.
    fn prepare(&self, item: &StoreItem) -> Result<Prepared> {
        let value = msgpack::pack(&item.value);
        let config = &self.protocol.config;
        if value.len() > config.max_value_size {
            return Err(Error::invalid_argument(format!(
                "value of {} bytes exceeds the DHT limit of {} bytes",
                value.len(),
                config.max_value_size
            )));
        }
        let key = DhtId::of_key(&item.key);
        let tag = subkey_tag(item.subkey.as_ref());
        let record =
            DhtRecord { key: key.as_bytes().to_vec(), subkey: tag.clone(), value, expiration: item.expiration };
        let value = config.validators.sign_value(&record);
        let locally_valid = config.validators.validate(&record.with_value(value.clone()));
        Ok(Prepared { key, tag, value, expiration: item.expiration, locally_valid })
    }

    /// Stores one prepared item in our own storage (validators permitting).
    fn store_locally(&self, item: &StoreItem, prepared: &Prepared, now: DhtTime) -> bool {
        if !prepared.locally_valid {
            return false;
        }
        let (key, value, expiration) = (prepared.key, prepared.value.clone(), prepared.expiration);
        self.protocol.with_storage(false, |storage| match &item.subkey {
            None => storage.store(key, value, expiration, now),
            Some(subkey) => storage.store_subkey(key, subkey.clone(), value, expiration, now),
        })
    }

    /// Reads `key`: the first unexpired value found, or with `latest` the newest one in the swarm
    /// (dictionaries are merged from every replica).
    pub async fn get(&self, key: Value, latest: bool) -> Result<Option<DhtValue>> {
        Ok(self.get_many(vec![key], latest).await?.pop().flatten())
    }

    /// Reads several keys; one result per key.
    pub async fn get_many(&self, keys: Vec<Value>, latest: bool) -> Result<Vec<Option<DhtValue>>> {
        let now = dht_time();
        let ids: Vec<DhtId> = keys.iter().map(DhtId::of_key).collect();
        let mut states: Vec<SearchState> = ids.iter().map(|id| self.local_state(id, latest, now)).collect();
        if !latest {
            self.ask_nearest_first(&ids, &mut states, now).await;
        }
        let gets = ids.into_iter().zip(states).map(|(id, state)| self.finish_get(id, state, now));
        join_all(gets).await.into_iter().collect()
    }

    /// What our own storage and cache hold for `key`, as the start of a search.
    fn local_state(&self, key: &DhtId, latest: bool, now: DhtTime) -> SearchState {
        let mut state = SearchState::new(if latest { f64::INFINITY } else { now });
        for cache in [false, true] {
            let local = self.protocol.with_storage(cache, |s| s.get(key, now).cloned());
            state.add(local.map(|e| FoundValue { value: e.value, expiration: e.expiration }), now);
        }
        state
    }

    /// The fast path of a batch of reads: ask each unfinished key's nearest known node, with every
    /// key that shares that node in one `rpc_find` (at most [`KEYS_PER_FIND`] keys per call).
    async fn ask_nearest_first(&self, ids: &[DhtId], states: &mut [SearchState], now: DhtTime) {
        let mut groups: HashMap<PeerId, Vec<usize>> = HashMap::new();
        for (index, id) in ids.iter().enumerate() {
            if states[index].finished() {
                continue;
            }
            if let Some((_, peer)) = self.protocol.nearest_known(id, 1).first() {
                groups.entry(*peer).or_default().push(index);
            }
        }
        let batches: Vec<(PeerId, Vec<usize>)> = groups
            .into_iter()
            .flat_map(|(peer, indices)| indices.chunks(KEYS_PER_FIND).map(|c| (peer, c.to_vec())).collect::<Vec<_>>())
            .collect();
        let calls = batches.into_iter().map(|(peer, chunk)| async move {
            let keys: Vec<DhtId> = chunk.iter().map(|&i| ids[i]).collect();
            (chunk, self.protocol.call_find(peer, &keys).await)
        });
        for (chunk, outcome) in join_all(calls).await {
            let Ok(answers) = outcome else { continue };
            for (index, answer) in chunk.into_iter().zip(answers) {
                states[index].add(answer.value, now);
            }
        }
    }

    /// Finishes one read: a full lookup unless `state` already has a sufficient value, then caches
    /// and decodes what was found.
    async fn finish_get(&self, key: DhtId, mut state: SearchState, now: DhtTime) -> Result<Option<DhtValue>> {
        if !state.finished() {
            state = lookup(&self.protocol, key, self.protocol.config.bucket_size, state).await;
        }
        let Some(found) = state.into_value() else { return Ok(None) };
        if found.expiration < now {
            return Ok(None);
        }
        // Cache what we found, so the next read is local.
        self.protocol.with_storage(true, |cache| match &found.value {
            StoredValue::Regular(bytes) => {
                cache.store(key, bytes.clone(), found.expiration, now);
            }
            StoredValue::Dictionary(d) => {
                for e in d.entries(now) {
                    cache.store_subkey(key, e.subkey.clone(), e.value.clone(), e.expiration, now);
                }
            }
        });
        self.decode_found(key, found, now).map(Some)
    }

    /// Strips signatures (through the validators) and decodes the values.
    fn decode_found(&self, key: DhtId, found: FoundValue, now: DhtTime) -> Result<DhtValue> {
        let validators = &self.protocol.config.validators;
        let strip = |subkey: Vec<u8>, value: &[u8], expiration| {
            let record = DhtRecord { key: key.as_bytes().to_vec(), subkey, value: value.to_vec(), expiration };
            msgpack::unpack(&validators.strip_value(&record))
        };
        Ok(match found.value {
            StoredValue::Regular(bytes) => DhtValue::Regular {
                value: strip(IS_REGULAR_VALUE.to_vec(), &bytes, found.expiration)?,
                expiration: found.expiration,
            },
            StoredValue::Dictionary(d) => DhtValue::Dictionary {
                entries: d
                    .entries(now)
                    .map(|e| {
                        let value = strip(msgpack::pack(&e.subkey), &e.value, e.expiration)?;
                        Ok(DictionaryEntry { subkey: e.subkey.clone(), value, expiration: e.expiration })
                    })
                    .collect::<Result<_>>()?,
                expiration: found.expiration,
            },
        })
    }
}
