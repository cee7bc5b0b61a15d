//! Turns fuzz bytes into a tensor message for one codec: byte 0 picks the dtype, byte 1 the
//! rank (0..=3), the next `rank` bytes the dimensions, and the rest is the buffer. This reaches
//! each codec's decoder without first having to discover protobuf framing.
#![allow(dead_code)]

use kwaai_core::tensor::{CompressionType, DType, DecodeLimits};
use kwaai_core::wire::runtime;

/// Small limits, so a fuzz run explores logic rather than large allocations.
pub const LIMITS: DecodeLimits = DecodeLimits { max_elements: 1 << 16, max_rank: 8 };

/// The message the bytes describe, or None when they are too short.
pub fn message(data: &[u8], compression: CompressionType) -> Option<runtime::Tensor> {
    let (&dtype, rest) = data.split_first()?;
    let (&rank, rest) = rest.split_first()?;
    let rank = usize::from(rank % 4);
    let dims = rest.get(..rank)?;
    Some(runtime::Tensor {
        buffer: rest[rank..].to_vec(),
        size: dims.iter().map(|&d| u32::from(d)).collect(),
        requires_grad: false,
        dtype: DType::ALL[usize::from(dtype) % DType::ALL.len()].name().to_owned(),
        compression: compression as i32,
        chunks: 0,
    })
}

/// Decodes and, when that succeeds, checks the result agrees with the header; decoding in place
/// must succeed or fail with it and give the same elements.
pub fn check(msg: &runtime::Tensor) {
    let decoded = kwaai_core::tensor::decode(msg, &LIMITS);
    let borrowed = kwaai_core::tensor::decode_borrowed(msg, &LIMITS);
    assert_eq!(decoded.is_ok(), borrowed.is_ok());
    if let (Ok(t), Ok(b)) = (decoded, borrowed) {
        let shape: Vec<usize> = msg.size.iter().map(|&d| d as usize).collect();
        assert_eq!(t.shape(), &shape[..]);
        assert_eq!(t.dtype().name(), msg.dtype);
        assert_eq!(t.numel(), shape.iter().product::<usize>());
        assert_eq!((b.view().shape(), b.view().bytes()), (t.shape(), t.as_bytes()));
    }
}
