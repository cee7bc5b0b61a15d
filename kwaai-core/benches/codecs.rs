//! Encode and decode throughput of every hivemind codec on 16 Mi float32 values drawn from
//! N(0, 1), in GB/s of float32 input, next to a plain memcpy of the same 64 MiB.
//! Compare with ../shared/reference/bench/codecs.py run on the same machine.
//!
//! `encode` allocates a fresh message each time (as hivemind does); `encode_into` reuses one.
//! `decode` allocates a fresh tensor; `decode_into` reuses one; NONE's `decode_borrowed` copies nothing.
//!
//! `cargo bench -p kwaai-core --bench codecs` (set KWAAI_BENCH_ELEMENTS to change the size).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kwaai_core::tensor::{self, CompressionType, Data, DecodeLimits, Tensor};

fn input() -> Tensor {
    let n: usize = std::env::var("KWAAI_BENCH_ELEMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16 << 20);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let values = (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-300), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect();
    Tensor::new(vec![n], Data::F32(values)).expect("a valid shape")
}

fn bench(c: &mut Criterion) {
    let x = input();
    let bytes = x.as_bytes().len() as u64;
    let mut group = c.benchmark_group("codecs");
    group.sample_size(10).warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(4));
    group.throughput(Throughput::BytesDecimal(bytes));

    let mut dst = vec![0u8; x.as_bytes().len()];
    group.bench_function("memcpy", |b| b.iter(|| dst.copy_from_slice(black_box(x.as_bytes()))));

    let limits = DecodeLimits::default();
    for codec in [
        CompressionType::None,
        CompressionType::Float16,
        CompressionType::Meanstd16bit,
        CompressionType::Uniform8bit,
        CompressionType::Quantile8bit,
        CompressionType::Blockwise8bit,
    ] {
        let name = codec.as_str_name();
        group.bench_function(format!("{name}/encode"), |b| {
            b.iter_batched(
                || (),
                |()| tensor::encode(black_box(&x.view()), codec).expect("encodes"),
                BatchSize::PerIteration,
            )
        });
        // The same, writing into a message whose buffer is reused from the previous iteration.
        let mut reused = tensor::encode(&x.view(), codec).expect("encodes");
        group.bench_function(format!("{name}/encode_into"), |b| {
            b.iter(|| tensor::encode_into(black_box(&x.view()), codec, &mut reused).expect("encodes"))
        });
        let msg = tensor::encode(&x.view(), codec).expect("encodes");
        group.bench_function(format!("{name}/decode"), |b| {
            b.iter_batched(
                || (),
                |()| tensor::decode(black_box(&msg), &limits).expect("decodes"),
                BatchSize::PerIteration,
            )
        });
        if codec == CompressionType::None {
            // Reading the message's elements in place, as hivemind's NONE decode views its bytes.
            group.bench_function(format!("{name}/decode_borrowed"), |b| {
                b.iter(|| tensor::decode_borrowed(black_box(&msg), &limits).expect("decodes").view().numel())
            });
        }
        // The same, decoding into a tensor whose storage is reused (NONE and FLOAT16 only).
        let mut into = tensor::decode(&msg, &limits).expect("decodes");
        group.bench_function(format!("{name}/decode_into"), |b| {
            b.iter(|| tensor::decode_into(black_box(&msg), &limits, &mut into).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
