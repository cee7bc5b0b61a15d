//! The live side of routing (Petals' `RemoteSequenceManager`): reads who serves each block from
//! the DHT, pings servers, fetches `rpc_info`, bans failing servers and hands out routes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::PeerId;
use prost::Message;
use rand::seq::SliceRandom;
use rmpv::Value;

use super::config::ClientConfig;
use super::routing::{max_throughput_route, min_latency_route, Blacklist, RemoteSpan, RouteMode, SwarmView};
use super::swarm::{servers_of, RpcInfo};
use crate::dht::{Dht, RPC_PING};
use crate::error::{Error, ErrorKind, Result};
use crate::p2p::Rpc;
use crate::server::{block_uid, ServerInfo, ServerState, RPC_INFO};
use crate::wire::dht::{NodeInfo, PingRequest};
use crate::wire::msgpack;
use crate::wire::runtime::{ExpertInfo, ExpertUid};

/// Smoothing of ping round-trip times (an exponential moving average, as Petals' `PingAggregator`).
const PING_EMA_ALPHA: f64 = 0.2;
/// How long a ping measurement is trusted.
const PING_EXPIRATION: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    view: SwarmView,
    updated: Option<Instant>,
    pings: HashMap<PeerId, (f64, Instant)>,
    rpc_info: Option<RpcInfo>,
}

/// Tracks the servers of one model and chooses routes through them.
pub struct SequenceManager {
    pub(crate) config: ClientConfig,
    dht: Dht,
    pub(crate) rpc: Rpc,
    state: Mutex<State>,
    banned: Mutex<Blacklist>,
    refresh: tokio::sync::Mutex<()>,
}

impl SequenceManager {
    /// A manager for the model `config` names, reading the swarm through `dht` and calling
    /// servers through `rpc`.
    pub fn new(config: ClientConfig, dht: Dht, rpc: Rpc) -> Result<Self> {
        if config.num_blocks == 0 {
            return Err(Error::invalid_argument("a model has at least one block"));
        }
        if config.dht_prefix.is_empty() || config.dht_prefix.contains([' ', '.']) {
            return Err(Error::invalid_argument(format!("bad DHT prefix {:?}", config.dht_prefix)));
        }
        let banned = Mutex::new(Blacklist::new(config.ban_timeout));
        Ok(SequenceManager { config, dht, rpc, state: Mutex::default(), banned, refresh: tokio::sync::Mutex::new(()) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blacklist(&self) -> std::sync::MutexGuard<'_, Blacklist> {
        self.banned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads every block's servers from the DHT (one batched `get_many`, newest values) and
    /// pings a sample of them.
    pub async fn update(&self) -> Result<()> {
        let _guard = self.refresh.lock().await;
        let keys: Vec<Value> =
            (0..self.config.num_blocks).map(|i| Value::from(block_uid(&self.config.dht_prefix, i))).collect();
        let found = self.dht.get_many(keys, true).await?;
        let blocks: Vec<Vec<(PeerId, ServerInfo)>> =
            found.iter().map(|value| servers_of(&self.config, value)).collect();
        let view = SwarmView { blocks };
        let spans = view.spans(|_| false);
        let sample = |range: std::ops::Range<u32>| -> Vec<PeerId> {
            let mut peers: Vec<PeerId> =
                spans.iter().filter(|s| range.clone().any(|b| s.start <= b && b < s.end)).map(|s| s.peer).collect();
            peers.shuffle(&mut rand::thread_rng());
            peers.truncate(self.config.max_pinged);
            peers
        };
        let last = self.config.num_blocks - 1;
        let mut pinged = sample(0..1);
        pinged.extend(sample(1..last));
        pinged.extend(sample(last..last + 1));
        pinged.sort_by_key(|p| p.to_bytes());
        pinged.dedup();
        let rtts = join_all(pinged.iter().map(|peer| self.ping(*peer))).await;
        let mut state = self.state();
        let now = Instant::now();
        for (peer, rtt) in pinged.into_iter().zip(rtts) {
            let smoothed = match state.pings.get(&peer) {
                Some(&(prev, expires)) if expires > now && prev.is_finite() => {
                    PING_EMA_ALPHA * rtt + (1.0 - PING_EMA_ALPHA) * prev
                }
                _ => rtt,
            };
            state.pings.insert(peer, (smoothed, now + PING_EXPIRATION));
        }
        state.pings.retain(|_, (_, expires)| *expires > now);
        state.view = view;
        state.updated = Some(now);
        tracing::debug!(servers = ?state.view.spans(|_| false).iter().map(|s| (s.peer, s.start, s.end)).collect::<Vec<_>>(), "swarm view updated");
        Ok(())
    }

    /// Round-trip time of a `DHTProtocol.rpc_ping` to `peer` in seconds, infinite if it fails
    /// (a peer without a DHT handler, reachable through a relay, counts as reached).
    async fn ping(&self, peer: PeerId) -> f64 {
        let request = PingRequest { auth: None, peer: Some(NodeInfo { node_id: Vec::new() }), validate: false };
        let start = Instant::now();
        match self.rpc.call_unary(peer, RPC_PING, request.encode_to_vec(), self.config.ping_timeout).await {
            Ok(_) => start.elapsed().as_secs_f64(),
            Err(e) if e.message().contains("protocol not supported") => start.elapsed().as_secs_f64(),
            Err(e) => {
                tracing::debug!(%peer, "ping failed: {e}");
                f64::INFINITY
            }
        }
    }

    /// Refreshes the swarm view if it was never read or is older than the update period.
    async fn ensure_fresh(&self) -> Result<()> {
        let stale = self.state().updated.is_none_or(|t| t.elapsed() >= self.config.update_period);
        if stale {
            self.update().await?;
        }
        Ok(())
    }

    /// A chain of servers for blocks `start..end`. `cache_tokens` is the session length an
    /// inference route must find room for. If some block has no usable server the view is
    /// re-read once before giving up.
    pub async fn make_route(
        &self,
        start: u32,
        end: u32,
        mode: RouteMode,
        cache_tokens: Option<u64>,
    ) -> Result<Vec<RemoteSpan>> {
        if start > end || end > self.config.num_blocks {
            return Err(Error::invalid_argument(format!(
                "blocks {start}..{end} are outside the model's {} blocks",
                self.config.num_blocks
            )));
        }
        self.ensure_fresh().await?;
        match self.route_now(start, end, mode, cache_tokens) {
            Ok(route) => Ok(route),
            Err(_) => {
                self.update().await?;
                self.route_now(start, end, mode, cache_tokens)
            }
        }
    }

    fn route_now(&self, start: u32, end: u32, mode: RouteMode, cache_tokens: Option<u64>) -> Result<Vec<RemoteSpan>> {
        let now = Instant::now();
        let spans = {
            let banned = self.blacklist();
            self.state().view.usable_spans(|peer| banned.is_banned(peer, now))
        };
        let rtts = self.rtts();
        match mode {
            RouteMode::MinLatency => min_latency_route(&spans, start, end, &rtts, cache_tokens),
            RouteMode::MaxThroughput => max_throughput_route(&spans, start, end, &rtts, &mut rand::thread_rng()),
        }
    }

    fn rtts(&self) -> HashMap<PeerId, f64> {
        let now = Instant::now();
        self.state().pings.iter().filter(|(_, (_, exp))| *exp > now).map(|(p, (rtt, _))| (*p, *rtt)).collect()
    }

    /// The codecs servers ask for, read once from a random ONLINE server of block 0 (another one
    /// after a failure, with the configured retries).
    pub async fn rpc_info(&self) -> Result<RpcInfo> {
        let mut attempt = 0;
        loop {
            match self.try_rpc_info().await {
                Ok(info) => return Ok(info),
                Err(e) => {
                    let Some(delay) = self.retry_delay(attempt) else { return Err(e) };
                    tracing::warn!(attempt, "rpc_info failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn try_rpc_info(&self) -> Result<RpcInfo> {
        if let Some(info) = self.state().rpc_info {
            return Ok(info);
        }
        self.ensure_fresh().await?;
        let holders: Vec<PeerId> = {
            let state = self.state();
            let first = state.view.blocks.first().map(Vec::as_slice).unwrap_or_default();
            first.iter().filter(|(_, info)| info.state == ServerState::Online).map(|(peer, _)| *peer).collect()
        };
        let now = Instant::now();
        let unbanned: Vec<PeerId> = holders.iter().copied().filter(|p| !self.blacklist().is_banned(p, now)).collect();
        let choices = if unbanned.is_empty() { &holders } else { &unbanned };
        let Some(&peer) = choices.choose(&mut rand::thread_rng()) else {
            self.update().await?;
            return Err(Error::new(ErrorKind::Network, "no ONLINE server holds block 0"));
        };
        let request = ExpertUid { uid: block_uid(&self.config.dht_prefix, 0) }.encode_to_vec();
        let reply = match self.rpc.call_unary(peer, RPC_INFO, request, self.config.request_timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                self.on_failure(Some(peer));
                return Err(e);
            }
        };
        let info = ExpertInfo::decode(reply.as_slice())
            .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding rpc_info", e))?;
        let info = RpcInfo::from_value(&msgpack::unpack(&info.serialized_info)?)?;
        self.on_success(&peer);
        self.state().rpc_info = Some(info);
        Ok(info)
    }

    /// Records that `peer` failed (bans it for a while); `None` when no server was involved.
    pub fn on_failure(&self, peer: Option<PeerId>) {
        if let Some(peer) = peer {
            tracing::debug!(%peer, "server failed, banning it for a while");
            self.blacklist().register_failure(peer, Instant::now());
        }
    }

    /// Records that `peer` answered (clears its ban streak).
    pub fn on_success(&self, peer: &PeerId) {
        self.blacklist().register_success(peer);
    }

    /// The wait before retry `attempt`, or `None` if the retries are used up.
    pub fn retry_delay(&self, attempt: usize) -> Option<Duration> {
        if self.config.max_retries.is_some_and(|max| attempt + 1 >= max) {
            return None;
        }
        Some(super::routing::retry_delay(attempt, self.config.min_backoff, self.config.max_backoff))
    }
}
