//! Configuration of a [`crate::Node`].

use std::path::PathBuf;
use std::time::Duration;

use crate::dht::DhtConfig;
use crate::p2p::Security;

/// Where hivemind listens by default: loopback, an OS-chosen TCP port.
pub const DEFAULT_LISTEN_ADDR: &str = "/ip4/127.0.0.1/tcp/0";

/// How a node starts: its identity and where it listens.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/127.0.0.1/tcp/0`. Empty means [`DEFAULT_LISTEN_ADDR`].
    /// `/udp/N/quic-v1` and `/udp/N/quic` (draft-29, the only QUIC that hivemind's Python side can
    /// parse) listen on QUIC. Browsers can dial `/tcp/N/ws` and `/udp/N/webrtc-direct` listeners
    /// (the latter's `/certhash/...` changes on every start); a node with either forwards their
    /// calls. A node does not dial WebRTC-direct itself: native peers reach it over TCP.
    pub listen_addrs: Vec<String>,
    /// A libp2p private-key file (hivemind's format: a protobuf `PrivateKey`). When the file is
    /// missing a fresh Ed25519 key is written there (mode 0400); when `None` the node gets a fresh
    /// key on every start, as hivemind does.
    pub identity_path: Option<PathBuf>,
    /// Peers to join the swarm through: multiaddrs ending in `/p2p/<peer id>` (hivemind's
    /// `initial_peers`). Empty starts a new swarm.
    pub initial_peers: Vec<String>,
    /// DHT settings (client mode, bucket size, timeouts, ...).
    pub dht: DhtConfig,
    /// Worker threads of the node's tokio runtime; `None` picks `min(available cores, 4)`.
    pub worker_threads: Option<usize>,
    /// How long [`crate::Node::start`] waits for every listener to come up.
    pub start_timeout: Duration,
    /// How long a connection stays open after its last call ended (p2pd keeps 30 s).
    pub idle_connection_timeout: Duration,
    /// The security protocols of TCP and WebSocket connections, in the order we propose them when
    /// dialing (a listener takes the first it speaks). p2pd speaks both. QUIC always runs TLS. The
    /// default is [`Security::default_order`].
    pub security: Vec<Security>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen_addrs: Vec::new(),
            identity_path: None,
            initial_peers: Vec::new(),
            dht: DhtConfig::default(),
            worker_threads: None,
            start_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(30),
            security: Security::default_order(),
        }
    }
}
