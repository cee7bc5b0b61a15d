//! `kwaai.Node`: a running node.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::dht::ValueWithExpiration;

use crate::error::to_py;

/// A running kwaai node. It owns its own threads; use it as a context manager or call
/// `shutdown()` when done.
#[pyclass(module = "kwaai", frozen)]
pub struct Node {
    pub(crate) inner: kwaai_core::Node,
}

#[pymethods]
impl Node {
    /// Starts a node listening on `listen_addrs` (default `/ip4/127.0.0.1/tcp/0`), with the
    /// identity in `identity_path` (created if missing) or a fresh one, joining the swarm through
    /// `initial_peers` (multiaddrs ending in `/p2p/<peer id>`); `client_mode` DHT nodes only ask.
    #[staticmethod]
    #[pyo3(signature = (listen_addrs = None, identity_path = None, initial_peers = None, client_mode = false))]
    fn start(
        py: Python<'_>,
        listen_addrs: Option<Vec<String>>,
        identity_path: Option<PathBuf>,
        initial_peers: Option<Vec<String>>,
        client_mode: bool,
    ) -> PyResult<Self> {
        let config = kwaai_core::NodeConfig {
            listen_addrs: listen_addrs.unwrap_or_default(),
            identity_path,
            initial_peers: initial_peers.unwrap_or_default(),
            dht: kwaai_core::dht::DhtConfig { client_mode, ..kwaai_core::dht::DhtConfig::default() },
            ..kwaai_core::NodeConfig::default()
        };
        let inner = py.allow_threads(|| kwaai_core::Node::start(config)).map_err(to_py)?;
        Ok(Node { inner })
    }

    /// The node's peer ID in base58.
    #[getter]
    fn peer_id(&self) -> String {
        self.inner.peer_id().to_base58()
    }

    /// The multiaddrs the node listens on, each ending in `/p2p/<peer id>`.
    #[getter]
    fn listen_addrs(&self) -> Vec<String> {
        self.inner.listen_addrs().iter().map(ToString::to_string).collect()
    }

    /// Whether the node is still running.
    #[getter]
    fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Pushes `tensor` (a numpy array or torch tensor in its own dtype, or a list as float32)
    /// under `name` to the peer `peer_id` and waits until its handler took it. `compression`:
    /// "none", "float16", "meanstd_16bit", "quantile_8bit", "uniform_8bit", "blockwise_8bit", or
    /// with error feedback per (peer, name) "blockwise_8bit_feedback" and "topk" (sends the `k`
    /// largest entries).
    #[pyo3(signature = (peer_id, name, tensor, compression = "none", k = None, timeout = 60.0))]
    #[allow(clippy::too_many_arguments)] // the Python signature, keywords with defaults
    fn push_tensor(
        &self,
        py: Python<'_>,
        peer_id: &str,
        name: &str,
        tensor: &Bound<'_, PyAny>,
        compression: &str,
        k: Option<usize>,
        timeout: f64,
    ) -> PyResult<()> {
        let compression = kwaai_core::Compression::from_name(compression, k).map_err(to_py)?;
        crate::exchange::push(py, &self.inner, peer_id, name, tensor, compression, timeout)
    }

    /// Calls `handler(peer_id, name, array)` on a library thread for each tensor pushed to this
    /// node, the array of `kind` ("numpy", "torch" or "list") in the dtype it was sent in
    /// (bfloat16 becomes float32 outside torch); an exception it raises is returned to the sender.
    /// Replaces an earlier handler.
    #[pyo3(signature = (handler, kind = "numpy"))]
    fn set_tensor_handler(&self, py: Python<'_>, handler: PyObject, kind: &str) -> PyResult<()> {
        crate::exchange::set_handler(py, &self.inner, handler, kind.to_owned())
    }

    /// Stops receiving pushed tensors; True if a handler was set.
    fn clear_tensor_handler(&self, py: Python<'_>) -> PyResult<bool> {
        py.allow_threads(|| self.inner.clear_tensor_handler()).map_err(to_py)
    }

    /// Stops the node; calling it again does nothing.
    fn shutdown(&self, py: Python<'_>) {
        py.allow_threads(|| self.inner.shutdown());
    }

    /// Stores `value` under `key` (and `subkey`) in the DHT until `expiration_time` (Unix
    /// seconds); True if a replica accepted it. Like hivemind's `DHT.store`.
    #[pyo3(signature = (key, value, expiration_time, subkey = None))]
    fn store(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        expiration_time: f64,
        subkey: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let items = crate::dht::store_items(
            std::slice::from_ref(key),
            std::slice::from_ref(value),
            &[expiration_time],
            subkey.map(std::slice::from_ref),
        )?;
        let ok = py.allow_threads(|| self.inner.dht_store_many(items)).map_err(to_py)?;
        Ok(ok[0])
    }

    /// Stores many items; `expiration_time` is one float or one per key. Returns one bool each.
    #[pyo3(signature = (keys, values, expiration_time, subkeys = None))]
    fn store_many(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        values: Vec<Bound<'_, PyAny>>,
        expiration_time: &Bound<'_, PyAny>,
        subkeys: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<Vec<bool>> {
        let expirations: Vec<f64> = match expiration_time.extract::<f64>() {
            Ok(one) => vec![one],
            Err(_) => expiration_time.extract()?,
        };
        let items = crate::dht::store_items(&keys, &values, &expirations, subkeys.as_deref())?;
        py.allow_threads(|| self.inner.dht_store_many(items)).map_err(to_py)
    }

    /// Reads `key` from the DHT: a `ValueWithExpiration`, or None. With `latest`, searches the
    /// whole swarm for the newest value. Like hivemind's `DHT.get`.
    #[pyo3(signature = (key, latest = false))]
    fn get(&self, py: Python<'_>, key: &Bound<'_, PyAny>, latest: bool) -> PyResult<Option<ValueWithExpiration>> {
        let key = crate::value::to_value(key)?;
        let found = py.allow_threads(|| self.inner.dht_get(key, latest)).map_err(to_py)?;
        crate::dht::to_python_result(py, found)
    }

    /// Reads several keys; returns `{key: ValueWithExpiration or None}`.
    #[pyo3(signature = (keys, latest = false))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'py, PyAny>>,
        latest: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let values = keys.iter().map(crate::value::to_value).collect::<PyResult<Vec<_>>>()?;
        let found = py.allow_threads(|| self.inner.dht_get_many(values, latest)).map_err(to_py)?;
        let out = PyDict::new(py);
        for (key, found) in keys.iter().zip(found) {
            out.set_item(key, crate::dht::to_python_result(py, found)?)?;
        }
        Ok(out)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.shutdown(py);
        false
    }

    fn __repr__(&self) -> String {
        format!("<kwaai.Node {} running={}>", self.inner.peer_id(), self.inner.is_running())
    }
}
