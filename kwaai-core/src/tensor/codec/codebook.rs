//! The layout QUANTILE_8BIT and UNIFORM_8BIT share (hivemind/compression/quantization.py
//! Quantization): `int64 K ‖ f32 codebook[K] ‖ u8 index[numel]`, decoded as `codebook[index]`
//! after casting the codebook to the tensor's dtype.

use std::sync::Mutex;

use super::parallel::{fresh_vec, par_chunks, resize_advised};
use super::{protocol, read_f32s, read_i64, Header, Result};
use crate::tensor::{Data, Tensor};

/// Buckets per 8-bit codebook.
pub(super) const BINS: usize = 256;

/// Fills `buf` with the indices `quantize` gives each block of `values`, then the header: K = 256
/// and the mean of the values in each bucket (0 for an empty one). The bucket sums are taken in
/// float64, in any order, right after each block is quantized, while it is still in cache; four
/// interleaved partial histograms keep neighbouring elements from waiting on each other's
/// read-modify-write. For codecs whose reference codebook is not reproducible anyway
/// (UNIFORM_8BIT: hivemind's scale already comes from torch's reductions).
pub(super) fn encode_with_block_means(values: &[f32], buf: &mut Vec<u8>, quantize: impl Fn(&[f32], &mut [u8]) + Sync) {
    const BLOCK: usize = 4096;
    const LANES: usize = 4;
    resize_advised(buf, HEADER + values.len());
    let (header, indices) = buf.split_at_mut(HEADER);
    let totals = Mutex::new(([0f64; BINS], [0u64; BINS]));
    par_chunks(values, BLOCK, indices, BLOCK, 64, |_, vals, idx| {
        let mut sums = [[0f64; BINS]; LANES];
        let mut counts = [[0u64; BINS]; LANES];
        for (vs, is) in vals.chunks(BLOCK).zip(idx.chunks_mut(BLOCK)) {
            quantize(vs, is);
            let (v4, i4) = (vs.chunks_exact(LANES), is.chunks_exact(LANES));
            let (v_tail, i_tail) = (v4.remainder(), i4.remainder());
            for (v, i) in v4.zip(i4) {
                for lane in 0..LANES {
                    sums[lane][i[lane] as usize] += f64::from(v[lane]);
                    counts[lane][i[lane] as usize] += 1;
                }
            }
            for (&v, &i) in v_tail.iter().zip(i_tail) {
                sums[0][i as usize] += f64::from(v);
                counts[0][i as usize] += 1;
            }
        }
        let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
        for b in 0..BINS {
            totals.0[b] += (0..LANES).map(|l| sums[l][b]).sum::<f64>();
            totals.1[b] += (0..LANES).map(|l| counts[l][b]).sum::<u64>();
        }
    });
    let (sums, counts) = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    let codebook: Vec<f32> = sums.iter().zip(&counts).map(|(&s, &c)| (s / c.max(1) as f64) as f32).collect();
    write_header(header, &codebook);
}

/// Where the indices start in the buffer.
pub(super) const HEADER: usize = 8 + 4 * BINS;

/// Fills `buf` with `quantize`'s indices for `values` (written in place after the header),
/// then the header: K = 256 and each bucket's mean as [`average_buckets`] takes it.
pub(super) fn encode_with(values: &[f32], buf: &mut Vec<u8>, quantize: impl FnOnce(&[f32], &mut [u8])) {
    resize_advised(buf, HEADER + values.len());
    let (header, indices) = buf.split_at_mut(HEADER);
    quantize(values, indices);
    let codebook = average_buckets(values, indices);
    write_header(header, &codebook);
}

fn write_header(header: &mut [u8], codebook: &[f32]) {
    header[..8].copy_from_slice(&(BINS as i64).to_le_bytes());
    header[8..].copy_from_slice(bytemuck::cast_slice(codebook));
}

/// The mean of the values in each bucket (0 for an empty one), accumulated in float32 in
/// element order as torch's `scatter_add_` does, then divided by the count.
///
/// Large inputs are split by bucket range, not by element, so each bucket is still summed by one
/// thread in element order and the result does not depend on the thread count.
pub(super) fn average_buckets(values: &[f32], indices: &[u8]) -> Vec<f32> {
    const GROUPS: usize = 16;
    let groups: Vec<usize> = (0..GROUPS).collect();
    let mut out = vec![0f32; BINS];
    let per_group = BINS / GROUPS;
    let min_groups = if values.len() < 1 << 20 { GROUPS } else { 1 };
    par_chunks(&groups, 1, &mut out, per_group, min_groups, |_, gs, out| {
        let lo = gs[0] * per_group;
        let hi = lo + gs.len() * per_group;
        let mut sums = [0f32; BINS];
        let mut counts = [0u64; BINS];
        for (&v, &i) in values.iter().zip(indices) {
            let i = i as usize;
            // Branch-free: other threads' buckets get +0, which leaves them untouched here.
            let inside = (lo..hi).contains(&i);
            sums[i] += if inside { v } else { 0.0 };
            counts[i] += u64::from(inside);
        }
        for (o, b) in out.iter_mut().zip(lo..hi) {
            *o = sums[b] / counts[b].max(1) as f32;
        }
    });
    out
}

/// The codebook and the (range-checked) indices of a buffer.
fn parse<'a>(header: &Header, buffer: &'a [u8]) -> Result<(Vec<f32>, &'a [u8])> {
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
    Ok((codebook, indices))
}

/// Decodes into `data`'s existing float32 vector (other storage is left alone).
pub(super) fn decode_reusing(header: &Header, buffer: &[u8], data: &mut Data) -> Result<()> {
    let (codebook, indices) = parse(header, buffer)?;
    if let Data::F32(v) = data {
        v.resize(indices.len(), 0.0);
        gather_into(&codebook, indices, v);
    }
    Ok(())
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    let (codebook, indices) = parse(header, buffer)?;
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
fn gather<T: Copy + Default + Send + Sync>(table: &[T], indices: &[u8]) -> Vec<T> {
    let mut out = fresh_vec(indices.len());
    gather_into(table, indices, &mut out);
    out
}

/// `out[j] = table[indices[j]]`; every index is known to be in range.
fn gather_into<T: Copy + Default + Send + Sync>(table: &[T], indices: &[u8], out: &mut [T]) {
    let mut full = [T::default(); BINS];
    let n = table.len().min(BINS);
    full[..n].copy_from_slice(&table[..n]);
    par_chunks(indices, 1, out, 1, 1 << 18, |_, idx, o| {
        for (d, &i) in o.iter_mut().zip(idx) {
            *d = full[i as usize];
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_bucket_averaging_equals_one_sequential_pass() {
        let n = (1 << 20) + 12_345;
        let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin() * 7.0).collect();
        let bucket = |v: f32| (v.to_bits().wrapping_mul(2_654_435_761) >> 24) as u8;
        let indices: Vec<u8> = values.iter().map(|&v| bucket(v)).collect();
        let mut sums = [0f32; BINS];
        let mut counts = [0u64; BINS];
        for (&v, &i) in values.iter().zip(&indices) {
            sums[i as usize] += v;
            counts[i as usize] += 1;
        }
        let expected: Vec<f32> = sums.iter().zip(counts).map(|(s, c)| s / c.max(1) as f32).collect();
        assert_eq!(average_buckets(&values, &indices), expected);

        let mut buf = Vec::new();
        encode_with_block_means(&values, &mut buf, |vs, out| {
            for (o, &v) in out.iter_mut().zip(vs) {
                *o = bucket(v);
            }
        });
        assert_eq!(buf[..8], (BINS as i64).to_le_bytes());
        assert_eq!(buf[HEADER..], indices[..]);
        let means = buf[8..HEADER].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
        for (a, b) in means.zip(&expected) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }
}
