//! The node facade: owns the tokio runtime and the services running on it.

use std::sync::Mutex;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rmpv::Value;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{NodeConfig, DEFAULT_LISTEN_ADDR};
use crate::dht::{Dht, DhtTime, DhtValue, StoreItem};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::Identity;
use crate::p2p::{start_host, HostHandle, PeerInfo, RequestStream, Rpc, RpcLimits};

/// How long `shutdown` waits for in-flight work before dropping it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running kwaai node.
///
/// The node owns its own tokio runtime, so it can be used from plain threads and from any host
/// language. Its methods block the calling thread; do not call them from inside an async runtime.
/// Dropping the node shuts it down.
pub struct Node {
    peer_id: PeerId,
    running: Mutex<Option<Running>>,
}

struct Running {
    runtime: Runtime,
    host: HostHandle,
    dht: Dht,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Node {
    /// Starts a node: loads or creates its identity, starts its runtime and listeners, and returns
    /// once every listen address is bound.
    pub fn start(config: NodeConfig) -> Result<Node> {
        let listen = parse_listen_addrs(&config.listen_addrs)?;
        let initial_peers = parse_initial_peers(&config.initial_peers)?;
        let identity = match &config.identity_path {
            Some(path) => Identity::load_or_create(path)?,
            None => Identity::generate(),
        };
        let workers =
            config.worker_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(4)));
        if workers == 0 {
            return Err(Error::invalid_argument("worker_threads must be at least 1"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("kwaai-node")
            .enable_all()
            .build()
            .map_err(|e| Error::with_source(ErrorKind::Io, "starting the node runtime", e))?;
        let (stop, stopped) = oneshot::channel();
        let started = runtime.block_on(async {
            let (host, task) = start_host(&identity, &listen, &config, stopped).await?;
            match Dht::start(config.dht.clone(), host.rpc().clone(), &host, &initial_peers).await {
                Ok(dht) => Ok((host, task, dht)),
                Err(e) => {
                    task.abort();
                    Err(e)
                }
            }
        });
        let (host, task, dht) = match started {
            Ok(started) => started,
            Err(e) => {
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
                return Err(e);
            }
        };
        let peer_id = identity.peer_id();
        tracing::info!(%peer_id, dht_node_id = %dht.node_id(), "node started");
        Ok(Node { peer_id, running: Mutex::new(Some(Running { runtime, host, dht, stop, task })) })
    }

    /// The node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>` so that other peers can
    /// use them as initial peers. Empty after shutdown.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let Some(host) = self.host() else { return Vec::new() };
        host.listen_addrs().into_iter().map(|addr| addr.with_p2p(self.peer_id).unwrap_or_else(|addr| addr)).collect()
    }

    /// Whether the node is still running.
    pub fn is_running(&self) -> bool {
        self.host().is_some()
    }

    /// Connects to the peer at `addr` (a multiaddr, usually ending in `/p2p/<peer id>`) and returns
    /// what it says about itself.
    pub fn connect(&self, addr: &str, timeout: Duration) -> Result<PeerInfo> {
        let addr = parse_multiaddr(addr)?;
        let (host, runtime) = {
            let running = self.lock();
            let running = running.as_ref().ok_or_else(closed)?;
            (running.host.clone(), running.runtime.handle().clone())
        };
        runtime.block_on(async {
            tokio::time::timeout(timeout, host.connect(addr.clone()))
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, format!("connecting to {addr} took over {timeout:?}")))?
        })
    }

    /// The RPC layer, for async use: register handlers, call peers (see [`Rpc`]).
    pub fn rpc(&self) -> Result<Rpc> {
        Ok(self.host().ok_or_else(closed)?.rpc().clone())
    }

    /// The node's tokio runtime. Async work spawned on it (calls through [`Node::rpc`], say) runs
    /// beside the node's own tasks, without a hand-off between threads on every call.
    pub fn runtime(&self) -> Result<tokio::runtime::Handle> {
        Ok(self.rpc_and_runtime()?.1)
    }

    /// Registers a unary hivemind handler under `name` (e.g. `DHTProtocol.rpc_ping`, no leading
    /// slash): it gets the caller's peer ID and serialized request and returns the serialized
    /// reply, or an error whose message the caller receives. It runs on the node's runtime.
    pub fn add_unary_handler<F, Fut>(&self, name: &str, handler: F) -> Result<()>
    where
        F: Fn(PeerId, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<u8>>> + Send + 'static,
    {
        self.rpc()?.add_unary_handler(name, handler)
    }

    /// Registers a streaming hivemind handler under `name`: it gets the caller's requests as a
    /// stream and returns a stream of replies; an `Err` item ends the call with its message.
    pub fn add_stream_handler<F, S>(&self, name: &str, handler: F) -> Result<()>
    where
        F: Fn(PeerId, RequestStream) -> S + Send + Sync + 'static,
        S: futures::Stream<Item = Result<Vec<u8>>> + Send + 'static,
    {
        self.rpc()?.add_stream_handler(name, handler)
    }

    /// Removes the handler `name`; returns whether there was one.
    pub fn remove_handler(&self, name: &str) -> Result<bool> {
        Ok(self.rpc()?.remove_handler(name))
    }

    /// Sets the RPC size limits and handler timeout.
    pub fn set_rpc_limits(&self, limits: RpcLimits) -> Result<()> {
        self.rpc()?.set_limits(limits);
        Ok(())
    }

    /// Calls `peer`'s unary handler `name` and returns its serialized reply. The peer is dialed if
    /// needed (its addresses come from Kademlia). A handler error arrives as an
    /// [`ErrorKind::Protocol`] error carrying the handler's message.
    pub fn call_unary(&self, peer: PeerId, name: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let (rpc, runtime) = self.rpc_and_runtime()?;
        runtime.block_on(rpc.call_unary(peer, name, request.to_vec(), timeout))
    }

    /// Calls `peer`'s streaming handler `name` with `requests` and collects every reply.
    /// `timeout` bounds opening the call and each wait for a reply.
    pub fn call_stream(
        &self,
        peer: PeerId,
        name: &str,
        requests: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>> {
        use futures::StreamExt;
        let (rpc, runtime) = self.rpc_and_runtime()?;
        runtime.block_on(async {
            let mut replies = rpc.call_stream(peer, name, futures::stream::iter(requests), timeout).await?;
            let mut out = Vec::new();
            while let Some(reply) = replies.next().await {
                out.push(reply?);
            }
            Ok(out)
        })
    }

    /// Connects to `peer` by its ID alone: known addresses first, else a Kademlia lookup through
    /// the peers we are connected to.
    pub fn dial_peer(&self, peer: PeerId, timeout: Duration) -> Result<()> {
        let (host, runtime) = {
            let running = self.lock();
            let running = running.as_ref().ok_or_else(closed)?;
            (running.host.clone(), running.runtime.handle().clone())
        };
        runtime.block_on(async {
            tokio::time::timeout(timeout, host.dial_peer(peer))
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, format!("reaching {peer} took over {timeout:?}")))?
        })
    }

    /// The node's DHT, for async use (see [`Dht`]).
    pub fn dht(&self) -> Result<Dht> {
        Ok(self.lock().as_ref().ok_or_else(closed)?.dht.clone())
    }

    /// Stores `value` under `key` (and `subkey`) in the DHT until `expiration` (Unix seconds);
    /// `true` if a replica accepted it. Blocks until the store is done.
    pub fn dht_store(&self, key: Value, subkey: Option<Value>, value: Value, expiration: DhtTime) -> Result<bool> {
        self.block_on_dht(|dht| async move { dht.store(key, subkey, value, expiration).await })
    }

    /// Stores several items in the DHT; one flag per item.
    pub fn dht_store_many(&self, items: Vec<StoreItem>) -> Result<Vec<bool>> {
        self.block_on_dht(|dht| async move { dht.store_many(items).await })
    }

    /// Reads `key` from the DHT (`latest`: search the whole swarm for the newest value).
    pub fn dht_get(&self, key: Value, latest: bool) -> Result<Option<DhtValue>> {
        self.block_on_dht(|dht| async move { dht.get(key, latest).await })
    }

    /// Reads several keys from the DHT; one result per key.
    pub fn dht_get_many(&self, keys: Vec<Value>, latest: bool) -> Result<Vec<Option<DhtValue>>> {
        self.block_on_dht(|dht| async move { dht.get_many(keys, latest).await })
    }

    fn block_on_dht<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Dht) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (dht, runtime) = {
            let running = self.lock();
            let running = running.as_ref().ok_or_else(closed)?;
            (running.dht.clone(), running.runtime.handle().clone())
        };
        runtime.block_on(f(dht))
    }

    /// A handle to the node's runtime, for services built on the node (the client).
    pub(crate) fn runtime_handle(&self) -> Result<tokio::runtime::Handle> {
        Ok(self.lock().as_ref().ok_or_else(closed)?.runtime.handle().clone())
    }

    fn rpc_and_runtime(&self) -> Result<(Rpc, tokio::runtime::Handle)> {
        let running = self.lock();
        let running = running.as_ref().ok_or_else(closed)?;
        Ok((running.host.rpc().clone(), running.runtime.handle().clone()))
    }

    /// Stops every service and the runtime. Idempotent: later calls do nothing.
    pub fn shutdown(&self) {
        let Some(running) = self.lock().take() else { return };
        let Running { runtime, host, dht, stop, task } = running;
        dht.stop();
        drop((host, dht));
        let _ = stop.send(());
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside an async context would panic: let the runtime wind down on its own.
            runtime.shutdown_background();
            return;
        }
        let _ = runtime.block_on(async { tokio::time::timeout(SHUTDOWN_GRACE, task).await });
        runtime.shutdown_timeout(SHUTDOWN_GRACE);
        tracing::info!(peer_id = %self.peer_id, "node stopped");
    }

    fn host(&self) -> Option<HostHandle> {
        self.lock().as_ref().map(|r| r.host.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        // A panic while holding the lock cannot leave `Running` half-updated: recover the guard.
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("peer_id", &self.peer_id).field("running", &self.is_running()).finish()
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the node is shut down")
}

fn parse_multiaddr(text: &str) -> Result<Multiaddr> {
    text.parse().map_err(|e| Error::with_source(ErrorKind::InvalidArgument, format!("bad multiaddr {text:?}"), e))
}

fn parse_initial_peers(addrs: &[String]) -> Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|text| {
            let addr = parse_multiaddr(text)?;
            if !addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(Error::invalid_argument(format!("initial peer {text:?} must end in /p2p/<peer id>")));
            }
            Ok(addr)
        })
        .collect()
}

fn parse_listen_addrs(addrs: &[String]) -> Result<Vec<Multiaddr>> {
    if addrs.is_empty() {
        return Ok(vec![DEFAULT_LISTEN_ADDR.parse().expect("the default listen address parses")]);
    }
    addrs
        .iter()
        .map(|text| {
            let addr = parse_multiaddr(text)?;
            if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(Error::invalid_argument(format!("listen address {text:?} must not contain /p2p/")));
            }
            Ok(addr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> NodeConfig {
        NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() }
    }

    #[test]
    fn starts_listens_on_loopback_and_shuts_down() {
        let node = Node::start(loopback()).unwrap();
        let addrs = node.listen_addrs();
        assert_eq!(addrs.len(), 1);
        let text = addrs[0].to_string();
        assert!(text.starts_with("/ip4/127.0.0.1/tcp/"), "{text}");
        assert!(text.ends_with(&format!("/p2p/{}", node.peer_id())), "{text}");
        assert!(!text.contains("/tcp/0/"), "port must be bound: {text}");
        node.shutdown();
        assert!(!node.is_running());
        assert!(node.listen_addrs().is_empty());
        node.shutdown();
        let err = node.connect(&text, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
    }

    #[test]
    fn bad_listen_addresses_are_invalid_arguments() {
        for bad in ["not a multiaddr", "/ip4/127.0.0.1/tcp/0/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"]
        {
            let config = NodeConfig { listen_addrs: vec![bad.into()], ..NodeConfig::default() };
            let err = Node::start(config).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        }
    }

    #[test]
    fn two_nodes_connect_and_identify_each_other() {
        let a = Node::start(loopback()).unwrap();
        let b = Node::start(loopback()).unwrap();
        let info = a.connect(&b.listen_addrs()[0].to_string(), Duration::from_secs(10)).unwrap();
        assert_eq!(info.peer_id, b.peer_id());
        assert!(info.agent_version.starts_with("kwaai/"), "{}", info.agent_version);
        assert!(info.protocols.iter().any(|p| p == "/ipfs/id/1.0.0"), "{:?}", info.protocols);
    }

    #[test]
    fn dialing_a_closed_port_is_a_network_error() {
        let a = Node::start(loopback()).unwrap();
        let b = Node::start(loopback()).unwrap();
        let addr = b.listen_addrs()[0].to_string();
        b.shutdown();
        let err = a.connect(&addr, Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    }

    #[test]
    fn same_identity_file_gives_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig { identity_path: Some(dir.path().join("id.key")), ..loopback() };
        let first = Node::start(config.clone()).unwrap().peer_id();
        let second = Node::start(config).unwrap().peer_id();
        assert_eq!(first, second);
    }
}
