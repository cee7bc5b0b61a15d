//! Loading spans: sharded checkpoints, reading only the span's tensors, progress, and clear errors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kwaai_core::model::{BlockSpan, LoadOptions, LoadProgress};
use kwaai_core::ErrorKind;

const HIDDEN: usize = 32;
const LAYERS: usize = 3;

fn config(model_type: &str) -> String {
    format!(
        r#"{{"model_type": "{model_type}", "hidden_size": {HIDDEN}, "intermediate_size": 64, "num_hidden_layers": {LAYERS},
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "rms_norm_eps": 1e-5}}"#
    )
}

/// Random Llama block tensors for blocks 0..LAYERS.
fn llama_tensors() -> HashMap<String, Tensor> {
    let mut t = HashMap::new();
    let d = HIDDEN / 4;
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}.");
        let mut put = |name: &str, shape: &[usize]| {
            t.insert(format!("{p}{name}"), Tensor::randn(0f32, 0.3, shape, &Device::Cpu).unwrap());
        };
        put("self_attn.q_proj.weight", &[HIDDEN, HIDDEN]);
        put("self_attn.k_proj.weight", &[2 * d, HIDDEN]);
        put("self_attn.v_proj.weight", &[2 * d, HIDDEN]);
        put("self_attn.o_proj.weight", &[HIDDEN, HIDDEN]);
        put("mlp.gate_proj.weight", &[64, HIDDEN]);
        put("mlp.up_proj.weight", &[64, HIDDEN]);
        put("mlp.down_proj.weight", &[HIDDEN, 64]);
        put("input_layernorm.weight", &[HIDDEN]);
        put("post_attention_layernorm.weight", &[HIDDEN]);
    }
    t
}

fn write_model(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config("llama")).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn hidden() -> Tensor {
    Tensor::randn(0f32, 1.0, (2, 5, HIDDEN), &Device::Cpu).unwrap()
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = llama_tensors();
    let single = tmp.path().join("single");
    write_model(&single, &tensors);

    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(sharded.join("config.json"), config("llama")).unwrap();
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in &tensors {
        let k = usize::from(name.contains("mlp"));
        let file = format!("model-0000{}-of-00002.safetensors", k + 1);
        weight_map.insert(name.clone(), file.into());
        shards[k].insert(name.clone(), t.clone());
    }
    for (k, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(shard, sharded.join(format!("model-0000{}-of-00002.safetensors", k + 1)))
            .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let x = hidden();
    let a = BlockSpan::load(&single, 0, LAYERS, LoadOptions::default()).unwrap().forward(&x, None).unwrap();
    let b = BlockSpan::load(&sharded, 0, LAYERS, LoadOptions::default()).unwrap().forward(&x, None).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);

    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = BlockSpan::load(&sharded, 0, 1, LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.message().contains("model-00002-of-00002"), "{err}");
}

#[test]
fn a_span_reads_only_its_blocks_and_reports_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = llama_tensors();
    // Block 0 is broken (wrong shape) and block 2 is absent: the span [1, 2) must not care.
    tensors.insert(
        "model.layers.0.self_attn.q_proj.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.retain(|k, _| !k.starts_with("model.layers.2."));
    let dir = tmp.path().join("m");
    write_model(&dir, &tensors);
    let mut seen: Vec<LoadProgress> = vec![];
    let mut hook = |p: LoadProgress| seen.push(p);
    let span = BlockSpan::load(&dir, 1, 2, LoadOptions { progress: Some(&mut hook), ..Default::default() }).unwrap();
    assert_eq!((span.start(), span.end()), (1, 2));
    assert_eq!(seen.len(), 9, "one report per tensor of one Llama block");
    assert!(seen.iter().all(|p| p.tensors_total == 9));
    assert_eq!(seen.last().unwrap().tensors_done, 9);
    let block_bytes: u64 =
        tensors.iter().filter(|(k, _)| k.starts_with("model.layers.1.")).map(|(_, t)| 4 * t.elem_count() as u64).sum();
    assert_eq!(seen.last().unwrap().bytes_done, block_bytes);

    let err = BlockSpan::load(&dir, 0, 1, LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("shape [3, 3]"), "a wrong shape is named: {err}");
    let err = BlockSpan::load(&dir, 2, 3, LoadOptions::default()).unwrap_err();
    assert!(err.message().contains("no block 2"), "{err}");
}

#[test]
fn bad_directories_and_arguments_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = BlockSpan::load(&tmp.path().join("nowhere"), 0, 1, LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("config.json"), "{err}");

    let dir = tmp.path().join("gpt2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config("gpt2")).unwrap();
    let err = BlockSpan::load(&dir, 0, 1, LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("unsupported architecture \"gpt2\""), "{err}");

    let dir = tmp.path().join("nofile");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config("llama")).unwrap();
    let err = BlockSpan::load(&dir, 0, 1, LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("model.safetensors"), "{err}");

    let dir = tmp.path().join("ok");
    write_model(&dir, &llama_tensors());
    for (s, e) in [(1, 1), (2, 1), (0, LAYERS + 1)] {
        let err = BlockSpan::load(&dir, s, e, LoadOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "span [{s}, {e})");
    }
    let span = BlockSpan::load(&dir, 0, 1, LoadOptions::default()).unwrap();
    let wrong = Tensor::zeros((1, 2, HIDDEN + 1), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(span.forward(&wrong, None).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let prompts = Tensor::zeros((2, 1, 1, HIDDEN), DType::F32, &Device::Cpu).unwrap();
    let err = span.forward(&hidden(), Some(&prompts)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "one prompt per block: {err}");

    std::fs::write(dir.join("model.safetensors"), b"not a checkpoint").unwrap();
    let err = BlockSpan::load(&dir, 0, 1, LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

/// Truncated or corrupted checkpoints and configs give errors, never panics.
#[test]
fn corrupted_checkpoints_are_refused_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_model(&good, &llama_tensors());
    let bytes = std::fs::read(good.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let dir = tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config("llama")).unwrap();
    let mut rng = kwaai_core::model::Rng::new(1);
    let mut refused = 0;
    for round in 0..200 {
        let mut b = bytes.clone();
        if round % 2 == 0 {
            b.truncate((rng.next_u64() as usize) % bytes.len());
        } else {
            for _ in 0..4 {
                let i = (rng.next_u64() as usize) % (8 + header_len);
                b[i] = rng.next_u64() as u8;
            }
        }
        std::fs::write(dir.join("model.safetensors"), &b).unwrap();
        if let Err(e) = BlockSpan::load(&dir, 0, LAYERS, LoadOptions::default()) {
            assert!(matches!(e.kind(), ErrorKind::InvalidArgument | ErrorKind::Io), "{e}");
            refused += 1;
        }
    }
    assert!(refused >= 100, "every truncation must be refused ({refused} of 200 refused)");
    for text in ["", "{", "[]", r#"{"model_type": 3}"#, r#"{"model_type": "llama", "hidden_size": -1}"#] {
        std::fs::write(dir.join("config.json"), text).unwrap();
        let err = BlockSpan::load(&dir, 0, 1, LoadOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{text}: {err}");
    }
}
