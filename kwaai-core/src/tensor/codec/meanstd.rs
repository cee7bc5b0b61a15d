//! MEANSTD_16BIT: centre and scale each row (the last axis) to unit std, then float16
//! (hivemind/compression/floating.py ScaledFloat16Compression).
//!
//! Buffer: `f16[numel] ‖ f32 mean[rows] ‖ f32 std[rows]`, rows = numel / last dim.

use half::{bf16, f16};

use super::float16::{f16_bytes_to_f32, f32_to_f16_serial, STEP};
use super::parallel::{par_chunks, par_sum, resize_advised, sum_f64, sum_sq_centered};
use super::{protocol, read_f32s, unsupported, Header, Result};
use crate::tensor::{DType, Data, Tensor, TensorView};

/// torch.finfo(float32).eps, the floor under each std.
const FP32_EPS: f32 = f32::EPSILON;

/// The number of rows (the shape with its last dimension set to 1), or None for a 0-d shape.
fn rows(shape: &[usize]) -> Option<usize> {
    let (_, lead) = shape.split_last()?;
    lead.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

pub(super) fn encode(view: &TensorView<'_>, buffer: &mut Vec<u8>) -> Result<()> {
    let dtype = view.dtype();
    if dtype == DType::BF16 {
        return Err(unsupported("MEANSTD_16BIT", dtype, "hivemind peers cannot decode it"));
    }
    let rows =
        rows(view.shape()).ok_or_else(|| unsupported("MEANSTD_16BIT", dtype, "0-d tensors have no last axis"))?;
    let values = view.to_f32();
    let last = view.shape().last().copied().unwrap_or(1);
    let sqrt_last = (last as f64).sqrt() as f32;
    // (mean, std) of each row, as torch computes them in float32: mean, subtract, norm/√last.
    let mut stats = vec![(0f32, 0f32); rows];
    let row_len = last.max(1);
    par_chunks(&values, row_len, &mut stats, 1, 1.max((1 << 16) / row_len), |_, rows_in, out| {
        for (row, stat) in rows_in.chunks(row_len).zip(out.iter_mut()) {
            // One long row is reduced by several threads; many short rows, one row per thread.
            let long = row.len() >= 1 << 20;
            let mean = ((if long { par_sum(row, sum_f64) } else { sum_f64(row) }) / last as f64) as f32;
            let centered = |piece: &[f32]| sum_sq_centered(piece, mean);
            let sq = if long { par_sum(row, centered) } else { centered(row) };
            let std = ((sq.sqrt() as f32) / sqrt_last).max(FP32_EPS);
            *stat = (mean, std);
        }
    });
    // The float16 values, then every row's mean, then every row's std (float32), in one allocation.
    let halves = values.len() * 2;
    resize_advised(buffer, halves + rows * 8);
    let (values_out, stats_out) = buffer.split_at_mut(halves);
    let (means_out, stds_out) = stats_out.split_at_mut(rows * 4);
    for ((mean, std), (m, s)) in stats.iter().zip(means_out.chunks_exact_mut(4).zip(stds_out.chunks_exact_mut(4))) {
        m.copy_from_slice(&mean.to_le_bytes());
        s.copy_from_slice(&std.to_le_bytes());
    }
    let stats_ref = &stats;
    par_chunks(&values, STEP, values_out, 2 * STEP, 16, |first, chunk, out| {
        let mut scaled = [0f32; STEP];
        let start = first * STEP;
        let mut done = 0;
        // Each run of elements that shares a row is scaled, then cast, one stack buffer at a time.
        while done < chunk.len() {
            let row = (start + done) / row_len;
            let run = ((row + 1) * row_len - (start + done)).min(chunk.len() - done).min(STEP);
            let (mean, std) = stats_ref[row];
            for (s, &v) in scaled.iter_mut().zip(&chunk[done..done + run]) {
                *s = (v - mean) / std;
            }
            f32_to_f16_serial(&scaled[..run], &mut out[2 * done..2 * (done + run)]);
            done += run;
        }
    });
    Ok(())
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    let rows = rows(&header.shape).ok_or_else(|| protocol("MEANSTD_16BIT tensor has no dimensions".into()))?;
    let expected = header.numel.checked_mul(2).and_then(|n| n.checked_add(rows.checked_mul(8)?));
    header.expect_len(buffer, expected, "MEANSTD_16BIT")?;
    let stats_at = header.numel * 2;
    let (means, stds) = match (read_f32s(buffer, stats_at, rows), read_f32s(buffer, stats_at + rows * 4, rows)) {
        (Some(m), Some(s)) => (m, s),
        _ => return Err(protocol("MEANSTD_16BIT statistics are truncated".into())),
    };
    let last = header.shape.last().copied().unwrap_or(1).max(1);
    let halves = &buffer[..stats_at];
    // Like torch's `tensor.mul_(stds).add_(means)`: two separately rounded steps, computed in
    // float32 (float64 for a float64 tensor) and stored in the tensor's dtype after each step.
    let data = match header.dtype {
        DType::F32 => {
            let mut v = f16_bytes_to_f32(halves);
            for (r, row) in v.chunks_mut(last).enumerate() {
                for x in row {
                    *x *= stds[r];
                    *x += means[r];
                }
            }
            Data::F32(v)
        }
        DType::F64 => {
            let v = f16_bytes_to_f32(halves);
            let mut out: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            for (r, row) in out.chunks_mut(last).enumerate() {
                for x in row {
                    *x *= f64::from(stds[r]);
                    *x += f64::from(means[r]);
                }
            }
            Data::F64(out)
        }
        DType::F16 => {
            let v = f16_bytes_to_f32(halves);
            let mut out = Vec::with_capacity(v.len());
            for (r, row) in v.chunks(last).enumerate() {
                for &x in row {
                    let scaled = f16::from_f32(x * stds[r]).to_f32();
                    out.push(f16::from_f32(scaled + means[r]));
                }
            }
            Data::F16(out)
        }
        DType::BF16 => {
            let v = f16_bytes_to_f32(halves);
            let mut out = Vec::with_capacity(v.len());
            for (r, row) in v.chunks(last).enumerate() {
                for &x in row {
                    let scaled = bf16::from_f32(bf16::from_f32(x).to_f32() * stds[r]).to_f32();
                    out.push(bf16::from_f32(scaled + means[r]));
                }
            }
            Data::BF16(out)
        }
        other => return Err(protocol(format!("MEANSTD_16BIT cannot restore a {} tensor", other.name()))),
    };
    Tensor::new(header.shape.clone(), data)
}
