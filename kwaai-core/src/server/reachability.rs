//! Petals' reachability check (petals/server/reachability.py `ReachabilityProtocol`): a server
//! that joins the swarm asks peers to dial it back, to learn whether others can reach it directly.
//!
//! `rpc_check` takes a `PingRequest` whose `peer.node_id` holds the peer ID to check. Asked about
//! itself, a node answers `available = true`; asked about another peer, it calls that peer's
//! `rpc_check` (about itself) from a separate probe host, so the answer reflects a fresh dial
//! rather than the connection the request arrived on.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::config::NodeConfig;
use crate::dht::DhtConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;
use crate::p2p::Rpc;
use crate::wire::dht::{NodeInfo, PingRequest, PingResponse};
use crate::PeerId;

/// The handle name of `rpc_check`.
pub const RPC_CHECK: &str = "ReachabilityProtocol.rpc_check";

/// How long checking another peer may take (Petals waits twice its 5 s probe timeout).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `rpc_check` for a node; dropping it removes the handler and stops the probe host.
pub struct Reachability {
    rpc: Rpc,
    probe: Arc<Node>,
}

impl std::fmt::Debug for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reachability").field("probe", &self.probe.peer_id()).finish()
    }
}

/// Starts the probe host (a client-mode node on 127.0.0.1 that joins through `node`) and serves
/// `rpc_check` on `node`.
pub fn serve_reachability(node: &Node) -> Result<Reachability> {
    let initial_peers = node.listen_addrs().iter().map(ToString::to_string).collect();
    let probe = Arc::new(Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers,
        dht: DhtConfig { client_mode: true, ..DhtConfig::default() },
        worker_threads: Some(1),
        ..NodeConfig::default()
    })?);
    let own = node.peer_id();
    let probe_rpc = probe.rpc()?;
    node.add_unary_handler(RPC_CHECK, move |caller, request| {
        let probe_rpc = probe_rpc.clone();
        async move {
            let request = PingRequest::decode(request.as_slice())
                .map_err(|e| Error::with_source(ErrorKind::Protocol, "decoding an rpc_check request", e))?;
            let node_id = request.peer.map(|p| p.node_id).unwrap_or_default();
            let check = PeerId::from_bytes(&node_id)
                .map_err(|e| Error::invalid_argument(format!("rpc_check names no peer ID: {e}")))?;
            let available = check == own || dials_back(&probe_rpc, check).await;
            if check != own {
                tracing::info!(%caller, %check, available, "reachability.rpc_check");
            }
            Ok(PingResponse { available, ..PingResponse::default() }.encode_to_vec())
        }
    })?;
    Ok(Reachability { rpc: node.rpc()?, probe })
}

/// Whether `peer` answers, from the probe host, that it is available.
async fn dials_back(probe: &Rpc, peer: PeerId) -> bool {
    let request = PingRequest { peer: Some(NodeInfo { node_id: peer.to_bytes() }), ..PingRequest::default() };
    match probe.call_unary(peer, RPC_CHECK, request.encode_to_vec(), CHECK_TIMEOUT).await {
        Ok(reply) => PingResponse::decode(reply.as_slice()).is_ok_and(|r| r.available),
        Err(e) => {
            tracing::debug!(%peer, "reachability probe failed: {e}");
            false
        }
    }
}

impl Drop for Reachability {
    fn drop(&mut self) {
        self.rpc.remove_handler(RPC_CHECK);
        self.probe.shutdown();
    }
}
