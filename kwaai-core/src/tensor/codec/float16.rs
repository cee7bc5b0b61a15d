//! FLOAT16: clamp to ±65504 and cast to float16 (hivemind/compression/floating.py
//! Float16Compression). Decoding casts back to the original dtype as numpy does.

use half::{f16, slice::HalfFloatSliceExt};

use super::parallel::{fresh_vec, par_chunks, resize_advised};
use super::{unsupported, Header, Result};
use crate::tensor::{DType, Data, Tensor, TensorView};

/// The largest finite float16.
pub(super) const FP16_MAX: f32 = 65504.0;

/// Elements converted per step, so the clamped copy stays in L1.
pub(super) const STEP: usize = 4096;

pub(super) fn encode(view: &TensorView<'_>, buf: &mut Vec<u8>) -> Result<()> {
    if view.dtype() == DType::BF16 {
        return Err(unsupported("FLOAT16", DType::BF16, "hivemind peers cannot decode it"));
    }
    let values = view.to_f32();
    resize_advised(buf, values.len() * 2);
    f32_to_f16_bytes(&values, buf);
    Ok(())
}

/// Writes `values`, clamped to the float16 range, as float16 bytes into `out` (2 bytes each).
pub(super) fn f32_to_f16_bytes(values: &[f32], out: &mut [u8]) {
    par_chunks(values, STEP, out, 2 * STEP, 64, |_, v, o| f32_to_f16_serial(v, o));
}

/// [`f32_to_f16_bytes`] on the calling thread only.
pub(super) fn f32_to_f16_serial(values: &[f32], out: &mut [u8]) {
    let mut clamped = [0f32; STEP];
    match bytemuck::try_cast_slice_mut::<u8, f16>(out) {
        Ok(halves) => {
            for (src, dst) in values.chunks(STEP).zip(halves.chunks_mut(STEP)) {
                let tmp = &mut clamped[..src.len()];
                for (t, &v) in tmp.iter_mut().zip(src) {
                    *t = v.clamp(-FP16_MAX, FP16_MAX);
                }
                dst.convert_from_f32_slice(tmp);
            }
        }
        Err(_) => {
            for (&v, dst) in values.iter().zip(out.chunks_exact_mut(2)) {
                dst.copy_from_slice(&f16::from_f32(v.clamp(-FP16_MAX, FP16_MAX)).to_le_bytes());
            }
        }
    }
}

/// float16 bytes (any alignment) as float32 values.
pub(super) fn f16_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    let mut out = fresh_vec(bytes.len() / 2);
    match bytemuck::try_cast_slice::<u8, f16>(bytes) {
        Ok(halves) => par_chunks(halves, STEP, &mut out, STEP, 64, |_, h, o| h.convert_to_f32_slice(o)),
        Err(_) => bytemuck::pod_collect_to_vec::<u8, f16>(bytes).convert_to_f32_slice(&mut out),
    }
    out
}

/// Converts a FLOAT16 buffer (length already checked) into `data`'s existing float32 vector.
pub(super) fn decode_reusing(buffer: &[u8], data: &mut Data) {
    if let Data::F32(v) = data {
        v.resize(buffer.len() / 2, 0.0);
        match bytemuck::try_cast_slice::<u8, f16>(buffer) {
            Ok(halves) => par_chunks(halves, STEP, v, STEP, 64, |_, h, o| h.convert_to_f32_slice(o)),
            Err(_) => *v = f16_bytes_to_f32(buffer),
        }
    }
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    header.expect_len(buffer, header.numel.checked_mul(2), "FLOAT16")?;
    let data = match header.dtype {
        DType::F16 => Data::F16(bytemuck::pod_collect_to_vec(buffer)),
        DType::F32 => Data::F32(f16_bytes_to_f32(buffer)),
        dtype => Data::from_f32(dtype, &f16_bytes_to_f32(buffer)),
    };
    Tensor::new(header.shape.clone(), data)
}
