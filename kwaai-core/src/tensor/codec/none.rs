//! NONE: raw elements (hivemind/compression/base.py NoCompression).
//!
//! bfloat16 travels in two forms: 2-byte bit patterns (what Petals peers send, and what we send)
//! and float32 values labelled `bfloat16` (plain hivemind's legacy default). The receiver tells
//! them apart by `len / numel`.

use half::{bf16, slice::HalfFloatSliceExt};

use super::{Header, Result};
use crate::tensor::{DType, Data, Tensor, TensorView};

pub(super) fn encode(view: &TensorView<'_>) -> Vec<u8> {
    view.bytes().to_vec()
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    let numel = header.numel;
    if header.dtype == DType::BF16 && numel > 0 && buffer.len() / numel == 4 {
        header.expect_len(buffer, numel.checked_mul(4), "NONE (legacy bfloat16)")?;
        let legacy: Vec<f32> = bytemuck::pod_collect_to_vec(buffer);
        let mut out = vec![bf16::ZERO; numel];
        out.convert_from_f32_slice(&legacy);
        return Tensor::new(header.shape.clone(), Data::BF16(out));
    }
    header.expect_len(buffer, numel.checked_mul(header.dtype.size()), "NONE")?;
    Tensor::new(header.shape.clone(), Data::from_bytes(header.dtype, buffer)?)
}
