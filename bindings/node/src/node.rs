//! `Node`: a running node.

use std::path::PathBuf;
use std::sync::Arc;

use napi::{Env, Task};
use napi_derive::napi;

use crate::error::to_js;

/// How to start a node.
#[napi(object)]
#[derive(Default)]
pub struct NodeConfig {
    /// Multiaddrs to listen on; default `["/ip4/127.0.0.1/tcp/0"]`.
    pub listen_addrs: Option<Vec<String>>,
    /// Identity file (hivemind's format), created if missing; default: a fresh identity.
    pub identity_path: Option<String>,
}

/// A running kwaai node. Call `shutdown()` when done.
#[napi]
pub struct Node {
    inner: Arc<kwaai_core::Node>,
}

#[napi]
impl Node {
    /// Starts a node; resolves once it listens.
    #[napi(ts_return_type = "Promise<Node>")]
    pub fn start(config: Option<NodeConfig>) -> napi::bindgen_prelude::AsyncTask<StartTask> {
        let config = config.unwrap_or_default();
        napi::bindgen_prelude::AsyncTask::new(StartTask {
            config: Some(kwaai_core::NodeConfig {
                listen_addrs: config.listen_addrs.unwrap_or_default(),
                identity_path: config.identity_path.map(PathBuf::from),
                ..kwaai_core::NodeConfig::default()
            }),
        })
    }

    /// The node's peer ID in base58.
    #[napi(getter)]
    pub fn peer_id(&self) -> String {
        self.inner.peer_id().to_base58()
    }

    /// The multiaddrs the node listens on, each ending in `/p2p/<peer id>`.
    #[napi(getter)]
    pub fn listen_addrs(&self) -> Vec<String> {
        self.inner.listen_addrs().iter().map(ToString::to_string).collect()
    }

    /// Whether the node is still running.
    #[napi(getter)]
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Stops the node; resolves when it is down. Calling it again does nothing.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&self) -> napi::bindgen_prelude::AsyncTask<ShutdownTask> {
        napi::bindgen_prelude::AsyncTask::new(ShutdownTask { node: self.inner.clone() })
    }
}

/// Starts a node on the thread pool.
pub struct StartTask {
    config: Option<kwaai_core::NodeConfig>,
}

impl Task for StartTask {
    type Output = Result<kwaai_core::Node, kwaai_core::Error>;
    type JsValue = Node;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let config = self.config.take().unwrap_or_default();
        Ok(kwaai_core::Node::start(config))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Node> {
        output.map(|node| Node { inner: Arc::new(node) }).map_err(|e| to_js(&env, &e))
    }
}

/// Shuts a node down on the thread pool.
pub struct ShutdownTask {
    node: Arc<kwaai_core::Node>,
}

impl Task for ShutdownTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.node.shutdown();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}
