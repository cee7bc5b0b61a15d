//! Per-session key/value caches.

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// The keys and values one block has seen, each (B, Hkv, S, head_dim), after positions are applied.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl LayerCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(2).ok()).unwrap_or(0)
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends new keys and values; returns everything held.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => {
                (Tensor::cat(&[pk, &k], 2)?.contiguous()?, Tensor::cat(&[pv, &v], 2)?.contiguous()?)
            }
            _ => (k, v),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
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
            *self = LayerCache::default();
        } else if let (Some(k), Some(v)) = (&self.k, &self.v) {
            self.k = Some(k.narrow(D::Minus2, 0, len)?.contiguous()?);
            self.v = Some(v.narrow(D::Minus2, 0, len)?.contiguous()?);
        }
        Ok(())
    }
}

/// The caches of every block of a span for one inference session, bounded by `max_length` tokens.
#[derive(Debug, Clone)]
pub struct SessionCache {
    pub(crate) layers: Vec<LayerCache>,
    max_length: usize,
}

impl SessionCache {
    /// An empty cache for `num_blocks` blocks.
    pub fn new(num_blocks: usize, max_length: usize) -> Self {
        SessionCache { layers: vec![LayerCache::default(); num_blocks], max_length }
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
        let batch = self.layers.first().and_then(|l| l.k.as_ref()).map(|k| k.dim(0)).transpose()?.unwrap_or(0);
        if let Some(bad) = hypo_ids.iter().find(|&&i| i as usize >= batch) {
            return Err(Error::invalid_argument(format!("hypo id {bad} out of range for batch {batch}")));
        }
        if batch == 0 {
            return Ok(());
        }
        let ids = Tensor::new(hypo_ids, &candle_core::Device::Cpu)?;
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
