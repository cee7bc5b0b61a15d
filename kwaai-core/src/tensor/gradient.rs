//! Gradient compression with error feedback: block-wise 8-bit quantization (sent as
//! BLOCKWISE_8BIT, so any hivemind peer with a working bitsandbytes decodes it) and top-k
//! sparsification (our own compact layout, [`TopK::to_bytes`]).
//!
//! Error feedback keeps what a step's compression lost and adds it to the next gradient, so the
//! sum of what was sent tracks the sum of the true gradients to within one step's error.

use super::codec::{protocol, DecodeLimits};
use super::{quantize_blockwise, CompressionType, DType};
use crate::wire::runtime;
use crate::{Error, Result};

/// Block-wise 8-bit gradient compression with error feedback.
#[derive(Clone, Debug, Default)]
pub struct BlockwiseErrorFeedback {
    residual: Vec<f32>,
}

impl BlockwiseErrorFeedback {
    /// A compressor with no accumulated error.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compresses `grad + residual` into a BLOCKWISE_8BIT float32 message of `shape` and keeps
    /// the new quantization error as the residual. The gradient's length must stay the same.
    pub fn compress(&mut self, grad: &[f32], shape: &[usize]) -> Result<runtime::Tensor> {
        if super::checked_numel(shape)? != grad.len() {
            return Err(Error::invalid_argument(format!("{} gradient values for shape {shape:?}", grad.len())));
        }
        let corrected = corrected(&mut self.residual, grad)?;
        let q = quantize_blockwise(&corrected);
        for ((r, c), d) in self.residual.iter_mut().zip(&corrected).zip(q.dequantize()) {
            *r = c - d;
        }
        Ok(runtime::Tensor {
            buffer: q.to_buffer(),
            size: shape.iter().map(|&d| d as u32).collect(),
            requires_grad: false,
            dtype: DType::F32.name().into(),
            compression: CompressionType::Blockwise8bit as i32,
            chunks: 0,
        })
    }

    /// The error still to be sent.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }
}

/// `grad + residual`, starting the residual at zero on first use.
fn corrected(residual: &mut Vec<f32>, grad: &[f32]) -> Result<Vec<f32>> {
    if residual.is_empty() {
        residual.resize(grad.len(), 0.0);
    }
    if residual.len() != grad.len() {
        return Err(Error::invalid_argument(format!(
            "gradient of {} values after {} values: error feedback needs a fixed size",
            grad.len(),
            residual.len()
        )));
    }
    Ok(grad.iter().zip(residual.iter()).map(|(g, r)| g + r).collect())
}

/// A sparse float32 vector: the `k` largest-magnitude entries of a dense one.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// The dense length.
    pub numel: usize,
    /// Positions of the kept entries, strictly increasing.
    pub indices: Vec<u32>,
    /// The kept values, in the same order.
    pub values: Vec<f32>,
}

impl TopK {
    /// Keeps the `k` entries of largest magnitude (ties broken by lower index).
    pub fn select(dense: &[f32], k: usize) -> Result<TopK> {
        if u32::try_from(dense.len()).is_err() {
            return Err(Error::invalid_argument("top-k vectors are limited to 2^32 entries"));
        }
        let k = k.min(dense.len());
        let mut order: Vec<u32> = (0..dense.len() as u32).collect();
        let key = |&i: &u32| (std::cmp::Reverse(OrdF32(dense[i as usize].abs())), i);
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by_key(k - 1, key);
        }
        order.truncate(k);
        order.sort_unstable();
        let values = order.iter().map(|&i| dense[i as usize]).collect();
        Ok(TopK { numel: dense.len(), indices: order, values })
    }

    /// The dense vector, zero outside the kept entries.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel];
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            out[i as usize] = v;
        }
        out
    }

    /// `u64 numel ‖ u64 k ‖ u32 indices[k] ‖ f32 values[k]`, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.indices.len());
        out.extend_from_slice(&(self.numel as u64).to_le_bytes());
        out.extend_from_slice(&(self.indices.len() as u64).to_le_bytes());
        out.extend_from_slice(bytemuck::cast_slice(&self.indices));
        out.extend_from_slice(bytemuck::cast_slice(&self.values));
        out
    }

    /// Parses [`TopK::to_bytes`]; rejects sizes over `limits`, a length that does not match,
    /// and indices that are out of range or not strictly increasing.
    pub fn from_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<TopK> {
        let word = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let (numel, k) = match (word(0), word(8)) {
            (Some(n), Some(k)) => (n, k),
            _ => return Err(protocol("top-k header is truncated".into())),
        };
        // u32 indices address at most 2^32 entries (compared in u64: usize may be 32 bits wide).
        let numel = Some(numel)
            .filter(|&n| n <= u64::from(u32::MAX) + 1)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= limits.max_elements)
            .ok_or_else(|| protocol(format!("top-k vector of {numel} entries exceeds the limit")))?;
        let k = usize::try_from(k)
            .ok()
            .filter(|&k| k <= numel)
            .ok_or_else(|| protocol(format!("top-k keeps {k} of {numel}")))?;
        if bytes.len() != 16 + 8 * k {
            return Err(protocol(format!("top-k body of {} bytes for k = {k}", bytes.len())));
        }
        let indices: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[16..16 + 4 * k]);
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[16 + 4 * k..]);
        let increasing = indices.windows(2).all(|w| w[0] < w[1]);
        if !increasing || indices.last().is_some_and(|&i| i as usize >= numel) {
            return Err(protocol("top-k indices must be increasing and in range".into()));
        }
        Ok(TopK { numel, indices, values })
    }
}

/// Top-k sparsification with error feedback: entries not sent stay in the residual.
#[derive(Clone, Debug, Default)]
pub struct TopKErrorFeedback {
    residual: Vec<f32>,
}

impl TopKErrorFeedback {
    /// A compressor with no accumulated error.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the `k` largest entries of `grad + residual`; the rest becomes the residual.
    pub fn compress(&mut self, grad: &[f32], k: usize) -> Result<TopK> {
        let corrected = corrected(&mut self.residual, grad)?;
        let sparse = TopK::select(&corrected, k)?;
        self.residual = corrected;
        for &i in &sparse.indices {
            self.residual[i as usize] = 0.0;
        }
        Ok(sparse)
    }

    /// The error still to be sent.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }
}

/// f32 ordered by `total_cmp`, for selection.
#[derive(Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
