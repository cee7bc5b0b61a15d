//! bfloat16 and float16 checkpoints: they load and run (math in float32) and match transformers' bfloat16.

mod model_common;

use std::collections::HashMap;

use candle_core::DType;
use kwaai_core::model::BlockSpan;
use model_common::{check_cached_decode, check_span_forward, load_span, rel_err, Fixture};

const REFERENCE: &[&str] = &["--start", "1", "--end", "3", "--batch", "2", "--seq", "40"];

fn bf16_fixture(family: &str) -> Fixture {
    Fixture::new(&["--family", family, "--dtype", "bfloat16"], REFERENCE)
}

/// The Llama fixture, shared by two tests.
fn llama_bf16() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| bf16_fixture("llama"))
}

#[test]
fn llama_bf16_matches_transformers_bf16() {
    let f = llama_bf16();
    let span = load_span(f, 1, 3);
    assert_eq!(span.stored_dtype(), DType::BF16);
    assert_eq!(f.get("hidden_in").dtype(), DType::BF16);
    check_span_forward(f, &span, 2e-2);
    check_cached_decode(f, &span, 2e-2);
}

#[test]
fn bloom_bf16_matches_transformers_bf16() {
    let f = bf16_fixture("bloom");
    let span = load_span(&f, 1, 3);
    check_span_forward(&f, &span, 2e-2);
    check_cached_decode(&f, &span, 2e-2);
}

#[test]
fn falcon_bf16_matches_transformers_bf16() {
    let f = bf16_fixture("falcon");
    let span = load_span(&f, 1, 3);
    check_span_forward(&f, &span, 2e-2);
    check_cached_decode(&f, &span, 2e-2);
}

/// A float16 copy of a checkpoint computes exactly what a float32 checkpoint of the same values does (transformers
/// cannot run float16 on the CPU, so float16 weights are widened to float32).
#[test]
fn float16_checkpoint_equals_float32_of_the_same_values() {
    let f = llama_bf16();
    let src = f.model_dir();
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let write = |name: &str, dtype: DType| {
        let dir = f.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let converted: HashMap<String, candle_core::Tensor> = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap().to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&converted, dir.join("model.safetensors")).unwrap();
        BlockSpan::load(&dir, 1, 3, Default::default()).unwrap()
    };
    let half = write("f16", DType::F16);
    let single = write("f32", DType::F32);
    assert_eq!(half.stored_dtype(), DType::F16);
    assert_eq!(single.stored_dtype(), DType::F32);
    let x = f.get("hidden_in").to_dtype(DType::F32).unwrap();
    let out_half = half.forward(&x, None).unwrap();
    let out_single = single.forward(&x, None).unwrap();
    assert_eq!(rel_err(&out_half, &out_single), 0.0, "float16 weights must widen exactly");
    let f16_in = half.forward(&x.to_dtype(DType::F16).unwrap(), None).unwrap();
    assert_eq!(f16_in.dtype(), DType::F16, "float16 hidden states come back as float16");
}
