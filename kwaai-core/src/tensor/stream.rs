//! Splitting a serialized tensor into stream parts and joining them, as hivemind does
//! (hivemind/utils/streaming.py split_for_streaming, combine_from_streaming;
//! hivemind/compression/serialization.py deserialize_tensor_stream).
//!
//! The first part carries the whole header, the first `chunk_size` bytes and `chunks`; later
//! parts carry only bytes. In a stream, a part with a non-empty `dtype` starts a new tensor;
//! `chunks` is never checked.

use super::codec::{decode, protocol, DecodeLimits};
use super::{checked_numel, Tensor};
use crate::wire::runtime;
use crate::Result;

/// hivemind's default part size (`STREAMING_CHUNK_SIZE_BYTES`), used by the averager.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 16;

/// The part size Petals and hivemind MoE streams use (`DEFAULT_MAX_MSG_SIZE`, 4 MiB).
pub const PETALS_CHUNK_SIZE: usize = 4 << 20;

/// Splits `msg` into parts of at most `chunk_size` buffer bytes (a zero-byte tensor still
/// gives one part). `chunk_size` 0 is treated as 1.
pub fn split(msg: &runtime::Tensor, chunk_size: usize) -> Vec<runtime::Tensor> {
    let chunk_size = chunk_size.max(1);
    let mut pieces = msg.buffer.chunks(chunk_size);
    let first = runtime::Tensor {
        buffer: pieces.next().unwrap_or_default().to_vec(),
        chunks: i32::try_from(msg.buffer.len().div_ceil(chunk_size)).unwrap_or(i32::MAX),
        ..msg.clone_header()
    };
    std::iter::once(first).chain(pieces.map(|p| runtime::Tensor { buffer: p.to_vec(), ..Default::default() })).collect()
}

impl runtime::Tensor {
    /// This message without its buffer or `chunks`.
    fn clone_header(&self) -> runtime::Tensor {
        runtime::Tensor {
            buffer: Vec::new(),
            size: self.size.clone(),
            requires_grad: self.requires_grad,
            dtype: self.dtype.clone(),
            compression: self.compression,
            chunks: 0,
        }
    }
}

/// The most buffer bytes any codec uses for `numel` elements (MEANSTD on a `[n, 1]` shape:
/// 10 bytes each), plus room for headers and codebooks.
fn max_encoded_len(numel: usize) -> Option<usize> {
    numel.checked_mul(10)?.checked_add(4 * numel.div_ceil(4096) + 4096)
}

/// Reassembles tensors from a stream of parts, decoding each as soon as the next begins.
/// The buffer it accumulates is bounded by what the first part's header can need.
#[derive(Debug)]
pub struct StreamJoiner {
    limits: DecodeLimits,
    current: Option<(runtime::Tensor, usize)>,
}

impl StreamJoiner {
    /// A joiner whose decoders obey `limits`.
    pub fn new(limits: DecodeLimits) -> StreamJoiner {
        StreamJoiner { limits, current: None }
    }

    /// Adds one part; returns the previous tensor, decoded, when this part starts a new one.
    pub fn push(&mut self, part: runtime::Tensor) -> Result<Option<Tensor>> {
        if !part.dtype.is_empty() {
            let done = self.finish_current()?;
            let numel = checked_numel(&part.size.iter().map(|&d| d as usize).collect::<Vec<_>>())
                .ok()
                .filter(|&n| n <= self.limits.max_elements)
                .ok_or_else(|| protocol(format!("streamed tensor of shape {:?} is too large", part.size)))?;
            let cap = max_encoded_len(numel).unwrap_or(usize::MAX);
            self.current = Some((runtime::Tensor { buffer: Vec::new(), ..part.clone_header() }, cap));
            self.append(&part.buffer)?;
            return Ok(done);
        }
        if self.current.is_none() {
            return Err(protocol("a stream part without a header does not continue any tensor".into()));
        }
        self.append(&part.buffer)?;
        Ok(None)
    }

    /// Ends the stream; returns the last tensor, if any.
    pub fn finish(mut self) -> Result<Option<Tensor>> {
        self.finish_current()
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some((msg, cap)) = &mut self.current {
            if msg.buffer.len().saturating_add(bytes.len()) > *cap {
                return Err(protocol(format!("streamed tensor parts exceed {cap} bytes for shape {:?}", msg.size)));
            }
            msg.buffer.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finish_current(&mut self) -> Result<Option<Tensor>> {
        match self.current.take() {
            Some((msg, _)) => decode(&msg, &self.limits).map(Some),
            None => Ok(None),
        }
    }
}

/// Joins a whole stream of parts into its tensors.
pub fn join(parts: impl IntoIterator<Item = runtime::Tensor>, limits: &DecodeLimits) -> Result<Vec<Tensor>> {
    let mut joiner = StreamJoiner::new(*limits);
    let mut out = Vec::new();
    for part in parts {
        out.extend(joiner.push(part)?);
    }
    out.extend(joiner.finish()?);
    Ok(out)
}
