//! `kwaai.Node`: a running node.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::error::to_py;

/// A running kwaai node. It owns its own threads; use it as a context manager or call
/// `shutdown()` when done.
#[pyclass(module = "kwaai", frozen)]
pub struct Node {
    inner: kwaai_core::Node,
}

#[pymethods]
impl Node {
    /// Starts a node listening on `listen_addrs` (default `/ip4/127.0.0.1/tcp/0`), with the
    /// identity in `identity_path` (created if missing) or a fresh one.
    #[staticmethod]
    #[pyo3(signature = (listen_addrs = None, identity_path = None))]
    fn start(py: Python<'_>, listen_addrs: Option<Vec<String>>, identity_path: Option<PathBuf>) -> PyResult<Self> {
        let config = kwaai_core::NodeConfig {
            listen_addrs: listen_addrs.unwrap_or_default(),
            identity_path,
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

    /// Stops the node; calling it again does nothing.
    fn shutdown(&self, py: Python<'_>) {
        py.allow_threads(|| self.inner.shutdown());
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
