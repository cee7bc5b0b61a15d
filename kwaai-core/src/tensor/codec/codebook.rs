//! The layout QUANTILE_8BIT and UNIFORM_8BIT share (hivemind/compression/quantization.py
//! Quantization): `int64 K ‖ f32 codebook[K] ‖ u8 index[numel]`, decoded as `codebook[index]`
//! after casting the codebook to the tensor's dtype.

use super::{protocol, read_f32s, read_i64, Header, Result};
use crate::tensor::{Data, Tensor};

/// Buckets per 8-bit codebook.
pub(super) const BINS: usize = 256;

/// Builds the buffer from the codebook and indices.
pub(super) fn pack(codebook: &[f32], indices: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + codebook.len() * 4 + indices.len());
    out.extend_from_slice(&(codebook.len() as i64).to_le_bytes());
    out.extend_from_slice(bytemuck::cast_slice(codebook));
    out.extend_from_slice(indices);
    out
}

/// The mean of the values in each bucket (0 for an empty one), accumulated in float32 in
/// element order as torch's `scatter_add_` does, then divided by the count.
pub(super) fn average_buckets(values: &[f32], indices: &[u8]) -> Vec<f32> {
    let mut sums = [0f32; BINS];
    let mut counts = [0u64; BINS];
    for (&v, &i) in values.iter().zip(indices) {
        sums[i as usize] += v;
        counts[i as usize] += 1;
    }
    sums.iter().zip(counts).map(|(&s, c)| s / c.max(1) as f32).collect()
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    let k = read_i64(buffer, 0).ok_or_else(|| protocol("quantized tensor has no codebook size".into()))?;
    let codebook = usize::try_from(k)
        .ok()
        .and_then(|k| read_f32s(buffer, 8, k))
        .ok_or_else(|| protocol(format!("codebook of {k} entries does not fit a {}-byte buffer", buffer.len())))?;
    let indices = &buffer[8 + codebook.len() * 4..];
    if indices.len() != header.numel {
        return Err(protocol(format!("{} quantized indices for a tensor of shape {:?}", indices.len(), header.shape)));
    }
    if codebook.len() < BINS {
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= codebook.len()) {
            return Err(protocol(format!("index {bad} is outside a codebook of {} entries", codebook.len())));
        }
    }
    let data = match Data::from_f32(header.dtype, &codebook) {
        Data::F32(cb) => Data::F32(gather(&cb, indices)),
        Data::F16(cb) => Data::F16(gather(&cb, indices)),
        Data::BF16(cb) => Data::BF16(gather(&cb, indices)),
        Data::F64(cb) => Data::F64(gather(&cb, indices)),
        Data::I64(cb) => Data::I64(gather(&cb, indices)),
        Data::I32(cb) => Data::I32(gather(&cb, indices)),
        Data::I16(cb) => Data::I16(gather(&cb, indices)),
        Data::I8(cb) => Data::I8(gather(&cb, indices)),
        Data::U8(cb) => Data::U8(gather(&cb, indices)),
        Data::Bool(cb) => Data::Bool(gather(&cb, indices)),
    };
    Tensor::new(header.shape.clone(), data)
}

/// `table[index]` for each index; every index is known to be in range.
fn gather<T: Copy + Default>(table: &[T], indices: &[u8]) -> Vec<T> {
    let mut full = [T::default(); BINS];
    let n = table.len().min(BINS);
    full[..n].copy_from_slice(&table[..n]);
    indices.iter().map(|&i| full[i as usize]).collect()
}
