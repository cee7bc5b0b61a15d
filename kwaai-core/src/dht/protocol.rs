//! hivemind's `DHTProtocol`: the `rpc_ping`, `rpc_store` and `rpc_find` handlers, the matching
//! calls, and routing-table upkeep on every exchange, over the node's hivemind RPC layer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use prost::Message;
use rmpv::Value;

use super::blacklist::Blacklist;
use super::find::{parse_find_result, sender_node_id, valid_dictionary, FindAnswer};
use super::id::DhtId;
use super::routing::RoutingTable;
use super::storage::{dht_time, DhtTime, DictionaryValue, LocalStorage, StoredEntry, StoredValue};
use super::validation::{DhtRecord, Validators};
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::Rpc;
use crate::wire::dht::{
    FindRequest, FindResponse, FindResult, NodeInfo, PingRequest, PingResponse, ResultType, StoreRequest, StoreResponse,
};
use crate::wire::msgpack;

pub use super::find::{IS_DICTIONARY, IS_REGULAR_VALUE, RPC_FIND, RPC_PING, RPC_STORE};

/// Allowed clock difference between peers (hivemind's `MAX_DHT_TIME_DISCREPANCY_SECONDS`).
const MAX_TIME_DISCREPANCY: f64 = 3.0;

/// Tunables of a DHT node; the defaults are hivemind's.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// A client-mode node asks but does not serve, and peers never add it to their tables.
    pub client_mode: bool,
    /// Kademlia `k`.
    pub bucket_size: usize,
    /// Kademlia `b`: buckets far from our ID split only at depths not divisible by it.
    pub depth_modulo: usize,
    /// How many nodes store each value.
    pub num_replicas: usize,
    /// Concurrent requests per lookup.
    pub num_workers: usize,
    /// Timeout of each DHT RPC.
    pub wait_timeout: Duration,
    /// How long an unresponsive peer is skipped at first; doubles on each further failure.
    pub blacklist_time: Duration,
    /// Largest value (serialized) this node stores or sends.
    pub max_value_size: usize,
    /// Keys kept in storage (and in the cache unless `cache_size` is set).
    pub max_entries: usize,
    /// Keys kept in the cache (hivemind's `cache_size`; `None`: as many as `max_entries`).
    pub cache_size: Option<usize>,
    /// Cache the values a get finds (and the regular values a store writes, see
    /// `cache_on_store`) in this node's cache.
    pub cache_locally: bool,
    /// After a get finds a newer value than this node held, push it (`in_cache`) to this many of
    /// the nearest nodes the search knows, skipping the node that gave it.
    pub cache_nearest: usize,
    /// After a store, update this node's cache with what was stored.
    pub cache_on_store: bool,
    /// Look up a random ID in every routing-table bucket that saw no node for this long, this
    /// often (hivemind's `refresh_timeout`; `None`, the default, never refreshes).
    pub refresh_timeout: Option<Duration>,
    /// A cached value read locally is looked up again this many seconds before it expires, so a
    /// frequently read key stays cached (0 disables the refresh).
    pub cache_refresh_before_expiry: f64,
    /// Record validators (e.g. [`super::validation::RsaSignatureValidator`]); none by default, as
    /// in Petals.
    pub validators: Validators,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            client_mode: false,
            bucket_size: 20,
            depth_modulo: 5,
            num_replicas: 5,
            num_workers: 4,
            wait_timeout: Duration::from_secs(3),
            blacklist_time: Duration::from_secs(5),
            max_value_size: 1 << 20,
            max_entries: 1 << 20,
            cache_size: None,
            cache_locally: true,
            cache_nearest: 1,
            cache_on_store: true,
            cache_refresh_before_expiry: 5.0,
            refresh_timeout: None,
            validators: Validators::default(),
        }
    }
}

struct State {
    routing: RoutingTable,
    storage: LocalStorage,
    cache: LocalStorage,
    /// Peers that failed to answer a find, skipped for a while.
    blacklist: Blacklist,
}

impl State {
    fn is_banned(&self, peer: &PeerId) -> bool {
        self.blacklist.contains(peer, Instant::now())
    }
}

/// The protocol state shared by the handlers and the lookups.
pub struct Protocol {
    pub(crate) node_id: DhtId,
    pub(crate) config: DhtConfig,
    rpc: Rpc,
    state: Mutex<State>,
    /// Keys whose cached values are to be looked up again, with when (hivemind's
    /// `CacheRefreshQueue`).
    pub(crate) refresh_queue: Mutex<HashMap<DhtId, DhtTime>>,
    /// Wakes the cache refresh task when the earliest refresh time moves earlier.
    pub(crate) refresh_wakeup: Arc<tokio::sync::Notify>,
    /// Background tasks (cache and routing-table refresh), stopped with the DHT.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Protocol {
    /// Creates the protocol and, unless in client mode, registers its handlers on `rpc`.
    pub(crate) fn start(node_id: DhtId, config: DhtConfig, rpc: Rpc) -> Result<Arc<Protocol>> {
        let state = State {
            routing: RoutingTable::new(node_id, config.bucket_size, config.depth_modulo),
            storage: LocalStorage::new(config.max_entries),
            cache: LocalStorage::new(config.cache_size.unwrap_or(config.max_entries)),
            blacklist: Blacklist::new(config.blacklist_time),
        };
        let protocol = Arc::new(Protocol {
            node_id,
            config,
            rpc,
            state: Mutex::new(state),
            refresh_queue: Mutex::new(HashMap::new()),
            refresh_wakeup: Arc::new(tokio::sync::Notify::new()),
            tasks: Mutex::new(Vec::new()),
        });
        if !protocol.config.client_mode {
            // Handlers hold a weak reference: the RPC layer must not keep the DHT alive.
            let weak = Arc::downgrade(&protocol);
            register(&protocol.rpc, RPC_PING, &weak, |p, peer, req| async move { p.rpc_ping(peer, req).await })?;
            register(&protocol.rpc, RPC_STORE, &weak, |p, peer, req| async move { p.rpc_store(peer, req) })?;
            register(&protocol.rpc, RPC_FIND, &weak, |p, peer, req| async move { p.rpc_find(peer, req) })?;
        }
        Ok(protocol)
    }

    /// Unregisters the handlers.
    pub(crate) fn stop(&self) {
        for name in [RPC_PING, RPC_STORE, RPC_FIND] {
            self.rpc.remove_handler(name);
        }
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }

    /// Runs `task` in the background until the DHT stops.
    pub(crate) fn spawn_background(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let handle = runtime.spawn(task).abort_handle();
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn node_info(&self) -> NodeInfo {
        // Client-mode nodes send an empty ID so that peers do not add them to their tables.
        let node_id = if self.config.client_mode { Vec::new() } else { self.node_id.as_bytes().to_vec() };
        NodeInfo { node_id }
    }

    // ----- handlers ---------------------------------------------------------------------------

    async fn rpc_ping(self: Arc<Self>, sender: PeerId, request: Vec<u8>) -> Result<Vec<u8>> {
        let request = decode::<PingRequest>(&request)?;
        let mut response =
            PingResponse { auth: None, peer: Some(self.node_info()), dht_time: dht_time(), available: false };
        if let Some(sender_id) = sender_node_id(request.peer.as_ref())? {
            if request.validate {
                // Ping back: the sender is reachable if it answers with the ID it claims.
                response.available = matches!(self.call_ping(sender, false).await, Ok(Some(id)) if id == sender_id);
            }
            let responded = response.available || !request.validate;
            self.clone().spawn_update(Some(sender_id), sender, responded);
        }
        Ok(response.encode_to_vec())
    }

    fn rpc_store(self: Arc<Self>, sender: PeerId, request: Vec<u8>) -> Result<Vec<u8>> {
        let request = decode::<StoreRequest>(&request)?;
        if let Some(sender_id) = sender_node_id(request.peer.as_ref())? {
            self.clone().spawn_update(Some(sender_id), sender, true);
        }
        let n = request.keys.len();
        if request.values.len() != n || request.expiration_time.len() != n || request.in_cache.len() != n {
            return Err(Error::new(ErrorKind::Protocol, "StoreRequest lists are not aligned"));
        }
        let now = dht_time();
        let mut store_ok = Vec::with_capacity(n);
        // Like hivemind, a short `subkeys` list truncates the request.
        for ((((key, tag), value), &expiration), &in_cache) in request
            .keys
            .iter()
            .zip(&request.subkeys)
            .zip(request.values)
            .zip(&request.expiration_time)
            .zip(&request.in_cache)
        {
            let ok = self.store_one(key, tag, value, expiration, in_cache, now)?;
            store_ok.push(ok);
        }
        Ok(StoreResponse { auth: None, store_ok, peer: Some(self.node_info()) }.encode_to_vec())
    }

    fn store_one(
        &self,
        key: &[u8],
        tag: &[u8],
        value: Vec<u8>,
        expiration: f64,
        in_cache: bool,
        now: f64,
    ) -> Result<bool> {
        let key_id = DhtId::from_slice(key)?;
        if value.len() > self.config.max_value_size {
            return Ok(false);
        }
        if tag == IS_DICTIONARY {
            let dictionary = DictionaryValue::from_msgpack(&value)?;
            if !valid_dictionary(&self.config.validators, key, &dictionary) {
                return Ok(false);
            }
            let entries: Vec<_> = dictionary.entries(f64::NEG_INFINITY).cloned().collect();
            let mut state = self.lock();
            let storage = if in_cache { &mut state.cache } else { &mut state.storage };
            // `all` stops at the first refusal, as hivemind's generator does.
            return Ok(entries.into_iter().all(|e| storage.store_subkey(key_id, e.subkey, e.value, e.expiration, now)));
        }
        let subkey = if tag == IS_REGULAR_VALUE { None } else { Some(msgpack::unpack(tag)?) };
        let record = DhtRecord { key: key.to_vec(), subkey: tag.to_vec(), value, expiration };
        if !self.config.validators.validate(&record) {
            return Ok(false);
        }
        let mut state = self.lock();
        let storage = if in_cache { &mut state.cache } else { &mut state.storage };
        Ok(match subkey {
            None => storage.store(key_id, record.value, expiration, now),
            Some(subkey) => storage.store_subkey(key_id, subkey, record.value, expiration, now),
        })
    }

    fn rpc_find(self: Arc<Self>, sender: PeerId, request: Vec<u8>) -> Result<Vec<u8>> {
        let request = decode::<FindRequest>(&request)?;
        let sender_id = sender_node_id(request.peer.as_ref())?;
        if let Some(id) = sender_id {
            self.clone().spawn_update(Some(id), sender, true);
        }
        let exclude = sender_id.unwrap_or(DhtId::MIN);
        let now = dht_time();
        let mut results = Vec::with_capacity(request.keys.len());
        let mut state = self.lock();
        for key in &request.keys {
            let key = DhtId::from_slice(key)?;
            let stored = state.storage.get(&key, now).cloned();
            let cached = state.cache.get(&key, now).cloned();
            let newest = match (stored, cached) {
                (Some(s), Some(c)) if c.expiration > s.expiration => Some(c),
                (Some(s), _) => Some(s),
                (None, c) => c,
            };
            let mut result = match newest {
                None => FindResult { r#type: ResultType::NotFound as i32, ..FindResult::default() },
                Some(StoredEntry { value: StoredValue::Regular(bytes), expiration }) => FindResult {
                    r#type: ResultType::FoundRegular as i32,
                    value: bytes,
                    expiration_time: expiration,
                    ..FindResult::default()
                },
                Some(StoredEntry { value: StoredValue::Dictionary(d), expiration }) => FindResult {
                    r#type: ResultType::FoundDictionary as i32,
                    value: msgpack::pack(&d.to_msgpack(now)),
                    expiration_time: expiration,
                    ..FindResult::default()
                },
            };
            for (node, peer) in state.routing.nearest(&key, self.config.bucket_size, Some(&exclude)) {
                result.nearest_node_ids.push(node.as_bytes().to_vec());
                result.nearest_peer_ids.push(peer.to_bytes());
            }
            results.push(result);
        }
        Ok(FindResponse { auth: None, results, peer: Some(self.node_info()) }.encode_to_vec())
    }

    // ----- calls ------------------------------------------------------------------------------

    /// Pings `peer`; returns its node ID (`None` if it is a client). With `validate`, the peer
    /// must be able to reach us back (unless we are a client) and agree on the time.
    pub(crate) async fn call_ping(self: &Arc<Self>, peer: PeerId, validate: bool) -> Result<Option<DhtId>> {
        let request = PingRequest { auth: None, peer: Some(self.node_info()), validate };
        let sent = dht_time();
        let reply = self.call(peer, RPC_PING, request.encode_to_vec()).await;
        let received = dht_time();
        let response = match reply.and_then(|bytes| decode::<PingResponse>(&bytes)) {
            Ok(response) => response,
            Err(e) => {
                self.clone().spawn_update(None, peer, false);
                return Err(e);
            }
        };
        let node_id = sender_node_id(response.peer.as_ref())?;
        self.clone().spawn_update(node_id, peer, node_id.is_some());
        if validate && node_id.is_some() {
            if !self.config.client_mode && !response.available {
                return Err(Error::new(ErrorKind::Network, format!("{peer} cannot reach this node back")));
            }
            let skewed = response.dht_time != 0.0
                && (response.dht_time < sent - MAX_TIME_DISCREPANCY
                    || response.dht_time > received + MAX_TIME_DISCREPANCY);
            if skewed {
                return Err(Error::new(ErrorKind::Protocol, format!("{peer}'s clock is off by more than 3 s")));
            }
        }
        Ok(node_id)
    }

    /// Asks `peer` to store `(key, subkey tag, value, expiration)` items; returns one flag each.
    pub(crate) async fn call_store(
        self: &Arc<Self>,
        peer: PeerId,
        items: &[(DhtId, Vec<u8>, Vec<u8>, DhtTime)],
        in_cache: bool,
    ) -> Result<Vec<bool>> {
        let request = StoreRequest {
            auth: None,
            keys: items.iter().map(|(k, ..)| k.as_bytes().to_vec()).collect(),
            subkeys: items.iter().map(|(_, tag, ..)| tag.clone()).collect(),
            values: items.iter().map(|(_, _, v, _)| v.clone()).collect(),
            expiration_time: items.iter().map(|(.., e)| *e).collect(),
            in_cache: vec![in_cache; items.len()],
            peer: Some(self.node_info()),
        };
        let response = self.call(peer, RPC_STORE, request.encode_to_vec()).await;
        let response = match response.and_then(|bytes| decode::<StoreResponse>(&bytes)) {
            Ok(r) => r,
            Err(e) => {
                self.clone().spawn_update(None, peer, false);
                return Err(e);
            }
        };
        self.clone().spawn_update(sender_node_id(response.peer.as_ref())?, peer, true);
        if response.store_ok.len() != items.len() {
            return Err(Error::new(ErrorKind::Protocol, "StoreResponse is not aligned with the request"));
        }
        Ok(response.store_ok)
    }

    /// Asks `peer` for `keys`: its value (if any) and nearest known peers for each.
    pub(crate) async fn call_find(self: &Arc<Self>, peer: PeerId, keys: &[DhtId]) -> Result<Vec<FindAnswer>> {
        if self.is_blacklisted(&peer) {
            return Err(Error::new(ErrorKind::Network, format!("{peer} is temporarily blacklisted")));
        }
        let request = FindRequest {
            auth: None,
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            peer: Some(self.node_info()),
        };
        let outcome = self.call(peer, RPC_FIND, request.encode_to_vec()).await.and_then(|bytes| {
            let response = decode::<FindResponse>(&bytes)?;
            if response.results.len() != keys.len() {
                return Err(Error::new(ErrorKind::Protocol, "FindResponse is not aligned with the request"));
            }
            Ok(response)
        });
        let response = match outcome {
            Ok(response) => {
                self.lock().blacklist.register_success(&peer);
                response
            }
            Err(e) => {
                self.lock().blacklist.register_failure(peer, Instant::now());
                self.clone().spawn_update(None, peer, false);
                return Err(e);
            }
        };
        self.clone().spawn_update(sender_node_id(response.peer.as_ref())?, peer, true);
        keys.iter()
            .zip(response.results)
            .map(|(key, result)| parse_find_result(&self.config.validators, key, result))
            .collect()
    }

    async fn call(&self, peer: PeerId, name: &str, request: Vec<u8>) -> Result<Vec<u8>> {
        self.rpc.call_unary(peer, name, request, self.config.wait_timeout).await
    }

    // ----- local state ------------------------------------------------------------------------

    fn is_blacklisted(&self, peer: &PeerId) -> bool {
        self.lock().is_banned(peer)
    }

    /// Nearest known nodes to `target` (not us), nearest first.
    pub(crate) fn nearest_known(&self, target: &DhtId, k: usize) -> Vec<(DhtId, PeerId)> {
        let state = self.lock();
        let mut nearest = state.routing.nearest(target, k + 1, Some(&self.node_id));
        nearest.retain(|(_, peer)| !state.is_banned(peer));
        nearest.truncate(k);
        nearest
    }

    /// A random ID in each bucket not updated for `staleness`.
    pub(crate) fn stale_bucket_targets(&self, staleness: Duration) -> Vec<DhtId> {
        self.lock().routing.stale_bucket_targets(staleness)
    }

    /// Nodes in the routing table.
    pub(crate) fn routing_table_len(&self) -> usize {
        self.lock().routing.len()
    }

    /// Runs `f` on local storage (or the cache).
    pub(crate) fn with_storage<R>(&self, cache: bool, f: impl FnOnce(&mut LocalStorage) -> R) -> R {
        let mut state = self.lock();
        f(if cache { &mut state.cache } else { &mut state.storage })
    }

    /// hivemind's `update_routing_table`, in the background: a node that answered is added (and
    /// offered the values it should now hold); one that did not is removed.
    fn spawn_update(self: Arc<Self>, node_id: Option<DhtId>, peer: PeerId, responded: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move { self.update_routing_table(node_id, peer, responded).await });
    }

    pub(crate) async fn update_routing_table(self: Arc<Self>, node_id: Option<DhtId>, peer: PeerId, responded: bool) {
        let node_id = {
            let state = self.lock();
            node_id.or_else(|| state.routing.node_of(&peer))
        };
        let Some(node_id) = node_id else { return };
        if !responded {
            self.lock().routing.remove(&node_id);
            return;
        }
        let (to_replicate, to_ping) = {
            let mut state = self.lock();
            let is_new = state.routing.peer_of(&node_id).is_none();
            let to_replicate = if is_new { self.values_for_new_node(&mut state, &node_id) } else { Vec::new() };
            (to_replicate, state.routing.add_or_update(node_id, peer))
        };
        if !to_replicate.is_empty() {
            let _ = self.call_store(peer, &to_replicate, false).await;
        }
        if let Some((_, stale_peer)) = to_ping {
            // A full bucket keeps its old node only if that node still answers.
            let _ = self.call_ping(stale_peer, false).await;
        }
    }

    /// The values a newly met node should hold: those it is nearer to than our farthest replica,
    /// for keys we are the nearest holder of.
    fn values_for_new_node(&self, state: &mut State, new_node: &DhtId) -> Vec<(DhtId, Vec<u8>, Vec<u8>, DhtTime)> {
        let now = dht_time();
        let entries: Vec<(DhtId, StoredEntry)> = state.storage.iter(now).map(|(k, e)| (*k, e.clone())).collect();
        let mut items = Vec::new();
        for (key, entry) in entries {
            let neighbors = state.routing.nearest(&key, self.config.num_replicas, Some(&self.node_id));
            let send = match (neighbors.first(), neighbors.last()) {
                (Some((nearest, _)), Some((farthest, _))) => {
                    new_node.distance(&key) < farthest.distance(&key)
                        && self.node_id.distance(&key) < nearest.distance(&key)
                }
                _ => true,
            };
            if send {
                match entry.value {
                    StoredValue::Regular(bytes) => {
                        items.push((key, IS_REGULAR_VALUE.to_vec(), bytes, entry.expiration))
                    }
                    StoredValue::Dictionary(d) => {
                        items.push((key, IS_DICTIONARY.to_vec(), msgpack::pack(&d.to_msgpack(now)), entry.expiration))
                    }
                }
            }
        }
        items
    }
}

/// Registers one unary handler that calls a method of the protocol while it is alive.
fn register<F, Fut>(rpc: &Rpc, name: &str, protocol: &Weak<Protocol>, method: F) -> Result<()>
where
    F: Fn(Arc<Protocol>, PeerId, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<u8>>> + Send + 'static,
{
    let protocol = protocol.clone();
    let method = Arc::new(method);
    rpc.add_unary_handler(name, move |peer, request| {
        let protocol = protocol.upgrade();
        let method = method.clone();
        async move {
            let protocol = protocol.ok_or_else(|| Error::new(ErrorKind::Closed, "the DHT is shut down"))?;
            method(protocol, peer, request).await
        }
    })
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::new(ErrorKind::Protocol, format!("bad DHT message: {e}")))
}

/// The msgpack subkey tag for a store: `c0` for a regular value, else the packed subkey.
pub(crate) fn subkey_tag(subkey: Option<&Value>) -> Vec<u8> {
    subkey.map_or_else(|| IS_REGULAR_VALUE.to_vec(), msgpack::pack)
}
