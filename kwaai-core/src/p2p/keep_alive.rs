//! Decides when an idle connection closes: an idle timeout after its last stream ended.
//!
//! RPC streams bypass the swarm's stream accounting (see [`super::muxer`]), and the swarm's own
//! idle timer would restart (a timer armed and dropped) on every call. So the swarm runs with an
//! idle timeout of zero, closing a connection as soon as no handler keeps it, and this handler
//! keeps it while the peer has an RPC stream open or a stream ended less than
//! [`crate::NodeConfig::idle_connection_timeout`] ago. A call costs it nothing: its timer wakes the
//! connection only when the idle timeout it last saw runs out, and then looks again.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Sleep;

use super::muxer::Connections;

/// Shortest wait between two looks at a connection's idleness.
const MIN_RECHECK: Duration = Duration::from_millis(100);

/// The behaviour: one [`KeepAliveHandler`] per connection, no events.
pub(crate) struct KeepAlive {
    rpc: Arc<super::rpc::RpcShared>,
    idle_timeout: Duration,
}

impl KeepAlive {
    pub fn new(rpc: Arc<super::rpc::RpcShared>, idle_timeout: Duration) -> Self {
        KeepAlive { rpc, idle_timeout }
    }

    fn handler(&self, peer: PeerId) -> KeepAliveHandler {
        KeepAliveHandler { peer, rpc: self.rpc.clone(), idle_timeout: self.idle_timeout, timer: None }
    }
}

impl NetworkBehaviour for KeepAlive {
    type ConnectionHandler = KeepAliveHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Says "keep alive" while the peer has RPC streams open or used a stream recently.
pub(crate) struct KeepAliveHandler {
    peer: PeerId,
    rpc: Arc<super::rpc::RpcShared>,
    idle_timeout: Duration,
    /// Wakes the connection task when the idle timeout it last saw runs out (made on first poll,
    /// inside the runtime).
    timer: Option<Pin<Box<Sleep>>>,
}

impl KeepAliveHandler {
    fn connections(&self) -> &Connections {
        &self.rpc.connections
    }

    /// When the connection becomes idle if nothing happens meanwhile; `None` while a call runs.
    fn idle_at(&self) -> Option<Instant> {
        let activity = self.connections().activity(&self.peer);
        (!activity.open).then(|| activity.last_active + self.idle_timeout)
    }

    /// When to look again: at the idle deadline, or a timeout from now if it passed or a call runs
    /// (someone else may be keeping the connection).
    fn next_look(&self) -> Instant {
        let now = Instant::now();
        match self.idle_at() {
            Some(at) if at > now => at,
            _ => now + self.idle_timeout.max(MIN_RECHECK),
        }
    }
}

impl ConnectionHandler for KeepAliveHandler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade, ()> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.idle_at().is_none_or(|at| Instant::now() < at)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        let mut timer = match self.timer.take() {
            Some(timer) => timer,
            None => Box::pin(tokio::time::sleep_until(self.next_look().into())),
        };
        // The swarm asks `connection_keep_alive` after this poll, and closes if it says no.
        while timer.as_mut().poll(cx).is_ready() {
            timer.as_mut().reset(self.next_look().into());
        }
        self.timer = Some(timer);
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade, (), ()>) {}
}
