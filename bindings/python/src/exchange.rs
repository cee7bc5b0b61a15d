//! Pushed tensors for `kwaai.Node`: `push_tensor` and the handler of received tensors. Numpy
//! arrays and torch tensors cross in their own dtype, lists as float32 (converted by
//! `kwaai._tensors`).

use std::time::Duration;

use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, Error, ErrorKind, PeerId};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{to_py, InvalidArgumentError};

/// Pushes `tensor` (anything `kwaai._tensors.to_wire` takes).
pub(crate) fn push(
    py: Python<'_>,
    node: &kwaai_core::Node,
    peer_id: &str,
    name: &str,
    tensor: &Bound<'_, PyAny>,
    compression: Compression,
    timeout: f64,
) -> PyResult<()> {
    let peer: PeerId = peer_id.parse().map_err(|e| InvalidArgumentError::new_err(format!("bad peer id: {e}")))?;
    let timeout = Duration::try_from_secs_f64(timeout).map_err(|e| InvalidArgumentError::new_err(e.to_string()))?;
    let (data, shape, dtype): (Vec<u8>, Vec<usize>, String) =
        py.import("kwaai._tensors")?.call_method1("to_wire", (tensor,))?.extract()?;
    let dtype = DType::from_name(&dtype).map_err(to_py)?;
    let tensor = Tensor::from_bytes(dtype, shape, &data).map_err(to_py)?;
    py.allow_threads(|| node.push_tensor(peer, name, &tensor, compression, timeout)).map_err(to_py)
}

/// Calls `handler(peer_id, name, array)` for each received tensor, the array in `kind` ("list",
/// "numpy" or "torch") and in the dtype it was sent in (see `kwaai._tensors.from_wire`); an
/// exception it raises is returned to the sender.
pub(crate) fn set_handler(py: Python<'_>, node: &kwaai_core::Node, handler: PyObject, kind: String) -> PyResult<()> {
    if !matches!(kind.as_str(), "list" | "numpy" | "torch") {
        return Err(InvalidArgumentError::new_err(format!("kind must be list, numpy or torch, not {kind:?}")));
    }
    py.allow_threads(|| {
        node.set_tensor_handler(DecodeLimits::default(), move |received| {
            let tensor = &received.tensor;
            Python::with_gil(|py| {
                let bytes = PyBytes::new(py, tensor.as_bytes());
                let array = py.import("kwaai._tensors")?.call_method1(
                    "from_wire",
                    (bytes, tensor.shape().to_vec(), tensor.dtype().name(), kind.as_str()),
                )?;
                handler.call1(py, (received.peer.to_base58(), received.name, array))?;
                Ok::<_, PyErr>(())
            })
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("the tensor handler raised: {e}")))
        })
    })
    .map_err(to_py)
}
