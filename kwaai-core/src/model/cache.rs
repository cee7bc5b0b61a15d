//! Per-session key/value caches.

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The keys and values one block has seen, each (B, Hkv, S, head_dim), after positions are applied.
///
/// With a capacity, the buffers are allocated once at (B, Hkv, capacity, head_dim) and each step writes its
/// tokens in place, so a decode step costs no copy of the past. Without one (a plain forward), steps concatenate.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: Option<usize>,
}

impl LayerCache {
    /// An empty cache that will hold at most `capacity` tokens.
    pub fn with_capacity(capacity: usize) -> Self {
        LayerCache { capacity: Some(capacity), ..Default::default() }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends new keys and values; returns everything held (views into the buffers).
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (b, h, t, d) = k.dims4()?;
        let Some(capacity) = self.capacity else {
            let (k, v) = match (&self.k, &self.v) {
                (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                _ => (k, v),
            };
            self.len += t;
            self.k = Some(k.clone());
            self.v = Some(v.clone());
            return Ok((k, v));
        };
        if self.len + t > capacity {
            return Err(Error::invalid_argument(format!("{} tokens exceed the cache's {capacity}", self.len + t)));
        }
        if self.k.as_ref().and_then(|pk| pk.dims4().ok()) != Some((b, h, capacity, d)) {
            if self.len > 0 {
                return Err(Error::invalid_argument("keys changed shape within a session (batch size?)"));
            }
            self.k = Some(Tensor::zeros((b, h, capacity, d), DType::F32, &Device::Cpu)?);
            self.v = Some(Tensor::zeros((b, h, capacity, d), DType::F32, &Device::Cpu)?);
        }
        let (Some(bk), Some(bv)) = (&self.k, &self.v) else {
            return Err(Error::new(crate::ErrorKind::Internal, "cache buffers missing"));
        };
        bk.slice_set(&k, 2, self.len)?;
        bv.slice_set(&v, 2, self.len)?;
        self.len += t;
        Ok((bk.narrow(2, 0, self.len)?, bv.narrow(2, 0, self.len)?))
    }

    fn reorder(&mut self, ids: &Tensor) -> Result<()> {
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            self.k = Some(k.index_select(ids, 0)?);
            self.v = Some(v.index_select(ids, 0)?);
        }
        Ok(())
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len == 0 {
            *self = LayerCache { capacity: self.capacity, ..Default::default() };
        } else if self.capacity.is_none() {
            if let (Some(k), Some(v)) = (&self.k, &self.v) {
                self.k = Some(k.narrow(2, 0, len)?.contiguous()?);
                self.v = Some(v.narrow(2, 0, len)?.contiguous()?);
            }
        }
        self.len = self.len.min(len);
        Ok(())
    }

    fn batch(&self) -> Option<usize> {
        self.k.as_ref().and_then(|k| k.dim(0).ok())
    }
}

/// The caches of every block of a span for one inference session, bounded by `max_length` tokens.
///
/// Not `Clone`: steps write into the buffers in place.
#[derive(Debug)]
pub struct SessionCache {
    pub(crate) layers: Vec<LayerCache>,
    max_length: usize,
}

impl SessionCache {
    /// An empty cache for `num_blocks` blocks.
    pub fn new(num_blocks: usize, max_length: usize) -> Self {
        SessionCache { layers: (0..num_blocks).map(|_| LayerCache::with_capacity(max_length)).collect(), max_length }
    }

    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.layers.first().map(LayerCache::len).unwrap_or(0)
    }

    /// Whether nothing was processed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound given at creation.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Checks that `new_tokens` more fit.
    pub(crate) fn check_room(&self, new_tokens: usize) -> Result<()> {
        if self.len() + new_tokens > self.max_length {
            return Err(Error::invalid_argument(format!(
                "session cache holds {} tokens; {new_tokens} more exceed max_length {}",
                self.len(),
                self.max_length
            )));
        }
        Ok(())
    }

    /// Reorders the batch rows of every cache by hypothesis ids (beam search): row `i` becomes old row `ids[i]`.
    pub fn reorder(&mut self, hypo_ids: &[u32]) -> Result<()> {
        let batch = self.layers.first().and_then(LayerCache::batch).unwrap_or(0);
        if let Some(bad) = hypo_ids.iter().find(|&&i| i as usize >= batch) {
            return Err(Error::invalid_argument(format!("hypo id {bad} out of range for batch {batch}")));
        }
        if batch == 0 {
            return Ok(());
        }
        let ids = Tensor::new(hypo_ids, &Device::Cpu)?;
        self.layers.iter_mut().try_for_each(|l| l.reorder(&ids))
    }

    /// Drops every token after the first `len` (Petals' `start_from_position`).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len() {
            return Err(Error::invalid_argument(format!("cannot rewind to {len}: only {} tokens held", self.len())));
        }
        self.layers.iter_mut().try_for_each(|l| l.truncate(len))
    }
}
