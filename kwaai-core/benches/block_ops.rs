//! Where prefill time goes: the pieces of one Llama-shaped block (hidden 2048, intermediate 5504) over 128
//! tokens, each timed alone. `cargo bench -p kwaai-core --bench block_ops`.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (128, 2048), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.02, (5504, 2048), &dev).unwrap();
    let wt = w.t().unwrap().contiguous().unwrap();
    let wb = w.to_dtype(DType::BF16).unwrap();
    let mut g = c.benchmark_group("block_ops");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(3));
    g.bench_function("matmul_128x2048x5504_w_transposed_view", |b| b.iter(|| x.matmul(&w.t().unwrap()).unwrap()));
    g.bench_function("matmul_128x2048x5504_w_pretransposed", |b| b.iter(|| x.matmul(&wt).unwrap()));
    g.bench_function("bf16_to_f32_5504x2048_candle", |b| b.iter(|| wb.to_dtype(DType::F32).unwrap()));
    // The prefill matmuls (AVX-512), bfloat16 on the same values rounded to bfloat16.
    use kwaai_core::model::{matmul_t_prefill, WeightBits};
    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let ws: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    if matmul_t_prefill(&xs, 128, 2048, WeightBits::F32(&ws), 5504, false).is_some() {
        g.bench_function("matmul_prefill_f32_128x2048x5504", |b| {
            b.iter(|| matmul_t_prefill(&xs, 128, 2048, WeightBits::F32(&ws), 5504, false).unwrap())
        });
    }
    let xb: Vec<f32> =
        x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let bits: Vec<u16> =
        wb.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap().iter().map(|v| v.to_bits()).collect();
    if matmul_t_prefill(&xb, 128, 2048, WeightBits::Bf16(&bits), 5504, true).is_some() {
        g.bench_function("matmul_prefill_bf16_128x2048x5504", |b| {
            b.iter(|| matmul_t_prefill(&xb, 128, 2048, WeightBits::Bf16(&bits), 5504, true).unwrap())
        });
        // The down projection's shape: the inner size is the intermediate one.
        let xd: Vec<f32> = xb.iter().cycle().take(128 * 5504).copied().collect();
        g.bench_function("matmul_prefill_bf16_128x5504x2048", |b| {
            b.iter(|| matmul_t_prefill(&xd, 128, 5504, WeightBits::Bf16(&bits), 2048, true).unwrap())
        });
    }
    let y = x.matmul(&wt).unwrap();
    g.bench_function("round_trip_bf16_128x5504", |b| {
        b.iter(|| y.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap())
    });
    g.bench_function("silu_mul_128x5504", |b| b.iter(|| (y.silu().unwrap() * &y).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
