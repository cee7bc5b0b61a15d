//! [`Dht`]: the public face of a node's DHT (hivemind's `DHTNode`): bootstrap, `store`, `get`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::join_all;
use libp2p::{Multiaddr, PeerId};
use rmpv::Value;

use super::find::{decode_found, DhtValue, FoundValue, SearchState};
use super::id::DhtId;
use super::protocol::{subkey_tag, DhtConfig, Protocol, IS_DICTIONARY, IS_REGULAR_VALUE};
use super::search::{lookup, lookup_many};
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
        if protocol.config.cache_refresh_before_expiry > 0.0 {
            let (weak, wakeup) = (Arc::downgrade(&protocol), protocol.refresh_wakeup.clone());
            protocol.spawn_background(refresh_cache(weak, wakeup));
        }
        let dht = Dht { protocol };
        if !initial_peers.is_empty() {
            dht.bootstrap(host, initial_peers).await?;
        }
        if let Some(period) = dht.protocol.config.refresh_timeout {
            dht.protocol.spawn_background(refresh_routing_table(Arc::downgrade(&dht.protocol), period));
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
            let node_id = self.protocol.call_ping(info.peer_id, true).await?;
            if let Some(node_id) = node_id {
                // The ping's own routing-table update runs in the background: add the initial peer
                // now, so that the lookup below (and the first store or get) starts from it.
                self.protocol.clone().update_routing_table(Some(node_id), info.peer_id, true).await;
            }
            Ok::<_, Error>(node_id)
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
        if config.cache_on_store {
            for (key, indices) in &by_key {
                self.update_cache_on_store(*key, indices, &items, &prepared, &accepted);
            }
        }
        Ok(accepted)
    }

    /// hivemind's `_update_cache_on_store`: a stored regular value goes to the cache; a refused
    /// one, or new subkeys of a cached dictionary, make the cache look the key up again.
    fn update_cache_on_store(
        &self,
        key: DhtId,
        indices: &[usize],
        items: &[StoreItem],
        prepared: &[Prepared],
        accepted: &[bool],
    ) {
        let now = dht_time();
        let succeeded = indices.iter().any(|&i| accepted[i]);
        if indices.iter().all(|&i| items[i].subkey.is_none()) {
            let newest = indices
                .iter()
                .map(|&i| (prepared[i].expiration, &prepared[i].value))
                .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            let Some((expiration, value)) = newest else { return };
            if succeeded {
                self.protocol.with_storage(true, |cache| cache.store(key, value.clone(), expiration, now));
            } else if self.protocol.with_storage(true, |c| c.get(&key, now).is_some_and(|e| e.expiration <= expiration))
            {
                self.schedule_refresh(key, now);
            }
        } else if self.protocol.with_storage(true, |c| c.get(&key, now).is_some()) {
            for &i in indices.iter().filter(|&&i| accepted[i]) {
                if let Some(subkey) = &items[i].subkey {
                    let (value, expiration) = (prepared[i].value.clone(), prepared[i].expiration);
                    self.protocol.with_storage(true, |c| c.store_subkey(key, subkey.clone(), value, expiration, now));
                }
            }
            self.schedule_refresh(key, now);
        }
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
        let sufficient = if latest { f64::INFINITY } else { now };
        let found = self.get_many_by_id(&ids, sufficient, false).await;
        ids.iter()
            .zip(found)
            .map(|(id, found)| match found {
                Some(found) if found.expiration >= now => {
                    decode_found(&self.protocol.config.validators, *id, found, now).map(Some)
                }
                _ => Ok(None),
            })
            .collect()
    }

    /// hivemind's `get_many_by_id`: our storage (and cache, unless refreshing the cache) first,
    /// then the swarm, until a value expiring at or after `sufficient` is found; values found
    /// remotely are cached as the caching options say.
    async fn get_many_by_id(&self, ids: &[DhtId], sufficient: DhtTime, is_refresh: bool) -> Vec<Option<FoundValue>> {
        let now = dht_time();
        let mut states: Vec<SearchState> =
            ids.iter().map(|id| self.local_state(id, sufficient, is_refresh, now)).collect();
        let found_locally: Vec<bool> = states.iter().map(SearchState::finished).collect();
        if sufficient <= now {
            self.ask_nearest_first(ids, &mut states, now).await;
        }
        let searches = ids
            .iter()
            .zip(states)
            .zip(found_locally)
            .map(|((id, state), local)| self.finish_search(*id, state, local, is_refresh, now));
        join_all(searches).await
    }

    /// What our own storage and cache hold for `key`, as the start of a search.
    fn local_state(&self, key: &DhtId, sufficient: DhtTime, is_refresh: bool, now: DhtTime) -> SearchState {
        let mut state = SearchState::new(sufficient);
        let places: &[bool] = if is_refresh { &[false] } else { &[false, true] };
        for &cache in places {
            let local = self.protocol.with_storage(cache, |s| s.get(key, now).cloned());
            state.add(local.map(|e| FoundValue { value: e.value, expiration: e.expiration }), self.node_id(), now);
        }
        state
    }

    /// The fast path of a batch of reads: ask each unfinished key's nearest known node, with every
    /// key that shares that node in one `rpc_find` (at most [`KEYS_PER_FIND`] keys per call).
    async fn ask_nearest_first(&self, ids: &[DhtId], states: &mut [SearchState], now: DhtTime) {
        let mut groups: HashMap<(DhtId, PeerId), Vec<usize>> = HashMap::new();
        for (index, id) in ids.iter().enumerate() {
            if states[index].finished() {
                continue;
            }
            if let Some(nearest) = self.protocol.nearest_known(id, 1).first() {
                groups.entry(*nearest).or_default().push(index);
            }
        }
        let batches: Vec<((DhtId, PeerId), Vec<usize>)> = groups
            .into_iter()
            .flat_map(|(node, indices)| indices.chunks(KEYS_PER_FIND).map(|c| (node, c.to_vec())).collect::<Vec<_>>())
            .collect();
        let calls = batches.into_iter().map(|((node, peer), chunk)| async move {
            let keys: Vec<DhtId> = chunk.iter().map(|&i| ids[i]).collect();
            (node, chunk, self.protocol.call_find(peer, &keys).await)
        });
        for (node, chunk, outcome) in join_all(calls).await {
            let Ok(answers) = outcome else { continue };
            for (index, answer) in chunk.into_iter().zip(answers) {
                states[index].add(answer.value, node, now);
            }
        }
    }

    /// Finishes one read: a full lookup unless `state` already has a sufficient value, then the
    /// caching policy (hivemind's `_cache_new_result` and `_trigger_cache_refresh`).
    async fn finish_search(
        &self,
        key: DhtId,
        state: SearchState,
        found_locally: bool,
        is_refresh: bool,
        now: DhtTime,
    ) -> Option<FoundValue> {
        let bucket_size = self.protocol.config.bucket_size;
        let (state, nearest) = if found_locally {
            (state, None)
        } else if state.finished() {
            // The fast path found it: the nodes nearest to the key are those of our table.
            (state, Some(self.protocol.nearest_known(&key, bucket_size)))
        } else {
            let (state, nearest) = lookup(&self.protocol, key, bucket_size, state).await;
            (state, Some(nearest))
        };
        let source = state.source();
        let found = state.into_value()?;
        if let Some(nearest) = nearest {
            self.cache_new_result(key, &found, source, &nearest, is_refresh, now);
        }
        let before_expiry = self.protocol.config.cache_refresh_before_expiry;
        let cached = || self.protocol.with_storage(true, |c| c.get(&key, now).is_some());
        if !is_refresh && source == Some(self.node_id()) && before_expiry > 0.0 && cached() {
            self.schedule_refresh(key, found.expiration - before_expiry);
        }
        Some(found)
    }

    /// A value newer than what we hold goes to our cache (with `cache_locally`, or when refreshing
    /// the cache) and to the `cache_nearest` nearest nodes other than the one it came from.
    fn cache_new_result(
        &self,
        key: DhtId,
        found: &FoundValue,
        source: Option<DhtId>,
        nearest: &[(DhtId, PeerId)],
        is_refresh: bool,
        now: DhtTime,
    ) {
        let config = &self.protocol.config;
        let held =
            |cache| self.protocol.with_storage(cache, |s| s.get(&key, now).map_or(f64::NEG_INFINITY, |e| e.expiration));
        if found.expiration <= held(false).max(held(true)) {
            return;
        }
        if config.cache_locally || is_refresh {
            self.protocol.with_storage(true, |c| c.store_entry(key, found.value.clone(), found.expiration, now));
        }
        let (tag, bytes) = match &found.value {
            StoredValue::Regular(bytes) => (IS_REGULAR_VALUE, bytes.clone()),
            StoredValue::Dictionary(d) => (IS_DICTIONARY, msgpack::pack(&d.to_msgpack(now))),
        };
        for &(node, peer) in nearest.iter().filter(|(node, _)| Some(*node) != source).take(config.cache_nearest) {
            let protocol = self.protocol.clone();
            let item = [(key, tag.to_vec(), bytes.clone(), found.expiration)];
            tokio::spawn(async move {
                if let Err(e) = protocol.call_store(peer, &item, true).await {
                    tracing::debug!(%peer, %node, "DHT cache push failed: {e}");
                }
            });
        }
    }

    /// Queues `key` for a cache refresh at `time` (a key keeps its later refresh time).
    fn schedule_refresh(&self, key: DhtId, time: DhtTime) {
        let mut queue = self.protocol.refresh_queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.values().all(|&t| time < t) {
            self.protocol.refresh_wakeup.notify_one();
        }
        let due = queue.entry(key).or_insert(time);
        *due = due.max(time);
    }

    /// hivemind's `_refresh_stale_cache_entries`, one round: takes up to `chunk_size` due keys and
    /// looks them up for values that outlive the cached ones.
    async fn refresh_due_keys(&self) {
        let now = dht_time();
        let (keys, latest) = {
            let mut queue = self.protocol.refresh_queue.lock().unwrap_or_else(|p| p.into_inner());
            let mut due: Vec<(DhtTime, DhtId)> =
                queue.iter().filter(|(_, &t)| t <= now).map(|(&k, &t)| (t, k)).collect();
            due.sort_by(|a, b| a.0.total_cmp(&b.0));
            due.truncate(KEYS_PER_FIND);
            for (_, key) in &due {
                queue.remove(key);
            }
            let Some(&(first, _)) = due.first() else { return };
            // As hivemind does: the first key counts with its refresh time, the others with their
            // cached expirations.
            let latest = due[1..].iter().fold(first, |latest, (_, key)| {
                let cached = self.protocol.with_storage(true, |c| c.get(key, now).map(|e| e.expiration));
                cached.map_or(latest, |e| latest.max(e))
            });
            (due.into_iter().map(|(_, k)| k).collect::<Vec<_>>(), latest)
        };
        tracing::debug!(keys = keys.len(), "refreshing cached DHT values");
        let sufficient = latest + self.protocol.config.cache_refresh_before_expiry + 1.0;
        self.get_many_by_id(&keys, sufficient, true).await;
    }
}

/// The cache refresh task: sleeps until the earliest queued refresh (or a wake-up), then refreshes
/// the due keys. It ends when the DHT is gone.
async fn refresh_cache(protocol: Weak<Protocol>, wakeup: Arc<tokio::sync::Notify>) {
    loop {
        let next = {
            let Some(protocol) = protocol.upgrade() else { return };
            let queue = protocol.refresh_queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.values().copied().min_by(f64::total_cmp)
        };
        let Some(next) = next else {
            wakeup.notified().await;
            continue;
        };
        let wait = next - dht_time();
        if wait > 0.0 {
            tokio::select! {
                _ = wakeup.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs_f64(wait.min(1e6))) => {}
            }
        }
        let Some(protocol) = protocol.upgrade() else { return };
        Dht { protocol }.refresh_due_keys().await;
    }
}

/// hivemind's `_refresh_routing_table`: every `period`, looks up a random ID in each bucket that
/// saw no node for `period`, which fills the bucket with the nodes found. It ends when the DHT is
/// gone.
async fn refresh_routing_table(protocol: Weak<Protocol>, period: Duration) {
    loop {
        let started = tokio::time::Instant::now();
        let targets = match protocol.upgrade() {
            Some(protocol) => protocol.stale_bucket_targets(period),
            None => return,
        };
        for target in targets {
            let Some(protocol) = protocol.upgrade() else { return };
            let found = lookup_many(&protocol, &[target], protocol.config.bucket_size).await;
            tracing::debug!(%target, found = found.first().map_or(0, Vec::len), "refreshed a stale DHT bucket");
        }
        tokio::time::sleep_until(started + period).await;
    }
}
