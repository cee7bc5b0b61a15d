//! The expected values of the browser tests (`tests/fixtures/native.json`), computed here by the
//! native kwaai-core: every codec's bytes for fixed tensors, seeded sampling picks and tokenizer
//! ids. The file is committed; this test fails when kwaai-core's output drifts from it
//! (`KWAAI_BLESS=1 cargo test -p kwaai-wasm --test native_fixtures` rewrites it).
#![cfg(not(target_arch = "wasm32"))]

use kwaai_core::model::{Sampler, SamplingConfig, TextTokenizer};
use kwaai_core::tensor::{decode, encode, CompressionType, DType, Data, DecodeLimits, Tensor};
use prost::Message;
use serde_json::{json, Value};

const CODECS: [&str; 6] = ["NONE", "FLOAT16", "MEANSTD_16BIT", "QUANTILE_8BIT", "UNIFORM_8BIT", "BLOCKWISE_8BIT"];

/// Values exact in float32 (multiples of 1/8 in ±8), spread so every codec has work to do.
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 + 11) % 129) as f32 / 8.0 - 8.0).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tensor_cases() -> Vec<Value> {
    let mut cases = Vec::new();
    let mut add = |shape: Vec<usize>, dtype: DType, codec: &str| {
        let n = shape.iter().product();
        let vals = values(n);
        let tensor = Tensor::new(shape.clone(), Data::from_f32(dtype, &vals)).unwrap();
        let compression = CompressionType::from_str_name(codec).unwrap();
        let bytes = encode(&tensor.view(), compression).unwrap().encode_to_vec();
        // What the browser decodes must be what the native decoder reads from the same bytes.
        let msg = kwaai_core::wire::runtime::Tensor::decode(&bytes[..]).unwrap();
        let decoded = decode(&msg, &DecodeLimits::default()).unwrap().view().to_f32().into_owned();
        assert_eq!(decoded.len(), n);
        if codec == "NONE" && dtype == DType::F32 {
            assert_eq!(decoded, vals, "NONE float32 is lossless");
        }
        cases.push(json!({
            "shape": shape, "dtype": dtype.name(), "compression": codec, "values": vals,
            "bytes": hex(&bytes), "decoded": decoded,
        }));
    };
    for codec in CODECS {
        add(vec![3, 100], DType::F32, codec);
    }
    add(vec![2, 3, 7], DType::F16, "NONE");
    add(vec![5, 9], DType::BF16, "NONE");
    add(vec![4, 6], DType::BF16, "BLOCKWISE_8BIT");
    cases
}

fn sampling_cases() -> Vec<Value> {
    let logits: Vec<f32> = (0..32).map(|i| ((i * 13) % 32) as f32 / 4.0 - 3.0).collect();
    let configs = [
        SamplingConfig::default(),
        SamplingConfig { do_sample: true, temperature: 0.8, seed: 7, ..Default::default() },
        SamplingConfig { do_sample: true, top_k: 5, seed: 11, ..Default::default() },
        SamplingConfig { do_sample: true, top_p: 0.6, temperature: 1.3, seed: 3, ..Default::default() },
        SamplingConfig { do_sample: true, repetition_penalty: 1.5, top_k: 4, seed: 5, ..Default::default() },
    ];
    configs
        .into_iter()
        .map(|c| {
            let mut sampler = Sampler::new(c.clone()).unwrap();
            let mut seen = vec![0u32, 1, 2];
            let mut picks = Vec::new();
            for _ in 0..24 {
                let next = sampler.next(&logits, &seen).unwrap();
                seen.push(next);
                picks.push(next);
            }
            json!({
                "do_sample": c.do_sample, "temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p,
                "repetition_penalty": c.repetition_penalty, "seed": c.seed, "logits": logits, "seen": [0, 1, 2],
                "picks": picks,
            })
        })
        .collect()
}

fn tokenizer_cases() -> Vec<Value> {
    let tokenizer = TextTokenizer::from_json(include_str!("fixtures/tokenizer.json")).unwrap();
    ["The browser runs a node in the swarm.", "A node, a swarm"]
        .into_iter()
        .map(|text| {
            let ids = tokenizer.encode(text, true).unwrap();
            json!({ "text": text, "ids": ids, "decoded": tokenizer.decode(&ids, true).unwrap() })
        })
        .collect()
}

#[test]
fn browser_fixtures_match_the_native_core() {
    // The tokenizer's ids are known from its vocabulary, whatever the file says.
    let tokens = tokenizer_cases();
    assert_eq!(tokens[0]["ids"], json!([1, 7, 4, 6, 3, 5, 9, 7, 8, 11]));
    assert_eq!(tokens[0]["decoded"], json!("the browser runs a node in the swarm."));
    let fixtures = json!({ "tensors": tensor_cases(), "sampling": sampling_cases(), "tokenizer": tokens });
    let text = serde_json::to_string_pretty(&fixtures).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/native.json");
    if std::env::var_os("KWAAI_BLESS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "kwaai-wasm/tests/fixtures/native.json is stale: run `KWAAI_BLESS=1 cargo test -p kwaai-wasm --test native_fixtures` and commit it"
    );
}
