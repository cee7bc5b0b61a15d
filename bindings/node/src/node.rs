//! `Node`: a running node.

use std::path::PathBuf;
use std::sync::Arc;

use kwaai_core::dht::StoreItem;
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, JsObject, JsUnknown, Task};
use napi_derive::napi;

use crate::dht::{GetTask, StoreTask};
use crate::error::to_js;
use crate::value::to_value;

/// How to start a node.
#[napi(object)]
#[derive(Default)]
pub struct NodeConfig {
    /// Multiaddrs to listen on; default `["/ip4/127.0.0.1/tcp/0"]`.
    pub listen_addrs: Option<Vec<String>>,
    /// Identity file (hivemind's format), created if missing; default: a fresh identity.
    pub identity_path: Option<String>,
    /// Peers to join the swarm through: multiaddrs ending in `/p2p/<peer id>`.
    pub initial_peers: Option<Vec<String>>,
    /// Run the DHT in client mode (ask, do not serve).
    pub client_mode: Option<bool>,
}

/// A running kwaai node. Call `shutdown()` when done.
#[napi]
pub struct Node {
    inner: Arc<kwaai_core::Node>,
}

impl Node {
    pub(crate) fn core(&self) -> Arc<kwaai_core::Node> {
        Arc::clone(&self.inner)
    }
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
                initial_peers: config.initial_peers.unwrap_or_default(),
                dht: kwaai_core::dht::DhtConfig {
                    client_mode: config.client_mode.unwrap_or(false),
                    ..kwaai_core::dht::DhtConfig::default()
                },
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

    /// Stores `value` under `key` (and `subkey`) in the DHT until `expiration` (Unix seconds);
    /// resolves to whether a replica accepted it.
    #[napi(
        ts_args_type = "key: unknown, value: unknown, expiration: number, subkey?: unknown",
        ts_return_type = "Promise<boolean>"
    )]
    pub fn dht_store(
        &self,
        key: JsUnknown,
        value: JsUnknown,
        expiration: f64,
        subkey: Option<JsUnknown>,
    ) -> napi::Result<AsyncTask<StoreTask>> {
        let subkey = match subkey {
            Some(s) => match to_value(s)? {
                rmpv::Value::Nil => None,
                s => Some(s),
            },
            None => None,
        };
        let item = StoreItem { key: to_value(key)?, subkey, value: to_value(value)?, expiration };
        Ok(AsyncTask::new(StoreTask { node: self.inner.clone(), items: vec![item], single: true }))
    }

    /// Stores several `{ key, value, expiration, subkey? }` items; resolves to one boolean each.
    #[napi(
        ts_args_type = "items: Array<{ key: unknown, value: unknown, expiration: number, subkey?: unknown }>",
        ts_return_type = "Promise<boolean[]>"
    )]
    pub fn dht_store_many(&self, items: Vec<JsObject>) -> napi::Result<AsyncTask<StoreTask>> {
        let items = items
            .into_iter()
            .map(|item| {
                let subkey = match to_value(item.get_named_property::<JsUnknown>("subkey")?)? {
                    rmpv::Value::Nil => None,
                    s => Some(s),
                };
                Ok(StoreItem {
                    key: to_value(item.get_named_property::<JsUnknown>("key")?)?,
                    subkey,
                    value: to_value(item.get_named_property::<JsUnknown>("value")?)?,
                    expiration: item.get_named_property::<f64>("expiration")?,
                })
            })
            .collect::<napi::Result<Vec<_>>>()?;
        Ok(AsyncTask::new(StoreTask { node: self.inner.clone(), items, single: false }))
    }

    /// Reads `key` from the DHT: `null`, `{ value, expiration }`, or for a dictionary
    /// `{ entries: [{ subkey, value, expiration }], expiration }`. `latest` searches the whole swarm.
    #[napi(
        ts_args_type = "key: unknown, latest?: boolean",
        ts_return_type = "Promise<{ value?: unknown, entries?: Array<{ subkey: unknown, value: unknown, expiration: number }>, expiration: number } | null>"
    )]
    pub fn dht_get(&self, key: JsUnknown, latest: Option<bool>) -> napi::Result<AsyncTask<GetTask>> {
        let keys = vec![to_value(key)?];
        Ok(AsyncTask::new(GetTask { node: self.inner.clone(), keys, latest: latest.unwrap_or(false), single: true }))
    }

    /// Reads several keys; resolves to one result (or `null`) per key.
    #[napi(
        ts_args_type = "keys: unknown[], latest?: boolean",
        ts_return_type = "Promise<Array<{ value?: unknown, entries?: Array<{ subkey: unknown, value: unknown, expiration: number }>, expiration: number } | null>>"
    )]
    pub fn dht_get_many(&self, keys: Vec<JsUnknown>, latest: Option<bool>) -> napi::Result<AsyncTask<GetTask>> {
        let keys = keys.into_iter().map(to_value).collect::<napi::Result<Vec<_>>>()?;
        Ok(AsyncTask::new(GetTask { node: self.inner.clone(), keys, latest: latest.unwrap_or(false), single: false }))
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
