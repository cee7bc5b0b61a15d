//! `kwaainet calibrate`: loads a few blocks of a model, measures their memory and their speed
//! generating token by token, and recommends how many blocks this machine can serve.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use kwaai_core::model::{BlockSpan, LoadOptions, ModelConfig};
use serde::Serialize;

use crate::args::CalibrateArgs;
use crate::failure::Failure;

/// Share of the memory that the blocks and their caches may fill.
const MEMORY_SHARE: f64 = 0.9;
const GIB: f64 = (1u64 << 30) as f64;

/// What calibration measured and recommends.
#[derive(Debug, Serialize)]
pub struct Calibration {
    /// Blocks in the model.
    pub model_blocks: usize,
    /// Blocks loaded for the measurement.
    pub measured_blocks: usize,
    /// Weight bytes of one block, as held in memory.
    pub weight_bytes_per_block: u64,
    /// Growth of the process's resident memory per loaded block (Linux only).
    pub resident_bytes_per_block: Option<u64>,
    /// Attention cache bytes of one block for `cache_tokens` tokens.
    pub cache_bytes_per_block: u64,
    /// Tokens per second through one block, generating one token at a time.
    pub tokens_per_s_per_block: f64,
    /// Memory planned for, in bytes.
    pub memory_bytes: u64,
    /// The recommended `--num-blocks`.
    pub recommended_num_blocks: usize,
    /// Tokens per second through the recommended span.
    pub tokens_per_s_recommended: f64,
}

fn bar(len: u64, message: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_message(message)
}

/// Resident memory of this process in bytes (Linux), from /proc/self/statm.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Memory available now in bytes (Linux), from /proc/meminfo.
fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// How many blocks of `per_block` bytes fit in `memory`, at most `model_blocks`.
pub fn recommend(memory: u64, per_block: u64, model_blocks: usize) -> usize {
    if per_block == 0 {
        return model_blocks;
    }
    (((memory as f64 * MEMORY_SHARE) / per_block as f64).floor() as usize).min(model_blocks)
}

/// Loads and measures; prints a report (or JSON).
pub fn run(args: &CalibrateArgs) -> Result<(), Failure> {
    let calibration = calibrate(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&calibration).map_err(|e| Failure::new(e.to_string()))?);
        return Ok(());
    }
    let c = &calibration;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("model blocks: {} (measured {})", c.model_blocks, c.measured_blocks);
    println!("weights per block: {:.1} MiB", mib(c.weight_bytes_per_block));
    if let Some(r) = c.resident_bytes_per_block {
        println!("resident memory per block: {:.1} MiB", mib(r));
    }
    println!("attention cache per block: {:.1} MiB ({} tokens)", mib(c.cache_bytes_per_block), args.cache_tokens);
    println!("speed: {:.1} tokens/s per block", c.tokens_per_s_per_block);
    println!("memory planned for: {:.2} GiB", c.memory_bytes as f64 / GIB);
    println!(
        "recommended: --num-blocks {} (about {:.1} tokens/s through them)",
        c.recommended_num_blocks, c.tokens_per_s_recommended
    );
    Ok(())
}

fn calibrate(args: &CalibrateArgs) -> Result<Calibration, Failure> {
    let dir: &Path = &args.model;
    let model =
        ModelConfig::from_dir(dir).map_err(|e| Failure::usage(format!("model {}: {}", dir.display(), e.message())))?;
    let n = args.blocks.clamp(1, model.num_layers);
    let loading = bar(0, "loading");
    let mut bytes_read = 0u64;
    let before = resident_bytes();
    let span = {
        let mut progress = |p: kwaai_core::model::LoadProgress| {
            loading.set_length(p.tensors_total as u64);
            loading.set_position(p.tensors_done as u64);
            bytes_read = p.bytes_done;
        };
        BlockSpan::load(dir, 0, n, LoadOptions { progress: Some(&mut progress), ..LoadOptions::default() })?
    };
    loading.finish();
    let after = resident_bytes();
    // float16 weights are widened to float32 in memory; float32 and bfloat16 stay as stored.
    let widen = if span.stored_dtype() == DType::F16 { 2 } else { 1 };
    let weight_bytes_per_block = bytes_read * widen / n as u64;
    let resident_bytes_per_block = before.zip(after).map(|(b, a)| a.saturating_sub(b) / n as u64);
    let cache_bytes_per_block = (2 * model.num_kv_heads * model.head_dim() * 4 * args.cache_tokens) as u64;

    let steps = args.steps.max(1);
    let measuring = bar(steps as u64, "measuring");
    let mut cache = span.new_cache(steps + 1);
    let token = Tensor::randn(0f32, 1.0, (1, 1, model.hidden_size), &Device::Cpu).map_err(kwaai_core::Error::from)?;
    span.forward_with_cache(&token, None, &mut cache)?; // warm-up, not timed
    let t = Instant::now();
    for _ in 0..steps {
        span.forward_with_cache(&token, None, &mut cache)?;
        measuring.inc(1);
    }
    let elapsed = t.elapsed().as_secs_f64().max(1e-9);
    measuring.finish();
    let tokens_per_s_per_block = steps as f64 * n as f64 / elapsed;

    let memory_bytes = match args.memory {
        Some(gib) if gib.is_finite() && gib > 0.0 => (gib * GIB) as u64,
        Some(gib) => return Err(Failure::usage(format!("--memory {gib} must be a positive number of GiB"))),
        None => available_bytes()
            .ok_or_else(|| Failure::usage("cannot read the available memory here: give --memory GIB"))?,
    };
    let per_block = weight_bytes_per_block.max(resident_bytes_per_block.unwrap_or(0)) + cache_bytes_per_block;
    let recommended_num_blocks = recommend(memory_bytes, per_block, model.num_layers);
    Ok(Calibration {
        model_blocks: model.num_layers,
        measured_blocks: n,
        weight_bytes_per_block,
        resident_bytes_per_block,
        cache_bytes_per_block,
        tokens_per_s_per_block,
        memory_bytes,
        recommended_num_blocks,
        tokens_per_s_recommended: tokens_per_s_per_block / recommended_num_blocks.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendation_fills_ninety_percent_and_caps_at_the_model() {
        assert_eq!(recommend(1000, 100, 80), 9);
        assert_eq!(recommend(1000, 100, 4), 4);
        assert_eq!(recommend(50, 100, 4), 0);
    }
}
