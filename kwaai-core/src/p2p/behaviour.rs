//! The composed `NetworkBehaviour` of a kwaai node.

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::PublicKey;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, kad, ping, PeerId};

use super::keep_alive::KeepAlive;
use super::rpc::RpcShared;

/// What p2pd announces as its identify protocol version; we announce the same.
pub(crate) const IDENTIFY_PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// One behaviour per concern, composed by the derive macro.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<MemoryStore>,
    pub keep_alive: KeepAlive,
}

impl Behaviour {
    pub fn new(public_key: PublicKey, rpc: Arc<RpcShared>, idle_timeout: Duration) -> Self {
        let agent = format!("kwaai/{}", crate::VERSION);
        let peer_id = PeerId::from_public_key(&public_key);
        // p2pd runs kad as a server under the IPFS protocol ID; Go peers admit us to their routing
        // tables only if identify lists `/ipfs/kad/1.0.0`, which server mode does.
        // The periodic bootstrap is ours (see `KAD_REFRESH_INTERVAL`): kad's own warns every
        // 5 minutes on a lone node that it has no known peers.
        let mut config = kad::Config::new(kad::PROTOCOL_NAME);
        config.set_periodic_bootstrap_interval(None);
        let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), config);
        kad.set_mode(Some(kad::Mode::Server));
        Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), public_key).with_agent_version(agent),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            keep_alive: KeepAlive::new(rpc, idle_timeout),
        }
    }
}
