//! BLOCKWISE_8BIT: bitsandbytes' dynamic 8-bit code with one absmax per block of 4096
//! (hivemind/compression/quantization.py BlockwiseQuantization over bitsandbytes'
//! `quantize_blockwise`, CPU kernel `quantize_cpu`).
//!
//! Buffer: `int64 A ‖ int64 C ‖ f32 absmax[A] ‖ f32 code[C] ‖ u8 index[numel]`, A = ceil(n/4096),
//! C = 256. Floats are quantized as float32 (bfloat16 is up-cast as hivemind does; we up-cast
//! float16 and float64 too, where bitsandbytes' CPU path would misread them). Decoding computes
//! `code[index] * absmax[block]` in float32 and casts to the dtype string.
//!
//! The reference stack cannot run this codec (hivemind 1.1.10 expects the bitsandbytes 0.37
//! return value, Petals pins 0.41.1), so the tests check it against bitsandbytes 0.41.1's own
//! kernel called through its current API, plus hand-computed bytes.

use super::keys::{from_order_key, order_key, KeyCounter};
use super::parallel::{fresh_vec, par_chunks};
use super::{protocol, read_f32s, read_i64, unsupported, Header, Result};
use crate::tensor::{DType, Data, Tensor, TensorView};
use std::sync::OnceLock;

/// Elements per absmax block.
pub const BLOCKWISE_BLOCK_SIZE: usize = 4096;

/// bitsandbytes' signed dynamic map (`create_dynamic_map()`: 7 exponent bits, 8 bits in all),
/// as float32 bit patterns in ascending order, with entry 0 set to -1.0 as the CPU kernel sets
/// it before quantizing (that mutated code is what goes on the wire).
pub const DYNAMIC_CODE: [u32; 256] = {
    let mut code = [
        0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000, 0xbf616666,
        0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000,
        0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666, 0xbf27cccd, 0xbf243334, 0xbf20999a,
        0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333,
        0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a,
        0xbeb86666, 0xbeb13333, 0xbeaa0000, 0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999,
        0xbe6f3333, 0xbe60cccd, 0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000,
        0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
        0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f,
        0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148, 0xbcfeb852, 0xbce7ae15,
        0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418, 0xbc0ccccd,
        0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a,
        0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d, 0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01,
        0xb9c7e283, 0xb98ce705, 0xb923d70b, 0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94,
        0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b,
        0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
        0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b,
        0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f,
        0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3,
        0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d,
        0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667,
        0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000,
        0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc,
        0x3eaa0000, 0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
        0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334,
        0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666, 0x3f2f0000, 0x3f32999a,
        0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000,
        0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
        0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
    ];
    code[0] = 0xbf80_0000; // -1.0
    code
};

/// A float32 tensor quantized block-wise: one absmax per block and one code index per value.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockwiseQuantized {
    /// max |x| of each block of [`BLOCKWISE_BLOCK_SIZE`] values.
    pub absmax: Vec<f32>,
    /// Indices into [`DYNAMIC_CODE`].
    pub indices: Vec<u8>,
}

impl BlockwiseQuantized {
    /// The BLOCKWISE_8BIT buffer: `int64 A ‖ int64 256 ‖ absmax ‖ DYNAMIC_CODE ‖ indices`.
    pub fn to_buffer(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * (self.absmax.len() + 256) + self.indices.len());
        self.write_buffer(&mut out);
        out
    }

    /// Appends [`BlockwiseQuantized::to_buffer`]'s bytes to `out`.
    pub fn write_buffer(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.absmax.len() as i64).to_le_bytes());
        out.extend_from_slice(&256i64.to_le_bytes());
        out.extend_from_slice(bytemuck::cast_slice(&self.absmax));
        out.extend_from_slice(bytemuck::cast_slice(&DYNAMIC_CODE));
        out.extend_from_slice(&self.indices);
    }

    /// The float32 values these indices stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.indices.len()];
        dequantize_blockwise(&self.absmax, &code_f32(), &self.indices, &mut out);
        out
    }
}

fn code_f32() -> [f32; 256] {
    DYNAMIC_CODE.map(f32::from_bits)
}

/// The code index for `normed` (a value in [-1, 1]): the left neighbour found by binary search,
/// or its right neighbour when that is strictly closer. NaN maps to 0, as in bitsandbytes.
#[inline]
fn nearest(code: &[f32; 256], normed: f32) -> u8 {
    // The largest i with code[i] <= normed (0 when none is).
    let mut pos = 0usize;
    let mut step = 128usize;
    while step > 0 {
        if code[pos + step] <= normed {
            pos += step;
        }
        step /= 2;
    }
    if pos < 255 && (normed - code[pos + 1]).abs() < (normed - code[pos]).abs() {
        pos += 1;
    }
    pos as u8
}

/// [`nearest`] as a table lookup. `nearest` is monotone in its argument, so index k is taken
/// exactly from the smallest float32 that maps to k upward; those 255 thresholds are found once
/// by bisection over order keys, and a value's index is the number of thresholds not above it.
fn nearest_table() -> &'static KeyCounter {
    static TABLE: OnceLock<KeyCounter> = OnceLock::new();
    TABLE.get_or_init(|| {
        let code = code_f32();
        let (lowest, highest) = (order_key(f32::NEG_INFINITY), order_key(f32::INFINITY));
        let thresholds = (1..=255u16)
            .map(|k| {
                // The smallest key whose value maps to k or above.
                let (mut lo, mut hi) = (lowest, highest);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if u16::from(nearest(&code, from_order_key(mid))) >= k {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo
            })
            .collect();
        KeyCounter::new(thresholds)
    })
}

/// The code index of `normed` by table: the count of thresholds at or below it.
#[inline]
fn nearest_fast(table: &KeyCounter, normed: f32) -> u8 {
    if normed.is_nan() {
        return 0;
    }
    table.count_below(order_key(normed).saturating_add(1)) as u8
}

/// Quantizes float32 values with the dynamic code, block by block.
pub fn quantize_blockwise(values: &[f32]) -> BlockwiseQuantized {
    let table = nearest_table();
    let mut absmax = vec![0f32; values.len().div_ceil(BLOCKWISE_BLOCK_SIZE)];
    par_chunks(values, BLOCKWISE_BLOCK_SIZE, &mut absmax, 1, 16, |_, blocks, out| {
        for (block, m) in blocks.chunks(BLOCKWISE_BLOCK_SIZE).zip(out) {
            // fmax from -FLT_MAX, as the kernel does: NaN is skipped.
            *m = block.iter().fold(-f32::MAX, |m, &v| m.max(v.abs()));
        }
    });
    let mut indices = fresh_vec(values.len());
    let absmax_ref = &absmax;
    par_chunks(values, BLOCKWISE_BLOCK_SIZE, &mut indices, BLOCKWISE_BLOCK_SIZE, 16, |first, blocks, out| {
        let pieces = blocks.chunks(BLOCKWISE_BLOCK_SIZE).zip(out.chunks_mut(BLOCKWISE_BLOCK_SIZE));
        for (k, (block, idx)) in pieces.enumerate() {
            let max = absmax_ref[first + k];
            for (o, &v) in idx.iter_mut().zip(block) {
                *o = nearest_fast(table, v / max);
            }
        }
    });
    BlockwiseQuantized { absmax, indices }
}

/// Writes `code[index] * absmax[block]` for each index into `out` (same length as the indices).
pub fn dequantize_blockwise(absmax: &[f32], code: &[f32], indices: &[u8], out: &mut [f32]) {
    let mut table = [0f32; 256];
    let n = code.len().min(256);
    table[..n].copy_from_slice(&code[..n]);
    par_chunks(indices, BLOCKWISE_BLOCK_SIZE, out, BLOCKWISE_BLOCK_SIZE, 16, |first, idx, dst| {
        let pieces = idx.chunks(BLOCKWISE_BLOCK_SIZE).zip(dst.chunks_mut(BLOCKWISE_BLOCK_SIZE));
        for ((block, o), &scale) in pieces.zip(absmax.get(first..).unwrap_or(&[])) {
            for (d, &i) in o.iter_mut().zip(block) {
                *d = table[i as usize] * scale;
            }
        }
    });
}

pub(super) fn encode(view: &TensorView<'_>, buf: &mut Vec<u8>) -> Result<()> {
    if !view.dtype().is_float() {
        return Err(unsupported("BLOCKWISE_8BIT", view.dtype(), "only floating-point tensors are quantized"));
    }
    quantize_blockwise(&view.to_f32()).write_buffer(buf);
    Ok(())
}

/// Decodes into `data`'s existing float32 vector (other storage is left alone).
pub(super) fn decode_reusing(header: &Header, buffer: &[u8], data: &mut Data) -> Result<()> {
    let (absmax, code, indices) = parse(header, buffer)?;
    if let Data::F32(v) = data {
        v.resize(indices.len(), 0.0);
        dequantize_blockwise(&absmax, &code, indices, v);
    }
    Ok(())
}

pub(super) fn decode(header: &Header, buffer: &[u8]) -> Result<Tensor> {
    let (absmax, code, indices) = parse(header, buffer)?;
    let mut values = fresh_vec(header.numel);
    dequantize_blockwise(&absmax, &code, indices, &mut values);
    let data = match header.dtype {
        DType::F32 => Data::F32(values),
        dtype => Data::from_f32(dtype, &values),
    };
    Tensor::new(header.shape.clone(), data)
}

/// The absmax values, code and (range-checked) indices of a buffer.
fn parse<'a>(header: &Header, buffer: &'a [u8]) -> Result<(Vec<f32>, Vec<f32>, &'a [u8])> {
    let (a, c) = match (read_i64(buffer, 0), read_i64(buffer, 8)) {
        (Some(a), Some(c)) => (a, c),
        _ => return Err(protocol("BLOCKWISE_8BIT header is truncated".into())),
    };
    let blocks = header.numel.div_ceil(BLOCKWISE_BLOCK_SIZE);
    if usize::try_from(a).ok() != Some(blocks) || !(1..=256).contains(&c) {
        return Err(protocol(format!(
            "BLOCKWISE_8BIT header ({a} blocks, {c} codes) does not fit shape {:?}",
            header.shape
        )));
    }
    let c = c as usize;
    let expected = blocks.checked_mul(4).and_then(|b| b.checked_add(16 + 4 * c)?.checked_add(header.numel));
    header.expect_len(buffer, expected, "BLOCKWISE_8BIT")?;
    let (absmax, code) = match (read_f32s(buffer, 16, blocks), read_f32s(buffer, 16 + 4 * blocks, c)) {
        (Some(a), Some(c)) => (a, c),
        _ => return Err(protocol("BLOCKWISE_8BIT buffer is truncated".into())),
    };
    let indices = &buffer[16 + 4 * (blocks + c)..];
    if c < 256 {
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= c) {
            return Err(protocol(format!("BLOCKWISE_8BIT index {bad} is outside a code of {c} entries")));
        }
    }
    Ok((absmax, code, indices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lookup_agrees_with_the_binary_search() {
        let code = code_f32();
        let table = nearest_table();
        let mut probes: Vec<f32> = code.iter().flat_map(|&c| [c, c.next_up(), c.next_down()]).collect();
        probes.extend(code.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        probes.extend((0..200_000).map(|i| (i as f32 / 100_000.0) - 1.0));
        probes.extend([-0.0, 0.0, 1e-30, -1e-30, 2.0, -2.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        for x in probes {
            assert_eq!(nearest_fast(table, x), nearest(&code, x), "x = {x:e}");
        }
    }
}
