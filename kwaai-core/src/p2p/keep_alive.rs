//! Keeps a connection open while RPC streams run on it, and restarts its idle timer after each.
//!
//! RPC streams bypass the swarm's stream accounting (see [`super::muxer`]). Without this the
//! swarm would close a connection that only carries a long streaming call once its idle timeout
//! passes, and would count that timeout from the connection's first idle moment however many
//! short calls came after it. The handler asks [`Connections`] about the peer's RPC streams: while
//! one is open it keeps the connection alive; when any opened or closed since it last looked it
//! keeps it alive once more and has itself polled again at once, which starts a fresh idle timer.

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::muxer::Connections;

/// The behaviour: one [`KeepAliveHandler`] per connection, no events.
pub(crate) struct KeepAlive {
    rpc: Arc<super::rpc::RpcShared>,
}

impl KeepAlive {
    pub fn new(rpc: Arc<super::rpc::RpcShared>) -> Self {
        KeepAlive { rpc }
    }

    fn handler(&self, peer: PeerId) -> KeepAliveHandler {
        KeepAliveHandler {
            peer,
            rpc: self.rpc.clone(),
            seen_changes: Cell::new(0),
            connection_task: AtomicWaker::new(),
        }
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

/// Says "keep alive" while the peer has RPC streams open, and once after each change.
pub(crate) struct KeepAliveHandler {
    peer: PeerId,
    rpc: Arc<super::rpc::RpcShared>,
    /// The peer's stream changes when this handler last answered.
    seen_changes: Cell<u64>,
    /// The connection task, registered by `poll`, to have the answer asked again.
    connection_task: AtomicWaker,
}

impl KeepAliveHandler {
    fn connections(&self) -> &Connections {
        &self.rpc.connections
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
        let activity = self.connections().activity(&self.peer);
        if activity.open {
            return true;
        }
        if self.seen_changes.replace(activity.changes) != activity.changes {
            // The swarm restarts its idle timer on a "yes" followed by a "no": ask for the "no" now.
            self.connection_task.wake();
            return true;
        }
        false
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        self.connection_task.register(cx.waker());
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade, (), ()>) {}
}
