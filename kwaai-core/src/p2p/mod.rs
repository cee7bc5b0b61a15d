//! The libp2p host: TCP + Noise + yamux, identify and ping, as p2pd peers speak them.
//!
//! The swarm runs as one task on the node's runtime; the rest of the library talks to it through
//! [`HostHandle`] commands. Hivemind RPC, Kademlia peer routing and relays join this module in
//! later steps.

mod behaviour;
mod host;

pub use host::PeerInfo;
pub(crate) use host::{start_host, HostHandle};
