//! The swarm task and the handle the rest of the library uses to drive it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{identify, kad, quic, tcp, Multiaddr, PeerId, Swarm, Transport};
use libp2p_websocket as websocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::kad_responder::KnownPeer;
use super::muxer::RpcMuxer;
use super::rpc::{Rpc, RpcShared};
use super::security::SecurityUpgrade;
use super::webrtc;
use super::yamux_muxer::YamuxUpgrade;
use crate::config::NodeConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::identity::Identity;

/// Queue length between the node's API and its swarm task.
const COMMAND_QUEUE: usize = 64;

/// What a peer told us about itself through identify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's ID.
    pub peer_id: PeerId,
    /// Its agent string, e.g. `p2pd/0.1` for hivemind peers.
    pub agent_version: String,
    /// Its identify protocol version, e.g. `ipfs/0.1.0`.
    pub protocol_version: String,
    /// The protocols it lists (rust-libp2p drops names without a leading `/`).
    pub protocols: Vec<String>,
    /// The addresses it says it listens on.
    pub listen_addrs: Vec<Multiaddr>,
}

pub(crate) enum Command {
    /// Dial `addr` and answer with the peer's identify record.
    Connect { addr: Multiaddr, reply: oneshot::Sender<Result<PeerInfo>> },
    /// Make sure we have a connection to `peer`, finding its addresses through Kademlia if needed.
    Dial { peer: PeerId, reply: oneshot::Sender<Result<()>> },
    /// The peers we know closest to a Kademlia `key`, for a kad request from `requester`.
    ClosestPeers { key: Vec<u8>, requester: PeerId, reply: oneshot::Sender<Vec<KnownPeer>> },
}

/// A cheap, cloneable handle to the running swarm task.
#[derive(Clone)]
pub(crate) struct HostHandle {
    commands: mpsc::Sender<Command>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    rpc: Rpc,
}

impl HostHandle {
    /// The RPC layer: handlers and calls.
    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    /// The addresses the host currently listens on (without the `/p2p/` suffix).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Connects to `peer` by ID (through Kademlia if its addresses are unknown).
    pub async fn dial_peer(&self, peer: PeerId) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Dial { peer, reply })
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "the node is shut down"))?;
        answer.await.map_err(|_| Error::new(ErrorKind::Closed, "the node is shut down"))?
    }

    /// Dials `addr` and waits until the peer has identified itself.
    pub async fn connect(&self, addr: Multiaddr) -> Result<PeerInfo> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Connect { addr, reply })
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "the node is shut down"))?;
        answer.await.map_err(|_| Error::new(ErrorKind::Closed, "the node is shut down"))?
    }
}

/// Builds the swarm, starts every listener and waits (up to the config's `start_timeout`) until
/// each has an address. The returned task runs the swarm until `stop` fires or every handle is
/// dropped.
pub(crate) async fn start_host(
    identity: &Identity,
    listen: &[Multiaddr],
    config: &NodeConfig,
    stop: oneshot::Receiver<()>,
) -> Result<(HostHandle, JoinHandle<()>)> {
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let rpc = Arc::new(RpcShared::new(tokio::runtime::Handle::current(), commands_tx.downgrade()));
    if listen.iter().any(|addr| addr.iter().any(|p| matches!(p, Protocol::Ws(_) | Protocol::WebRTCDirect))) {
        // Browsers reach the swarm through WebSocket and WebRTC-direct listeners: forward their
        // calls to other peers.
        rpc.enable_forwarding(identity.peer_id());
    }
    let mut swarm = build_swarm(identity, rpc.clone(), config)?;
    let mut waiting: HashSet<ListenerId> = HashSet::new();
    for addr in listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, format!("cannot listen on {addr}"), e))?;
        waiting.insert(id);
    }
    let mut event_loop = EventLoop {
        swarm,
        commands,
        listen_addrs: Arc::new(RwLock::new(Vec::new())),
        connecting: HashMap::new(),
        dialing: HashMap::new(),
        lookups: HashMap::new(),
        identified: HashMap::new(),
    };
    let wait_for_listeners = async {
        while !waiting.is_empty() {
            let event = event_loop.swarm.select_next_some().await;
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.remove(listener_id);
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } if waiting.contains(listener_id) => {
                    let why = match reason {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(Error::new(ErrorKind::Network, format!("listener failed to start: {why}")));
                }
                SwarmEvent::ListenerError { listener_id, error } if waiting.contains(listener_id) => {
                    return Err(Error::new(ErrorKind::Network, format!("listener failed to start: {error}")));
                }
                _ => {}
            }
            event_loop.on_swarm_event(event);
        }
        Ok(())
    };
    let timeout = config.start_timeout;
    tokio::time::timeout(timeout, wait_for_listeners)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, format!("listeners not up after {timeout:?}")))??;
    let handle =
        HostHandle { commands: commands_tx, listen_addrs: event_loop.listen_addrs.clone(), rpc: Rpc::new(rpc) };
    let task = tokio::spawn(event_loop.run(stop));
    Ok((handle, task))
}

/// TCP or WebSocket over TCP (`/ws`, which browsers can dial), then Noise or TLS, then yamux (as p2pd
/// offers them); QUIC (`/udp/N/quic-v1`); or WebRTC-direct (`/udp/N/webrtc-direct`, listen only, see
/// [`super::webrtc`]). Every connection's muxer is wrapped in [`RpcMuxer`] so that hivemind's handler
/// names reach our RPC layer.
fn build_swarm(identity: &Identity, rpc: Arc<RpcShared>, config: &NodeConfig) -> Result<Swarm<Behaviour>> {
    let keypair = identity.keypair();
    let security = SecurityUpgrade::new(keypair, &config.security)?;
    let tcp = || tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let mut quic_config = quic::Config::new(keypair);
    // `/quic` (draft-29) as well as `/quic-v1`: hivemind's Python side cannot parse `/quic-v1`
    // addresses, so a p2pd that hivemind can run listens on `/quic` only.
    #[allow(deprecated)]
    {
        quic_config.support_draft_29 = true;
    }
    let quic =
        quic::tokio::Transport::new(quic_config).map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)));
    let transport = websocket::Config::new(tcp())
        .or_transport(tcp())
        .upgrade(Version::V1Lazy)
        .authenticate(security)
        .multiplex(YamuxUpgrade)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .or_transport(quic)
        .map(|either, _| either.into_inner())
        .or_transport(webrtc::transport(keypair)?)
        .map({
            let rpc = rpc.clone();
            move |either, _| {
                let (peer, muxer) = either.into_inner();
                let muxer = RpcMuxer::new(muxer, peer, rpc.clone());
                (peer, StreamMuxerBox::new(muxer))
            }
        })
        .boxed();
    let behaviour = Behaviour::new(keypair.public(), rpc, config.idle_connection_timeout);
    // Idle connections are closed by the keep-alive behaviour's own timer (see `keep_alive`).
    let swarm_config = libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::ZERO);
    Ok(Swarm::new(transport, behaviour, keypair.public().to_peer_id(), swarm_config))
}

/// How often kad's routing table is refreshed (p2pd's kad refreshes every 10 minutes).
const KAD_REFRESH_INTERVAL: Duration = Duration::from_secs(10 * 60);

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    /// Outgoing connections whose caller waits for the peer's identify info.
    connecting: HashMap<ConnectionId, oneshot::Sender<Result<PeerInfo>>>,
    /// Peers being dialed by ID, with whoever waits for the connection.
    dialing: HashMap<PeerId, Vec<oneshot::Sender<Result<()>>>>,
    /// Kademlia lookups of peers' addresses, by query.
    lookups: HashMap<kad::QueryId, PeerId>,
    /// Where each connected peer said (through identify) that it listens.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
}

impl EventLoop {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut kad_refresh = tokio::time::interval(KAD_REFRESH_INTERVAL);
        kad_refresh.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = kad_refresh.tick() => self.refresh_kad(),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        for (_, reply) in self.connecting.drain() {
            let _ = reply.send(Err(Error::new(ErrorKind::Closed, "the node shut down")));
        }
        for (_, replies) in self.dialing.drain() {
            for reply in replies {
                let _ = reply.send(Err(Error::new(ErrorKind::Closed, "the node shut down")));
            }
        }
        tracing::debug!("swarm task stopped");
    }

    /// Refreshes kad's routing table as p2pd does, unless we know no peer yet (a lone node).
    fn refresh_kad(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        if kad.kbuckets().any(|bucket| bucket.num_entries() > 0) {
            let _ = kad.bootstrap();
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect { addr, reply } => {
                let opts = DialOpts::from(addr.clone());
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.connecting.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::with_source(ErrorKind::Network, format!("dialing {addr}"), e)));
                    }
                }
            }
            Command::Dial { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let first = !self.dialing.contains_key(&peer);
                self.dialing.entry(peer).or_default().push(reply);
                if first {
                    self.dial_peer(peer);
                }
            }
            Command::ClosestPeers { key, requester, reply } => {
                let _ = reply.send(self.closest_peers(key, requester));
            }
        }
    }

    /// The `K_VALUE` peers of kad's routing table closest to `key`, leaving out `requester`, with
    /// bare addresses; as go-libp2p-kad-dht answers, a connected peer whose ID is `key` is named
    /// too even when it is no Kademlia server.
    fn closest_peers(&mut self, key: Vec<u8>, requester: PeerId) -> Vec<KnownPeer> {
        let target = PeerId::from_bytes(&key).ok().filter(|p| *p != requester);
        let target_key = kad::KBucketKey::new(key);
        let mut found: Vec<(kad::KBucketDistance, PeerId, Vec<Multiaddr>)> = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let peer = *entry.node.key.preimage();
                if peer != requester {
                    let addrs = entry.node.value.iter().map(without_peer_id).collect();
                    found.push((entry.node.key.distance(&target_key), peer, addrs));
                }
            }
        }
        if let Some(target) = target.filter(|t| self.swarm.is_connected(t) && !found.iter().any(|f| f.1 == *t)) {
            if let Some(addrs) = self.identified.get(&target) {
                found.push((kad::KBucketDistance::default(), target, addrs.iter().map(without_peer_id).collect()));
            }
        }
        found.sort_by_key(|f| f.0);
        found.truncate(kad::K_VALUE.get());
        found
            .into_iter()
            .map(|(_, peer, addrs)| KnownPeer { peer, addrs, connected: self.swarm.is_connected(&peer) })
            .collect()
    }

    /// Dials `peer` at the addresses the behaviours know; with none, asks Kademlia first.
    fn dial_peer(&mut self, peer: PeerId) {
        let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(DialError::NoAddresses) if !self.lookups.values().any(|p| p == &peer) => {
                let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups.insert(query, peer);
            }
            Err(DialError::NoAddresses) => {}
            Err(e) => self.dial_failed(peer, Error::with_source(ErrorKind::Network, format!("dialing {peer}"), e)),
        }
    }

    fn dial_failed(&mut self, peer: PeerId, error: Error) {
        for reply in self.dialing.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(Error::new(error.kind(), error.message())));
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result: kad::QueryResult::GetClosestPeers(result), step, ..
            } => {
                let Some(&peer) = self.lookups.get(&id) else { return };
                let found = match &result {
                    Ok(ok) => ok.peers.iter().find(|info| info.peer_id == peer).cloned(),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                        peers.iter().find(|info| info.peer_id == peer).cloned()
                    }
                };
                if let Some(info) = found {
                    for addr in info.addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    }
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                    self.lookups.remove(&id);
                    self.dial_peer(peer);
                } else if step.last {
                    self.lookups.remove(&id);
                    self.dial_failed(peer, Error::new(ErrorKind::Network, format!("no address found for {peer}")));
                }
            }
            other => tracing::trace!(?other, "kad event"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if let Ok(mut addrs) = self.listen_addrs.write() {
                    addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if let Ok(mut addrs) = self.listen_addrs.write() {
                    addrs.retain(|a| a != &address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for reply in self.dialing.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                if let Some(peer) = peer_id.filter(|p| self.dialing.contains_key(p) && !self.swarm.is_connected(p)) {
                    self.dial_failed(peer, Error::new(ErrorKind::Network, format!("dialing {peer} failed: {error}")));
                }
                if let Some(reply) = self.connecting.remove(&connection_id) {
                    let _ = reply.send(Err(Error::with_source(ErrorKind::Network, "dial failed", error)));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::ConnectionClosed { connection_id, peer_id, cause, num_established, .. } => {
                if num_established == 0 {
                    self.identified.remove(&peer_id);
                }
                if let Some(reply) = self.connecting.remove(&connection_id) {
                    let why = cause.map(|c| c.to_string()).unwrap_or_else(|| "closed".into());
                    let _ = reply
                        .send(Err(Error::new(ErrorKind::Network, format!("connection closed before identify: {why}"))));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            })) => {
                self.identified.insert(peer_id, info.listen_addrs.clone());
                // Remember where a Kademlia peer listens, so that we can dial it by ID later.
                if info.protocols.iter().any(|p| p == &kad::PROTOCOL_NAME) {
                    for addr in &info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    }
                }
                if let Some(reply) = self.connecting.remove(&connection_id) {
                    let _ = reply.send(Ok(PeerInfo {
                        peer_id,
                        agent_version: info.agent_version,
                        protocol_version: info.protocol_version,
                        protocols: info.protocols.iter().map(|p| p.to_string()).collect(),
                        listen_addrs: info.listen_addrs,
                    }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Error {
                connection_id,
                peer_id,
                error,
            })) => {
                if let Some(reply) = self.connecting.remove(&connection_id) {
                    let _ = reply
                        .send(Err(Error::new(ErrorKind::Protocol, format!("identify with {peer_id} failed: {error}"))));
                }
            }
            other => tracing::trace!(?other, "swarm event"),
        }
    }
}

/// `addr` without its `/p2p/<peer id>` suffix, which the go-libp2p inside p2pd refuses to dial.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect()
}
