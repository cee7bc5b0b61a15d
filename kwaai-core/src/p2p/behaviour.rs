//! The composed `NetworkBehaviour` of a kwaai node.

use libp2p::identity::PublicKey;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, ping};

/// What p2pd announces as its identify protocol version; we announce the same.
pub(crate) const IDENTIFY_PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// One behaviour per concern, composed by the derive macro.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

impl Behaviour {
    pub fn new(public_key: PublicKey) -> Self {
        let agent = format!("kwaai/{}", crate::VERSION);
        Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), public_key).with_agent_version(agent),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
        }
    }
}
