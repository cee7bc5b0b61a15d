//! `Node`: a running node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kwaai_core::dht::DhtConfig;

use crate::error::KwaaiError;

/// How to start a node.
#[derive(uniffi::Record, Default)]
pub struct NodeConfig {
    /// Multiaddrs to listen on; empty means `/ip4/127.0.0.1/tcp/0`.
    #[uniffi(default = [])]
    pub listen_addrs: Vec<String>,
    /// Identity file (hivemind's format), created if missing; none means a fresh identity.
    #[uniffi(default = None)]
    pub identity_path: Option<String>,
    /// Peers to join the swarm through: multiaddrs ending in `/p2p/<peer id>`.
    #[uniffi(default = [])]
    pub initial_peers: Vec<String>,
    /// Ask the DHT without serving it.
    #[uniffi(default = false)]
    pub client_mode: bool,
}

/// A running kwaai node. Its methods block: call them off the main/UI thread.
#[derive(uniffi::Object)]
pub struct Node {
    inner: kwaai_core::Node,
}

#[uniffi::export]
impl Node {
    /// Starts a node; returns once it listens.
    #[uniffi::constructor]
    pub fn start(config: NodeConfig) -> Result<Arc<Self>, KwaaiError> {
        let inner = kwaai_core::Node::start(kwaai_core::NodeConfig {
            listen_addrs: config.listen_addrs,
            identity_path: config.identity_path.map(PathBuf::from),
            initial_peers: config.initial_peers,
            dht: DhtConfig { client_mode: config.client_mode, ..DhtConfig::default() },
            ..kwaai_core::NodeConfig::default()
        })?;
        Ok(Arc::new(Node { inner }))
    }

    /// The node's peer ID in base58.
    pub fn peer_id(&self) -> String {
        self.inner.peer_id().to_base58()
    }

    /// The multiaddrs the node listens on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<String> {
        self.inner.listen_addrs().iter().map(ToString::to_string).collect()
    }

    /// Whether the node is still running.
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Connects to the peer at multiaddr `addr` (ending in `/p2p/<peer id>`) within `timeout_ms`.
    #[uniffi::method(default(timeout_ms = 20000))]
    pub fn connect(&self, addr: String, timeout_ms: u64) -> Result<(), KwaaiError> {
        self.inner.connect(&addr, Duration::from_millis(timeout_ms))?;
        Ok(())
    }

    /// Stops the node; calling it again does nothing.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Node {
    pub(crate) fn core(&self) -> &kwaai_core::Node {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_errors_through_the_uniffi_surface() {
        let node = Node::start(NodeConfig::default()).unwrap();
        assert!(node.listen_addrs()[0].ends_with(&format!("/p2p/{}", node.peer_id())));
        node.shutdown();
        assert!(!node.is_running());
        let bad = NodeConfig { listen_addrs: vec!["nope".into()], ..NodeConfig::default() };
        assert!(matches!(Node::start(bad), Err(KwaaiError::InvalidArgument { .. })));
    }
}
