//! `kwaai.Server` (native part): a span of a model's blocks served from a node.

use std::path::PathBuf;
use std::sync::Mutex;

use kwaai_core::server::{ServerConfig, Span};
use kwaai_core::tensor::DType;
use pyo3::prelude::*;

use crate::error::{to_py, InternalError};
use crate::node::Node;

/// A running Petals server on `node`; `shutdown()` announces it OFFLINE and ends its sessions.
#[pyclass(module = "kwaai", frozen, name = "NativeServer")]
pub struct Server {
    inner: Mutex<Option<kwaai_core::server::Server>>,
    span: (u32, u32),
    dht_prefix: String,
}

#[pymethods]
impl Server {
    /// Loads and serves blocks `block_indices` (`(start, end)`) of the model in `model_dir` under
    /// `dht_prefix`, announcing `throughput` requests per second (None: measured, as Petals'
    /// `auto`); with `num_blocks` instead, the blocks whose throughput in the swarm is lowest now.
    /// `torch_dtype` is `"auto"`, `"float32"` or `"bfloat16"`.
    #[staticmethod]
    #[pyo3(signature = (node, model_dir, block_indices = None, num_blocks = None, dht_prefix = None,
        throughput = None, torch_dtype = None, public_name = None, update_period = 60.0))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        py: Python<'_>,
        node: &Node,
        model_dir: PathBuf,
        block_indices: Option<(u32, u32)>,
        num_blocks: Option<u32>,
        dht_prefix: Option<String>,
        throughput: Option<f64>,
        torch_dtype: Option<String>,
        public_name: Option<String>,
        update_period: f64,
    ) -> PyResult<Self> {
        let block_indices = block_indices.map(|(start, end)| Span::new(start, end)).transpose().map_err(to_py)?;
        let torch_dtype = match torch_dtype.as_deref() {
            None | Some("auto") => None,
            Some(name) => Some(DType::from_name(name).map_err(to_py)?),
        };
        let update_period = std::time::Duration::try_from_secs_f64(update_period)
            .map_err(|_| crate::error::InvalidArgumentError::new_err("update_period must be a positive number"))?;
        let config = ServerConfig {
            model_dir,
            block_indices,
            num_blocks,
            dht_prefix,
            throughput,
            torch_dtype,
            public_name,
            update_period,
            ..ServerConfig::default()
        };
        let server = py.allow_threads(|| kwaai_core::server::Server::start(&node.inner, config)).map_err(to_py)?;
        let span = server.span();
        let dht_prefix = server.dht_prefix().to_owned();
        Ok(Server { inner: Mutex::new(Some(server)), span: (span.start, span.end), dht_prefix })
    }

    /// The blocks served, `(start, end)`.
    #[getter]
    fn block_indices(&self) -> (u32, u32) {
        self.span
    }

    /// The DHT prefix the blocks are announced under.
    #[getter]
    fn dht_prefix(&self) -> String {
        self.dht_prefix.clone()
    }

    /// Whether the server is still serving.
    #[getter]
    fn is_running(&self) -> PyResult<bool> {
        Ok(self.inner.lock().map_err(|_| InternalError::new_err("a server lock was poisoned"))?.is_some())
    }

    /// Announces OFFLINE, removes the handlers and ends the sessions; calling it again does nothing.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let server = self.inner.lock().map_err(|_| InternalError::new_err("a server lock was poisoned"))?.take();
        if let Some(mut server) = server {
            py.allow_threads(|| server.shutdown());
        }
        Ok(())
    }
}
