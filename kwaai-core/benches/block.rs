//! A Llama-shaped stack (hidden 2048, intermediate 5504, 16 heads, 8 blocks, random weights): 128-token prefill
//! and per-token decode at 128 tokens of context, in float32, bfloat16 and float32 quantized to 8 bits, plus
//! the memory-bandwidth floor (also measured step by step beside decode, for the ratio).
//!
//! `cargo bench -p kwaai-core --bench block` (`KWAAI_BENCH_DTYPES=f32,bf16,q8` picks the variants).
//! Compare with `../shared/reference/bench/block.py` run in the same session.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use kwaai_core::model::{BlockSpan, LoadOptions};

const HIDDEN: usize = 2048;
const INTER: usize = 5504;
const HEADS: usize = 16;
const LAYERS: usize = 8;
const PREFILL: usize = 128;

fn write_model(dir: &Path, dtype: DType) {
    let config = format!(
        r#"{{"model_type": "llama", "hidden_size": {HIDDEN}, "intermediate_size": {INTER},
            "num_hidden_layers": {LAYERS}, "num_attention_heads": {HEADS}, "num_key_value_heads": {HEADS},
            "vocab_size": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut t = HashMap::new();
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}.");
        let mut put = |name: &str, shape: &[usize]| {
            let w = if shape.len() == 1 {
                Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
            } else {
                Tensor::randn(0f32, 0.02, shape, &Device::Cpu).unwrap()
            };
            t.insert(format!("{p}{name}"), w.to_dtype(dtype).unwrap());
        };
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            put(&format!("self_attn.{proj}.weight"), &[HIDDEN, HIDDEN]);
        }
        put("mlp.gate_proj.weight", &[INTER, HIDDEN]);
        put("mlp.up_proj.weight", &[INTER, HIDDEN]);
        put("mlp.down_proj.weight", &[HIDDEN, INTER]);
        put("input_layernorm.weight", &[HIDDEN]);
        put("post_attention_layernorm.weight", &[HIDDEN]);
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}

/// Best-of-5 single-thread copy bandwidth of a 1 GiB buffer, in GB/s (bytes copied once).
fn copy_bandwidth() -> f64 {
    let n = (1usize << 30) / 4;
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    dst.copy_from_slice(&src);
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            t.elapsed()
        })
        .min()
        .unwrap();
    (n * 4) as f64 / best.as_secs_f64() / 1e9
}

/// Best-of-5 read bandwidth of a 1 GiB buffer summed by every thread (rayon), in GB/s: how fast decoding can
/// stream weights at most.
fn read_bandwidth() -> f64 {
    let src = vec![1u64; (1usize << 30) / 8];
    let best = (0..5).map(|_| read_all(&src)).min().unwrap();
    (src.len() * 8) as f64 / best.as_secs_f64() / 1e9
}

/// How long every thread (rayon) takes to sum `src` once.
fn read_all(src: &[u64]) -> Duration {
    use rayon::prelude::*;
    let t = Instant::now();
    // Integer adds reorder freely, so the sum vectorizes and the loop is bound by memory.
    let s: u64 =
        src.par_chunks(1 << 17).map(|c| c.iter().fold(0u64, |a, b| a.wrapping_add(*b))).reduce(|| 0, u64::wrapping_add);
    std::hint::black_box(s);
    t.elapsed()
}

/// Decode time over the read floor measured right before it, pair by pair (this machine's memory bandwidth
/// swings from minute to minute): one decode step, then the same number of bytes as the weights read by every
/// thread, 15 times. Returns the median, lowest and highest ratio.
fn paired_floor_ratio(weight_bytes: usize, mut decode: impl FnMut()) -> (f64, f64, f64) {
    let src = vec![1u64; weight_bytes.div_ceil(8)];
    read_all(&src);
    let mut ratios: Vec<f64> = (0..15)
        .map(|_| {
            let floor = read_all(&src);
            let t = Instant::now();
            decode();
            t.elapsed().as_secs_f64() / floor.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[ratios.len() / 2], ratios[0], ratios[ratios.len() - 1])
}

fn weight_bytes(dtype: DType) -> usize {
    LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER) * dtype.size_in_bytes()
}

fn bench(c: &mut Criterion) {
    let bw = copy_bandwidth();
    let rbw = read_bandwidth();
    eprintln!("copy bandwidth (1 thread, 1 GiB, best of 5): {bw:.2} GB/s; read bandwidth (all threads): {rbw:.2} GB/s");
    let dtypes = std::env::var("KWAAI_BENCH_DTYPES").unwrap_or_else(|_| "f32,bf16,q8".into());
    for name in dtypes.split(',') {
        let (dtype, quantize_8bit) = match name {
            "f32" => (DType::F32, false),
            "bf16" => (DType::BF16, false),
            "q8" => (DType::F32, true),
            other => panic!("unknown dtype {other}"),
        };
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), dtype);
        let options = LoadOptions { quantize_8bit, ..Default::default() };
        let span = BlockSpan::load(tmp.path(), 0, LAYERS, options).unwrap();
        drop(tmp);
        let wb = if quantize_8bit { weight_bytes(DType::U8) } else { weight_bytes(dtype) };
        eprintln!(
            "{name}: stored weights {:.3} GB; floor {:.1} ms/token at the copy bandwidth (bytes read once), {:.1} ms at \
             the all-thread read bandwidth",
            wb as f64 / 1e9,
            wb as f64 / (bw * 1e9) * 1e3,
            wb as f64 / (rbw * 1e9) * 1e3
        );
        let x = Tensor::randn(0f32, 1.0, (1, PREFILL, HIDDEN), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let tok = Tensor::randn(0f32, 1.0, (1, 1, HIDDEN), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let mut g = c.benchmark_group(format!("block_{name}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(8));
        g.bench_function("prefill_128", |b| {
            b.iter(|| {
                let mut cache = span.new_cache(PREFILL + 1);
                span.forward_with_cache(&x, None, &mut cache).unwrap()
            })
        });
        let mut prefilled = span.new_cache(PREFILL + 1);
        span.forward_with_cache(&x, None, &mut prefilled).unwrap();
        g.bench_function("decode_token_at_128", |b| {
            b.iter(|| {
                let y = span.forward_with_cache(&tok, None, &mut prefilled).unwrap();
                prefilled.truncate(PREFILL).unwrap();
                y
            })
        });
        g.finish();
        let (median, low, high) = paired_floor_ratio(wb, || {
            std::hint::black_box(span.forward_with_cache(&tok, None, &mut prefilled).unwrap());
            prefilled.truncate(PREFILL).unwrap();
        });
        eprintln!("{name}: decode / read floor, paired: median {median:.2}x (lowest {low:.2}x, highest {high:.2}x)");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
