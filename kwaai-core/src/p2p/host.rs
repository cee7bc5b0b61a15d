//! The swarm task and the handle the rest of the library uses to drive it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::behaviour::{Behaviour, BehaviourEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::Identity;

/// How long an idle connection (no open streams) is kept; p2pd uses 30 s.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
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

enum Command {
    Connect { addr: Multiaddr, reply: oneshot::Sender<Result<PeerInfo>> },
}

/// A cheap, cloneable handle to the running swarm task.
#[derive(Clone)]
pub(crate) struct HostHandle {
    commands: mpsc::Sender<Command>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
}

impl HostHandle {
    /// The addresses the host currently listens on (without the `/p2p/` suffix).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.read().map(|a| a.clone()).unwrap_or_default()
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

/// Builds the swarm, starts every listener and waits (up to `timeout`) until each has an address.
/// The returned task runs the swarm until `stop` fires or every handle is dropped.
pub(crate) async fn start_host(
    identity: &Identity,
    listen: &[Multiaddr],
    timeout: Duration,
    stop: oneshot::Receiver<()>,
) -> Result<(HostHandle, JoinHandle<()>)> {
    let mut swarm = build_swarm(identity)?;
    let mut waiting: HashSet<ListenerId> = HashSet::new();
    for addr in listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, format!("cannot listen on {addr}"), e))?;
        waiting.insert(id);
    }
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let mut event_loop =
        EventLoop { swarm, commands, listen_addrs: Arc::new(RwLock::new(Vec::new())), connecting: HashMap::new() };
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
    tokio::time::timeout(timeout, wait_for_listeners)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, format!("listeners not up after {timeout:?}")))??;
    let handle = HostHandle { commands: commands_tx, listen_addrs: event_loop.listen_addrs.clone() };
    let task = tokio::spawn(event_loop.run(stop));
    Ok((handle, task))
}

fn build_swarm(identity: &Identity) -> Result<Swarm<Behaviour>> {
    let transport_error =
        |e: &dyn std::fmt::Display| Error::new(ErrorKind::Internal, format!("building transport: {e}"));
    Ok(libp2p::SwarmBuilder::with_existing_identity(identity.keypair().clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| transport_error(&e))?
        .with_behaviour(|key| Behaviour::new(key.public()))
        .map_err(|e| transport_error(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build())
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    /// Outgoing connections whose caller waits for the peer's identify info.
    connecting: HashMap<ConnectionId, oneshot::Sender<Result<PeerInfo>>>,
}

impl EventLoop {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                _ = &mut stop => break,
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
        tracing::debug!("swarm task stopped");
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
            SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                if let Some(reply) = self.connecting.remove(&connection_id) {
                    let _ = reply.send(Err(Error::with_source(ErrorKind::Network, "dial failed", error)));
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, cause, .. } => {
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
