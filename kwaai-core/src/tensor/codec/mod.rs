//! hivemind's six tensor codecs: [`encode`] a [`TensorView`] into a runtime.proto [`Tensor`]
//! message and [`decode`] one back, byte-compatible with hivemind 1.1.10.post2
//! (hivemind/compression/{base,floating,quantization}.py).
//!
//! Decoders are bounded: the claimed shape is checked against [`DecodeLimits`] and against the
//! buffer's actual length before any allocation proportional to it.

mod blockwise;
mod codebook;
mod float16;
mod keys;
mod meanstd;
mod none;
mod parallel;
mod quantile;
mod uniform;

pub use blockwise::{dequantize_blockwise, quantize_blockwise, BlockwiseQuantized, BLOCKWISE_BLOCK_SIZE, DYNAMIC_CODE};

use super::{checked_numel, DType, Decoded, Tensor, TensorView};
use crate::wire::runtime::{self, CompressionType};
use crate::{Error, ErrorKind, Result};

/// Caps on what a decoder accepts from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most elements one tensor may claim.
    pub max_elements: usize,
    /// The most dimensions one tensor may claim.
    pub max_rank: usize,
}

impl Default for DecodeLimits {
    /// 2^30 elements (4 GiB of float32) and 32 dimensions.
    fn default() -> Self {
        DecodeLimits { max_elements: 1 << 30, max_rank: 32 }
    }
}

/// Encodes `view` with `compression`, as hivemind's `serialize_torch_tensor` does
/// (`requires_grad` is written `false`, as hivemind senders effectively do).
pub fn encode(view: &TensorView<'_>, compression: CompressionType) -> Result<runtime::Tensor> {
    let mut msg = runtime::Tensor::default();
    encode_into(view, compression, &mut msg)?;
    Ok(msg)
}

/// Like [`encode`], but overwrites `msg`, reusing its buffer's memory: a sender that encodes
/// many tensors this way avoids faulting in fresh pages for every one.
pub fn encode_into(view: &TensorView<'_>, compression: CompressionType, msg: &mut runtime::Tensor) -> Result<()> {
    let buf = &mut msg.buffer;
    buf.clear();
    match compression {
        CompressionType::None => none::encode(view, buf),
        CompressionType::Float16 => float16::encode(view, buf)?,
        CompressionType::Meanstd16bit => meanstd::encode(view, buf)?,
        CompressionType::Quantile8bit => quantile::encode(view, buf)?,
        CompressionType::Uniform8bit => uniform::encode(view, buf)?,
        CompressionType::Blockwise8bit => blockwise::encode(view, buf)?,
    }
    let size = view
        .shape()
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| Error::invalid_argument(format!("dimension of {:?} does not fit in uint32", view.shape())))?;
    msg.size = size;
    msg.requires_grad = false;
    msg.dtype.clear();
    msg.dtype.push_str(view.dtype().name());
    msg.compression = compression as i32;
    msg.chunks = 0;
    Ok(())
}

/// Decodes a runtime.proto tensor message (a whole tensor, not a stream part).
pub fn decode(msg: &runtime::Tensor, limits: &DecodeLimits) -> Result<Tensor> {
    decode_parsed(&Header::parse(msg, limits)?, msg)
}

/// Like [`decode`], but reads a NONE message's elements in place instead of copying them, as
/// hivemind's NONE decode is a view of the bytes it was given. Bool (normalised to 0/1),
/// bfloat16 sent as float32 values, and the other codecs decode to an owned tensor.
pub fn decode_borrowed<'a>(msg: &'a runtime::Tensor, limits: &DecodeLimits) -> Result<Decoded<'a>> {
    let header = Header::parse(msg, limits)?;
    if msg.compression == CompressionType::None as i32 {
        if let Some(bytes) = none::in_place(&header, &msg.buffer)? {
            return Ok(Decoded::Borrowed { shape: header.shape, dtype: header.dtype, bytes });
        }
    }
    decode_parsed(&header, msg).map(Decoded::Owned)
}

fn decode_parsed(header: &Header, msg: &runtime::Tensor) -> Result<Tensor> {
    let compression = CompressionType::try_from(msg.compression)
        .map_err(|_| protocol(format!("unknown tensor compression {}", msg.compression)))?;
    match compression {
        CompressionType::None => none::decode(header, &msg.buffer),
        CompressionType::Float16 => float16::decode(header, &msg.buffer),
        CompressionType::Meanstd16bit => meanstd::decode(header, &msg.buffer),
        CompressionType::Quantile8bit | CompressionType::Uniform8bit => codebook::decode(header, &msg.buffer),
        CompressionType::Blockwise8bit => blockwise::decode(header, &msg.buffer),
    }
}

/// Like [`decode`], but writes into `out`, reusing its memory when it already holds the
/// message's dtype (NONE for float32/float16/int64/int32; float32 from any codec but
/// MEANSTD_16BIT; otherwise it allocates as [`decode`] does). On an error, `out`'s contents are
/// unspecified (but valid). A receiver
/// that decodes many same-typed tensors this way avoids faulting in fresh pages for each.
pub fn decode_into(msg: &runtime::Tensor, limits: &DecodeLimits, out: &mut Tensor) -> Result<()> {
    let header = Header::parse(msg, limits)?;
    let reusable =
        out.dtype() == header.dtype && matches!(header.dtype, DType::F32 | DType::F16 | DType::I64 | DType::I32);
    let shape = header.shape.clone();
    let buffer = &msg.buffer[..];
    if reusable && msg.compression == CompressionType::None as i32 {
        header.expect_len(buffer, header.numel.checked_mul(header.dtype.size()), "NONE")?;
        return out.refill(shape, |data| none::decode_reusing(buffer, data));
    }
    if reusable && header.dtype == DType::F32 {
        let mut result = Ok(());
        let filled = match CompressionType::try_from(msg.compression) {
            Ok(CompressionType::Float16) => {
                header.expect_len(buffer, header.numel.checked_mul(2), "FLOAT16")?;
                out.refill(shape, |data| float16::decode_reusing(buffer, data))
            }
            Ok(CompressionType::Quantile8bit | CompressionType::Uniform8bit) => {
                out.refill(shape, |data| result = codebook::decode_reusing(&header, buffer, data))
            }
            Ok(CompressionType::Blockwise8bit) => {
                out.refill(shape, |data| result = blockwise::decode_reusing(&header, buffer, data))
            }
            _ => return decode_parsed(&header, msg).map(|t| *out = t),
        };
        return result.and(filled);
    }
    *out = decode_parsed(&header, msg)?;
    Ok(())
}

/// The validated shape and dtype of an incoming tensor.
pub(crate) struct Header {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub numel: usize,
}

impl Header {
    fn parse(msg: &runtime::Tensor, limits: &DecodeLimits) -> Result<Header> {
        if msg.size.len() > limits.max_rank {
            return Err(protocol(format!("tensor has {} dimensions, more than {}", msg.size.len(), limits.max_rank)));
        }
        let dtype = DType::from_name(&msg.dtype)?;
        let shape: Vec<usize> = msg.size.iter().map(|&d| d as usize).collect();
        let numel = checked_numel(&shape)
            .ok()
            .filter(|&n| n <= limits.max_elements)
            .ok_or_else(|| protocol(format!("tensor of shape {shape:?} exceeds {} elements", limits.max_elements)))?;
        Ok(Header { shape, dtype, numel })
    }

    /// Fails unless `buffer` has exactly `expected` bytes.
    pub fn expect_len(&self, buffer: &[u8], expected: Option<usize>, codec: &str) -> Result<()> {
        match expected {
            Some(n) if n == buffer.len() => Ok(()),
            _ => Err(protocol(format!(
                "{codec} buffer of {} bytes does not match a {} tensor of shape {:?}",
                buffer.len(),
                self.dtype.name(),
                self.shape
            ))),
        }
    }
}

pub(crate) fn protocol(message: String) -> Error {
    Error::new(ErrorKind::Protocol, message)
}

pub(crate) fn unsupported(codec: &str, dtype: DType, why: &str) -> Error {
    Error::invalid_argument(format!("{codec} cannot encode a {} tensor: {why}", dtype.name()))
}

/// Reads a little-endian int64 at `offset`, if present.
pub(crate) fn read_i64(buffer: &[u8], offset: usize) -> Option<i64> {
    let bytes = buffer.get(offset..offset.checked_add(8)?)?;
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}

/// Copies `count` little-endian f32 values starting at `offset`, if present.
pub(crate) fn read_f32s(buffer: &[u8], offset: usize, count: usize) -> Option<Vec<f32>> {
    let end = offset.checked_add(count.checked_mul(4)?)?;
    Some(bytemuck::pod_collect_to_vec(buffer.get(offset..end)?))
}
