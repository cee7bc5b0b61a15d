//! The round-trip times a server announces as `next_pings` (petals/utils/ping.py
//! `PingAggregator`, petals/server/server.py `ModuleAnnouncerThread._ping_next_servers`): each
//! announcement cycle pings up to 5 other servers of the blocks after our first one and up to 5 of
//! the block right after our span, and smooths each peer's times.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use prost::Message;
use rand::seq::SliceRandom;
use rmpv::Value;

use super::announce::Span;
use super::prefix::block_uid;
use crate::dht::{Dht, DhtValue, RPC_PING};
use crate::p2p::Rpc;
use crate::wire::dht::{NodeInfo, PingRequest};

/// Servers pinged per group (Petals' `max_pinged`).
const MAX_PINGED: usize = 5;
/// How long one ping may take before it counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The weight of a new sample in the moving average.
const EMA_ALPHA: f64 = 0.2;
/// How long a peer's figure lives without a new sample.
const EXPIRATION: Duration = Duration::from_secs(300);

/// Measures and remembers the round-trip times to the servers that follow ours.
pub(crate) struct NextPings {
    rpc: Rpc,
    dht: Dht,
    own: PeerId,
    dht_prefix: String,
    span: Span,
    num_blocks: u32,
    rtts: HashMap<PeerId, (f64, Instant)>,
}

impl NextPings {
    pub(crate) fn new(rpc: Rpc, dht: Dht, own: PeerId, dht_prefix: String, span: Span, num_blocks: u32) -> Self {
        NextPings { rpc, dht, own, dht_prefix, span, num_blocks, rtts: HashMap::new() }
    }

    /// Pings this cycle's sample of next servers and returns every live figure, by base58 peer id
    /// (`inf` for a peer that did not answer).
    pub(crate) async fn refresh(&mut self) -> Vec<(String, f64)> {
        let blocks: Vec<u32> = (self.span.start + 1..=self.span.end).filter(|&b| b < self.num_blocks).collect();
        let keys = blocks.iter().map(|&b| Value::from(block_uid(&self.dht_prefix, b))).collect();
        let found = match self.dht.get_many(keys, true).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("looking up the next servers failed: {e}");
                Vec::new()
            }
        };
        let mut middle = Vec::new();
        let mut last = Vec::new();
        for (&block, value) in blocks.iter().zip(found) {
            let peers = servers(value);
            if block == self.span.end {
                last = peers;
            } else {
                middle.extend(peers);
            }
        }
        middle.sort();
        middle.dedup();
        middle.retain(|p| *p != self.own);
        let mut rng = rand::thread_rng();
        middle.shuffle(&mut rng);
        last.shuffle(&mut rng);
        let mut targets: Vec<PeerId> = middle.into_iter().take(MAX_PINGED).collect();
        targets.extend(last.into_iter().take(MAX_PINGED));
        targets.sort();
        targets.dedup();

        let pings = targets.iter().map(|&peer| self.ping(peer));
        let rtts = futures::future::join_all(pings).await;
        let now = Instant::now();
        for (peer, rtt) in targets.into_iter().zip(rtts) {
            let smoothed = match self.rtts.get(&peer) {
                Some((previous, _)) if previous.is_finite() => EMA_ALPHA * rtt + (1.0 - EMA_ALPHA) * previous,
                _ => rtt,
            };
            self.rtts.insert(peer, (smoothed, now));
        }
        self.rtts.retain(|_, (_, at)| now.duration_since(*at) < EXPIRATION);
        self.rtts.iter().map(|(peer, (rtt, _))| (peer.to_base58(), *rtt)).collect()
    }

    /// One `DHTProtocol.rpc_ping`: its round-trip time in seconds, or infinity.
    async fn ping(&self, peer: PeerId) -> f64 {
        let node_id = self.dht.node_id().as_bytes().to_vec();
        let request = PingRequest { auth: None, peer: Some(NodeInfo { node_id }), validate: false };
        let started = Instant::now();
        match self.rpc.call_unary(peer, RPC_PING, request.encode_to_vec(), PING_TIMEOUT).await {
            Ok(_) => started.elapsed().as_secs_f64(),
            // A server whose DHT runs in client mode answers so, which still measures the trip.
            Err(e) if e.message().ends_with("protocol not supported") => started.elapsed().as_secs_f64(),
            Err(e) => {
                tracing::debug!(%peer, "ping failed: {e}");
                f64::INFINITY
            }
        }
    }
}

/// The servers announced in a block record (its subkeys are base58 peer ids).
fn servers(value: Option<DhtValue>) -> Vec<PeerId> {
    let Some(DhtValue::Dictionary { entries, .. }) = value else { return Vec::new() };
    entries.iter().filter_map(|e| e.subkey.as_str()?.parse().ok()).collect()
}
