//! A span [start, end) of a model's blocks: what a server holds and runs.

use candle_core::{DType, Tensor, Var};

use super::bloom::BloomBlock;
use super::cache::{LayerCache, SessionCache};
use super::config::{Family, ModelConfig};
use super::falcon::FalconBlock;
use super::llama::LlamaBlock;
use super::ops::{Rounding, COMPUTE_DTYPE};
use super::weights::{Checkpoint, LoadProgress, Loader};
use crate::{Error, Result};

/// One decoder block of any family.
#[derive(Debug, Clone)]
pub enum Block {
    /// A Llama block.
    Llama(LlamaBlock),
    /// A BLOOM block.
    Bloom(BloomBlock),
    /// A Falcon block.
    Falcon(FalconBlock),
}

impl Block {
    /// Runs the block, appending to `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut LayerCache) -> Result<Tensor> {
        match self {
            Block::Llama(b) => b.forward(x, cache),
            Block::Bloom(b) => b.forward(x, cache),
            Block::Falcon(b) => b.forward(x, cache),
        }
    }
}

/// Options for [`BlockSpan::from_checkpoint`] and `BlockSpan::load`.
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// Called after each tensor is read.
    pub progress: Option<&'a mut dyn FnMut(LoadProgress)>,
    /// Quantize the blocks' linear layers to 8 bits per weight (one scale per output row); the norms stay as
    /// they are.
    pub quantize_8bit: bool,
}

/// The prefix of block `i`'s tensor names in this checkpoint.
pub(crate) fn block_prefix(ckpt: &Checkpoint, family: Family, i: usize) -> Result<String> {
    let (candidates, probe): (&[&str], &str) = match family {
        Family::Llama => (&["model.layers.", "layers."], "input_layernorm.weight"),
        Family::Bloom => (&["h.", "transformer.h."], "input_layernorm.weight"),
        Family::Falcon => (&["transformer.h.", "h."], "self_attention.dense.weight"),
    };
    candidates
        .iter()
        .map(|c| format!("{c}{i}."))
        .find(|p| ckpt.contains(&format!("{p}{probe}")))
        .ok_or_else(|| Error::invalid_argument(format!("the checkpoint has no block {i} ({family:?} layout)")))
}

/// Fails unless `start..end` is a non-empty span of the model's blocks.
pub(super) fn check_span(config: &ModelConfig, start: usize, end: usize) -> Result<()> {
    if start >= end || end > config.num_layers {
        return Err(Error::invalid_argument(format!(
            "span [{start}, {end}) is empty or past the model's {} blocks",
            config.num_layers
        )));
    }
    Ok(())
}

/// Blocks `start..end` of a model, loaded into memory and ready to run.
#[derive(Debug, Clone)]
pub struct BlockSpan {
    config: ModelConfig,
    start: usize,
    blocks: Vec<Block>,
    stored_dtype: DType,
}

impl BlockSpan {
    /// Reads blocks `start..end` of the model `config` describes from its checkpoint, and only their tensors.
    pub fn from_checkpoint(
        config: ModelConfig,
        ckpt: &Checkpoint,
        start: usize,
        end: usize,
        options: LoadOptions<'_>,
    ) -> Result<Self> {
        check_span(&config, start, end)?;
        let per_block = match config.family {
            Family::Llama => LlamaBlock::tensors(&config),
            Family::Bloom => BloomBlock::TENSORS,
            Family::Falcon => FalconBlock::tensors(&config),
        };
        let first = block_prefix(ckpt, config.family, start)?;
        let probe = ckpt
            .names()
            .find(|n| n.starts_with(&first))
            .ok_or_else(|| Error::invalid_argument(format!("the checkpoint has no tensors under {first}")))?
            .to_owned();
        let stored_dtype = ckpt.dtype_of(&probe)?;
        let mut loader = Loader {
            ckpt,
            dtype: COMPUTE_DTYPE,
            done: 0,
            total: per_block * (end - start),
            bytes: 0,
            progress: options.progress,
            quantize: options.quantize_8bit,
        };
        // transformers runs bfloat16 checkpoints in bfloat16 on the CPU (rounding after each op) and cannot run
        // float16 ones there at all, so float16 weights are widened and computed like float32.
        let round = Rounding((stored_dtype == DType::BF16).then_some(DType::BF16));
        let mut blocks = Vec::with_capacity(end - start);
        for i in start..end {
            let p = block_prefix(ckpt, config.family, i)?;
            blocks.push(match config.family {
                Family::Llama => Block::Llama(LlamaBlock::load(&mut loader, &p, &config, round)?),
                Family::Bloom => Block::Bloom(BloomBlock::load(&mut loader, &p, &config, round)?),
                Family::Falcon => Block::Falcon(FalconBlock::load(&mut loader, &p, &config, round)?),
            });
        }
        Ok(BlockSpan { config, start, blocks, stored_dtype })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The first block index.
    pub fn start(&self) -> usize {
        self.start
    }

    /// One past the last block index.
    pub fn end(&self) -> usize {
        self.start + self.blocks.len()
    }

    /// The dtype the checkpoint stores (compute runs in float32).
    pub fn stored_dtype(&self) -> DType {
        self.stored_dtype
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// A fresh inference cache for this span, bounded by `max_length` tokens.
    pub fn new_cache(&self, max_length: usize) -> SessionCache {
        SessionCache::new(self.blocks.len(), max_length)
    }

    fn check_hidden(&self, hidden: &Tensor) -> Result<()> {
        let dims = hidden.dims();
        if dims.len() != 3 || dims[2] != self.config.hidden_size || dims[0] == 0 || dims[1] == 0 {
            return Err(Error::invalid_argument(format!(
                "hidden states must be (batch, seq, {}), got {dims:?}",
                self.config.hidden_size
            )));
        }
        Ok(())
    }

    fn check_prompts(&self, hidden: &Tensor, prompts: Option<&Tensor>) -> Result<()> {
        if let Some(p) = prompts {
            let (n, b, t, h) = p.dims4()?;
            let (hb, ht, _) = hidden.dims3()?;
            if n != self.blocks.len() || (b != hb && b != 1) || t > ht || h != self.config.hidden_size {
                return Err(Error::invalid_argument(format!(
                    "prompts must be ({}, batch, <= {ht}, {}), got {:?}",
                    self.blocks.len(),
                    self.config.hidden_size,
                    p.dims()
                )));
            }
        }
        Ok(())
    }

    /// Runs every block with `cache`, Petals-style: before block `i`, `prompts[i]` (batch, P, hidden) is added
    /// to the first P positions of this call's hidden states. The result has the input's dtype.
    pub fn forward_with_cache(
        &self,
        hidden: &Tensor,
        prompts: Option<&Tensor>,
        cache: &mut SessionCache,
    ) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        self.check_prompts(hidden, prompts)?;
        cache.check_room(hidden.dim(1)?)?;
        if cache.layers.len() != self.blocks.len() {
            return Err(Error::invalid_argument("the cache was made for another span"));
        }
        let start_len = cache.len();
        let result = self.run_blocks(hidden, prompts, cache);
        if result.is_err() {
            // A failed step leaves the cache as it was.
            cache.truncate(start_len)?;
        }
        result
    }

    fn run_blocks(&self, hidden: &Tensor, prompts: Option<&Tensor>, cache: &mut SessionCache) -> Result<Tensor> {
        let in_dtype = hidden.dtype();
        let mut x = hidden.to_dtype(COMPUTE_DTYPE)?;
        for (i, (block, layer)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            if let Some(p) = prompts {
                x = add_prompt(&x, &p.get(i)?.to_dtype(COMPUTE_DTYPE)?)?;
            }
            x = block.forward(&x, layer)?;
        }
        Ok(x.to_dtype(in_dtype)?)
    }

    /// Runs every block over whole sequences, without keeping a cache.
    pub fn forward(&self, hidden: &Tensor, prompts: Option<&Tensor>) -> Result<Tensor> {
        let mut cache = self.new_cache(hidden.dim(1).unwrap_or(0));
        self.forward_with_cache(hidden, prompts, &mut cache)
    }

    /// Gradients of `sum(forward(hidden, prompts) * grad_output)` with respect to `hidden` and (if given)
    /// `prompts`: the backward pass of Petals' fine-tuning RPCs.
    pub fn backward(
        &self,
        hidden: &Tensor,
        prompts: Option<&Tensor>,
        grad_output: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_hidden(hidden)?;
        self.check_prompts(hidden, prompts)?;
        if grad_output.dims() != hidden.dims() {
            return Err(Error::invalid_argument(format!(
                "grad_output {:?} must match hidden states {:?}",
                grad_output.dims(),
                hidden.dims()
            )));
        }
        let in_dtype = hidden.dtype();
        let x_var = Var::from_tensor(&hidden.to_dtype(COMPUTE_DTYPE)?)?;
        let p_var = prompts.map(|p| p.to_dtype(COMPUTE_DTYPE).and_then(|p| Var::from_tensor(&p))).transpose()?;
        let mut x = x_var.as_tensor().clone();
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(p) = &p_var {
                x = add_prompt(&x, &p.as_tensor().get(i)?)?;
            }
            x = block.forward(&x, &mut LayerCache::default())?;
        }
        let loss = (x * grad_output.to_dtype(COMPUTE_DTYPE)?)?.sum_all()?;
        let grads = loss.backward()?;
        let gx = match grads.get(x_var.as_tensor()) {
            Some(g) => g.to_dtype(in_dtype)?,
            None => hidden.zeros_like()?,
        };
        let gp = match (&p_var, prompts) {
            (Some(v), Some(p)) => {
                Some(grads.get(v.as_tensor()).map(|g| g.to_dtype(p.dtype())).transpose()?.unwrap_or(p.zeros_like()?))
            }
            _ => None,
        };
        Ok((gx, gp))
    }
}

/// `x[:, :P] += prompt` for a prompt (batch or 1, P, hidden).
fn add_prompt(x: &Tensor, prompt: &Tensor) -> Result<Tensor> {
    let (b, t, h) = x.dims3()?;
    let p = prompt.dim(1)?;
    if p == 0 {
        return Ok(x.clone());
    }
    let prompt = prompt.broadcast_as((b, p, h))?;
    let head = (x.narrow(1, 0, p)? + prompt)?;
    if p == t {
        return Ok(head);
    }
    Ok(Tensor::cat(&[&head, &x.narrow(1, p, t - p)?], 1)?)
}
