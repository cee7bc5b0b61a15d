//! hivemind's tensor wire format: an owned [`Tensor`] or a borrowed [`TensorView`], the six
//! codecs ([`encode`], [`decode`], and [`encode_into`] / [`decode_into`] that reuse memory),
//! splitting into stream parts and joining them ([`stream`]), gradient compression
//! ([`gradient`]), per-call compression for pushed tensors ([`training`]), and candle conversion ([`Tensor::into_candle`] moves the storage;
//! [`Tensor::with_candle_view`] encodes straight from a candle tensor's memory).
//! [`decode_borrowed`] reads a NONE message's elements in place.
//!
//! Pure data: no I/O, no async. Every decoder is bounded by [`DecodeLimits`].

#[cfg(target_endian = "big")]
compile_error!("hivemind's tensor buffers are little-endian; big-endian hosts are not supported");

mod buffer;
mod candle;
mod codec;
mod dtype;
pub mod gradient;
pub mod stream;
pub mod training;

pub use buffer::{checked_numel, Data, Decoded, Tensor, TensorView};
pub use codec::{
    decode, decode_borrowed, decode_into, dequantize_blockwise, encode, encode_into, quantize_blockwise,
    BlockwiseQuantized, DecodeLimits, BLOCKWISE_BLOCK_SIZE, DYNAMIC_CODE,
};
pub use dtype::DType;

pub use crate::wire::runtime::CompressionType;
