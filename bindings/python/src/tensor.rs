//! Float tensors across the boundary: little-endian float32 bytes plus a shape. The Python layer
//! turns lists, numpy arrays and torch tensors into that form and back.

use candle_core::{DType, Device, Tensor};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::InvalidArgumentError;

/// A tensor from float32 bytes and its shape.
pub(crate) fn from_bytes(data: &[u8], shape: &[usize]) -> PyResult<Tensor> {
    let count: usize = shape.iter().product();
    if data.len() != count * 4 {
        return Err(InvalidArgumentError::new_err(format!(
            "{} bytes do not hold a float32 tensor of shape {shape:?}",
            data.len()
        )));
    }
    let values: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| InvalidArgumentError::new_err(e.to_string()))
}

/// Float32 bytes and the shape of `tensor`.
pub(crate) fn to_bytes<'py>(py: Python<'py>, tensor: &Tensor) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
    let values = tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| crate::error::to_py(e.into()))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((PyBytes::new(py, &bytes), tensor.dims().to_vec()))
}
