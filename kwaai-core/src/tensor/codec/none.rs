//! NONE: raw elements (hivemind/compression/base.py NoCompression).
//!
//! bfloat16 travels in two forms: 2-byte bit patterns (what Petals peers send, and what we send)
//! and float32 values labelled `bfloat16` (plain hivemind's legacy default). The receiver tells
//! them apart by `len / numel`.

use half::{bf16, slice::HalfFloatSliceExt};

use super::parallel::copy_to_vec;
use super::{Header, Result};
use crate::tensor::{DType, Data, Tensor, TensorView};

pub(super) fn encode(view: &TensorView<'_>, buf: &mut Vec<u8>) {
    if buf.capacity() >= view.bytes().len() {
        buf.extend_from_slice(view.bytes());
    } else {
        *buf = copy_to_vec(view.bytes());
    }
}

/// The buffer itself when its bytes are the elements as they are (every dtype but bool, whose
/// bytes are normalised, and bfloat16 sent as float32 values); `None` when they need converting.
pub(super) fn in_place<'a>(header: &Header, buffer: &'a [u8]) -> Result<Option<&'a [u8]>> {
    if header.dtype == DType::Bool || is_legacy_bfloat16(header, buffer) {
        return Ok(None);
    }
    header.expect_len(buffer, header.numel.checked_mul(header.dtype.size()), "NONE")?;
    Ok(Some(buffer))
}

/// Whether `buffer` holds bfloat16 elements as 4-byte float32 values.
fn is_legacy_bfloat16(header: &Header, buffer: &[u8]) -> bool {
    header.dtype == DType::BF16 && header.numel > 0 && buffer.len() / header.numel == 4
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    let numel = header.numel;
    if is_legacy_bfloat16(header, buffer) {
        header.expect_len(buffer, numel.checked_mul(4), "NONE (legacy bfloat16)")?;
        let legacy: Vec<f32> = bytemuck::pod_collect_to_vec(buffer);
        let mut out = vec![bf16::ZERO; numel];
        out.convert_from_f32_slice(&legacy);
        return Tensor::new(header.shape.clone(), Data::BF16(out));
    }
    header.expect_len(buffer, numel.checked_mul(header.dtype.size()), "NONE")?;
    let data = match header.dtype {
        DType::F32 => Data::F32(typed(buffer)),
        DType::F16 => Data::F16(typed(buffer)),
        DType::BF16 => Data::BF16(typed(buffer)),
        DType::F64 => Data::F64(typed(buffer)),
        DType::I64 => Data::I64(typed(buffer)),
        DType::I32 => Data::I32(typed(buffer)),
        DType::U8 => Data::U8(copy_to_vec(buffer)),
        other => Data::from_bytes(other, buffer)?,
    };
    Tensor::new(header.shape.clone(), data)
}

/// Copies a NONE buffer (length already checked) into `data`'s existing vector.
pub(super) fn decode_reusing(buffer: &[u8], data: &mut Data) {
    fn refill<T: bytemuck::Pod>(v: &mut Vec<T>, buffer: &[u8]) {
        v.clear();
        match bytemuck::try_cast_slice::<u8, T>(buffer) {
            Ok(values) => v.extend_from_slice(values),
            Err(_) => v.extend(buffer.chunks_exact(std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned::<T>)),
        }
    }
    match data {
        Data::F32(v) => refill(v, buffer),
        Data::F16(v) => refill(v, buffer),
        Data::I64(v) => refill(v, buffer),
        Data::I32(v) => refill(v, buffer),
        _ => {}
    }
}

/// The buffer's elements, copied by several threads when it is aligned and large.
fn typed<T: bytemuck::Pod + Default + Send + Sync>(buffer: &[u8]) -> Vec<T> {
    match bytemuck::try_cast_slice::<u8, T>(buffer) {
        Ok(values) => copy_to_vec(values),
        Err(_) => bytemuck::pod_collect_to_vec(buffer),
    }
}
