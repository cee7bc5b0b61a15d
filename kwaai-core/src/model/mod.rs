//! Transformer blocks on candle: what a Petals server computes for its span of blocks, and what a client
//! computes at the ends (embeddings, final norm, LM head, sampling).
//!
//! Families: Llama (and Mistral-architecture checkpoints), BLOOM and Falcon, computed as transformers 4.33 does.
//! Checkpoints in float32, bfloat16 or float16 load from Hugging Face directories (safetensors, one file or
//! sharded, memory-mapped, only the span's tensors read; with the `native` feature) or from safetensors bytes in
//! memory ([`Checkpoint::from_bytes`]). Math runs in float32 on the CPU: bfloat16 weights stay
//! bfloat16 in memory and are widened as they are read, and activations are rounded to bfloat16 wherever
//! transformers rounds them, so results equal a bfloat16 transformers run; float16 weights are widened (torch
//! cannot run float16 on the CPU). Linear layers can optionally be quantized to 8 bits.
//!
//! - [`BlockSpan`]: a server's span of blocks: forward with a per-session [`SessionCache`] (prefill, then
//!   token by token, beams reordered, rewinds), Petals' deep prompts, and backward for fine-tuning.
//! - [`ClientModel`], [`TextTokenizer`], [`Sampler`] and [`generate`]: the client's ends of the model.

mod attention;
mod bloom;
mod cache;
mod client;
mod config;
mod falcon;
#[cfg(feature = "native")]
mod files;
mod gemm;
mod generate;
mod kernels;
mod llama;
mod ops;
mod sampling;
mod simd;
mod span;
mod threads;
mod tokenizer;
mod weights;

pub use cache::{LayerCache, SessionCache};
pub use client::ClientModel;
pub use config::{FalconLayout, Family, ModelConfig, RopeScaling};
pub use gemm::matmul_t_prefill;
pub use generate::{generate, Generation, GenerationConfig};
pub use kernels::WeightBits;
pub use ops::round_bf16;
pub use sampling::{argmax, Rng, Sampler, SamplingConfig};
pub use span::{Block, BlockSpan, LoadOptions};
pub use tokenizer::{TextDelta, TextTokenizer};
pub use weights::{Checkpoint, LoadProgress};

impl From<candle_core::Error> for crate::Error {
    fn from(e: candle_core::Error) -> Self {
        crate::Error::with_source(crate::ErrorKind::Internal, "tensor operation failed", e)
    }
}
