//! The JavaScript-facing API in headless Chromium (`make test-wasm`): every result is checked
//! against the native kwaai-core's (`fixtures/native.json`, see `native_fixtures.rs`) or against
//! the Python reference's values.
#![cfg(target_arch = "wasm32")]

use kwaai_wasm::dht::{dht_distance, dht_key_id, dht_subkey};
use kwaai_wasm::model::ClientModel;
use kwaai_wasm::sampling::{argmax, Sampler};
use kwaai_wasm::tensor::{decode_tensor, encode_tensor};
use kwaai_wasm::tokenizer::Tokenizer;
use serde_json::Value;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/native.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[wasm_bindgen_test]
fn every_codec_encodes_to_the_native_bytes() {
    let cases = fixtures()["tensors"].as_array().unwrap().clone();
    assert_eq!(cases.len(), 9);
    for case in &cases {
        let shape = u32s(&case["shape"]);
        let (dtype, codec) = (case["dtype"].as_str().unwrap(), case["compression"].as_str().unwrap());
        let bytes = encode_tensor(&f32s(&case["values"]), &shape, dtype, codec).unwrap();
        assert_eq!(bytes, unhex(case["bytes"].as_str().unwrap()), "{dtype} {codec}");
    }
}

#[wasm_bindgen_test]
fn every_codec_decodes_as_the_native_decoder_does() {
    for case in fixtures()["tensors"].as_array().unwrap() {
        let decoded = decode_tensor(&unhex(case["bytes"].as_str().unwrap())).unwrap();
        assert_eq!(decoded.shape(), u32s(&case["shape"]));
        assert_eq!(decoded.dtype(), case["dtype"].as_str().unwrap());
        assert_eq!(decoded.compression(), case["compression"].as_str().unwrap());
        assert_eq!(decoded.values(), f32s(&case["decoded"]), "{}", case["compression"]);
    }
}

#[wasm_bindgen_test]
fn tensor_round_trip_is_lossless_without_compression() {
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    let decoded = decode_tensor(&encode_tensor(&values, &[2, 3, 4], "float32", "NONE").unwrap()).unwrap();
    assert_eq!(decoded.shape(), vec![2, 3, 4]);
    assert_eq!(decoded.values(), values);
}

#[wasm_bindgen_test]
fn bad_tensor_input_is_refused() {
    assert!(encode_tensor(&[1.0, 2.0], &[3], "float32", "NONE").is_err());
    assert!(encode_tensor(&[1.0], &[1], "float32", "ZSTD").is_err());
    assert!(encode_tensor(&[1.0], &[1], "complex64", "NONE").is_err());
    assert!(decode_tensor(&[0xff, 0xff, 0xff]).is_err());
}

#[wasm_bindgen_test]
fn dht_ids_are_hivemind_s() {
    // DHTID.generate(source=key).to_bytes() and MSGPackSerializer.dumps(subkey), from hivemind 1.1.10.
    assert_eq!(dht_key_id("_petals.models"), unhex("0a63ed21831f3f7d24f07949cea69a94476b4faf"));
    assert_eq!(dht_key_id("bigscience/bloom-560m-petals.0"), unhex("104f0a5cd0b897d46330140743b6c2031fffe72c"));
    assert_eq!(dht_subkey("12D3KooWExample"), unhex("af313244334b6f6f574578616d706c65"));
    // int(DHTID.generate("a")) ^ int(DHTID.generate("b"))
    assert_eq!(
        dht_distance(&dht_key_id("a"), &dht_key_id("b")).unwrap(),
        unhex("334418f0cc287bce543fd6fe491b458997b8924f")
    );
    assert!(dht_distance(&[1, 2, 3], &dht_key_id("a")).is_err());
}

#[wasm_bindgen_test]
fn sampling_picks_the_native_tokens() {
    let cases = fixtures()["sampling"].as_array().unwrap().clone();
    assert_eq!(cases.len(), 5);
    for case in &cases {
        let mut sampler = Sampler::new(
            case["do_sample"].as_bool().unwrap(),
            case["temperature"].as_f64().unwrap() as f32,
            case["top_k"].as_u64().unwrap() as u32,
            case["top_p"].as_f64().unwrap() as f32,
            case["repetition_penalty"].as_f64().unwrap() as f32,
            case["seed"].as_u64().unwrap(),
        )
        .unwrap();
        let logits = f32s(&case["logits"]);
        let mut seen = u32s(&case["seen"]);
        let mut picks = Vec::new();
        for _ in 0..24 {
            let next = sampler.next(&logits, &seen).unwrap();
            seen.push(next);
            picks.push(next);
        }
        assert_eq!(picks, u32s(&case["picks"]), "{case}");
    }
}

#[wasm_bindgen_test]
fn greedy_takes_the_first_largest_logit() {
    let logits = [0.5, -1.0, 3.25, 0.0, 3.25];
    assert_eq!(argmax(&logits).unwrap(), 2);
    assert_eq!(Sampler::greedy().next(&logits, &[]).unwrap(), 2);
    assert!(argmax(&[]).is_err());
    // top-k 2 never leaves the two best tokens, and reaches both.
    let mut sampler = Sampler::new(true, 1.0, 2, 1.0, 1.0, 42).unwrap();
    let picks: Vec<u32> = (0..64).map(|_| sampler.next(&[0.0, 1.0, 0.9, 0.2], &[]).unwrap()).collect();
    assert!(picks.iter().all(|&p| p == 1 || p == 2));
    assert!(picks.contains(&1) && picks.contains(&2));
    assert!(Sampler::new(true, 0.0, 0, 1.0, 1.0, 0).is_err(), "temperature 0 while sampling");
    assert!(Sampler::new(false, 1.0, 0, 1.5, 1.0, 0).is_err(), "top_p above 1");
}

#[wasm_bindgen_test]
fn tokenizer_round_trips_as_natively() {
    let tokenizer = Tokenizer::from_json(include_str!("fixtures/tokenizer.json")).unwrap();
    for case in fixtures()["tokenizer"].as_array().unwrap() {
        let ids = tokenizer.encode(case["text"].as_str().unwrap(), true).unwrap();
        assert_eq!(ids, u32s(&case["ids"]));
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), case["decoded"].as_str().unwrap());
    }
    assert_eq!(tokenizer.encode("browser swarm", false).unwrap(), vec![4, 8]);
    assert_eq!(tokenizer.encode("browser zebra", false).unwrap(), vec![4, 0], "unknown words are <unk>");
    assert!(Tokenizer::from_json("{\"not\": \"a tokenizer\"}").is_err());
}

/// A Llama-family model's ends with hidden size 4 and 8 tokens: token i embeds to the i-th of
/// eight distinct ±1 vectors, the final norm's weight is 1 and the LM head is tied to the
/// embeddings, so logit j of token i is (e_i · e_j) / sqrt(1 + eps).
fn tiny_model() -> (Vec<[f32; 4]>, ClientModel) {
    let rows: Vec<[f32; 4]> =
        (0..8u32).map(|i| std::array::from_fn(|b| if b == 3 || (i >> b) & 1 == 1 { 1.0 } else { -1.0 })).collect();
    let emb: Vec<u8> = rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let norm: Vec<u8> = [1f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f32t = safetensors::Dtype::F32;
    let tensors = vec![
        ("model.embed_tokens.weight", safetensors::tensor::TensorView::new(f32t, vec![8, 4], &emb).unwrap()),
        ("model.norm.weight", safetensors::tensor::TensorView::new(f32t, vec![4], &norm).unwrap()),
    ];
    let bytes = safetensors::serialize(tensors, None).unwrap();
    let config = r#"{"model_type": "llama", "hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 1,
        "intermediate_size": 8, "vocab_size": 8, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}"#;
    (rows, ClientModel::from_safetensors(config, bytes).unwrap())
}

#[wasm_bindgen_test]
fn client_model_embeds_and_computes_logits() {
    let (rows, model) = tiny_model();
    assert_eq!((model.hidden_size(), model.vocab_size(), model.num_blocks()), (4, 8, 2));
    let hidden = model.embed(&[3, 0, 6]).unwrap();
    assert_eq!(hidden, [rows[3], rows[0], rows[6]].concat());
    let logits = model.logits(&hidden).unwrap();
    assert_eq!(logits.len(), 3 * 8);
    let scale = (1.0f32 + 1e-6).sqrt();
    for (t, &token) in [3usize, 0, 6].iter().enumerate() {
        let row = &logits[t * 8..(t + 1) * 8];
        for (j, &logit) in row.iter().enumerate() {
            let dot: f32 = rows[token].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
            assert!((logit - dot / scale).abs() < 1e-4, "token {token} logit {j}: {logit} vs {}", dot / scale);
        }
        assert_eq!(argmax(row).unwrap(), token as u32, "a tied head ranks the token itself first");
    }
    assert!(model.embed(&[8]).is_err(), "8 is outside the vocabulary");
    assert!(model.logits(&[1.0, 2.0, 3.0]).is_err(), "not whole rows");
}

/// `options` for `BrowserClient.connect` with these bootstrap addresses.
fn connect_options(bootstrap: &[String]) -> wasm_bindgen::JsValue {
    let options = js_sys::Object::new();
    let addrs: js_sys::Array = bootstrap.iter().map(|a| wasm_bindgen::JsValue::from_str(a)).collect();
    js_sys::Reflect::set(&options, &"bootstrap".into(), &addrs).unwrap();
    js_sys::Reflect::set(&options, &"modelUrl".into(), &"/no-such-model/".into()).unwrap();
    options.into()
}

/// The message of the `Error` that `BrowserClient.connect(options)` rejects with.
async fn connect_error(options: wasm_bindgen::JsValue) -> String {
    let error = kwaai_wasm::browser::BrowserClient::connect(options).await.err().expect("connect is refused");
    String::from(js_sys::Error::from(wasm_bindgen::JsValue::from(error)).message())
}

#[wasm_bindgen_test]
async fn connect_refuses_bad_options_with_the_error_kind() {
    let peer = kwaai_core::PeerId::random();
    let message = connect_error(connect_options(&[])).await;
    assert!(message.starts_with("invalid_argument: ") && message.contains("bootstrap"), "{message}");
    let message = connect_error(connect_options(&["/ip4/127.0.0.1/tcp/1/ws".into()])).await;
    assert!(message.starts_with("invalid_argument: ") && message.contains("/p2p/"), "{message}");
    // A well-formed address: the model's files are fetched first, and they are not there.
    let message = connect_error(connect_options(&[format!("/ip4/127.0.0.1/tcp/1/ws/p2p/{peer}")])).await;
    assert!(message.starts_with("network: fetching /no-such-model/"), "{message}");
}
