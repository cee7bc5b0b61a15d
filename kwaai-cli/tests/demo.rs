//! The demo model: written by `kwaainet demo --make-model`, loaded by kwaai-core and by
//! transformers with equal logits; and `kwaainet demo` generating with it.

#[path = "../../kwaai-core/tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use kwaai_core::model::{BlockSpan, ClientModel, LoadOptions, TextTokenizer};
use support::TestHome;

const TEXT: &str = "The old river runs under a quiet bridge";

/// Logits (T, vocab) of our forward pass through the whole model.
fn local_logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let client = ClientModel::load(dir).unwrap();
    let layers = client.config().num_layers;
    let span = BlockSpan::load(dir, 0, layers, LoadOptions::default()).unwrap();
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let hidden = span.forward(&client.embed(&input).unwrap(), None).unwrap();
    client.logits(&hidden).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn demo_model_matches_transformers() {
    let home = TestHome::new();
    let dir = home.path().join("demo-model");
    home.run(&["demo", "--make-model", dir.to_str().unwrap()]).ok();

    let output = Command::new(common::reference_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/demo_model_check.py"))
        .args([dir.to_str().unwrap(), TEXT])
        .output()
        .expect("running the reference python");
    assert!(
        output.status.success(),
        "transformers failed to load the demo model:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reference["class"], "LlamaForCausalLM");
    assert_eq!(reference["tokenizer_class"], "PreTrainedTokenizerFast");

    let tokenizer = TextTokenizer::from_dir(&dir).unwrap();
    let ids = tokenizer.encode(TEXT, true).unwrap();
    let reference_ids: Vec<u32> =
        reference["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids, reference_ids, "both tokenizers give the same ids");
    assert_eq!(ids.len(), 9, "<s> and eight known words");
    assert_eq!(reference["decoded"], tokenizer.decode(&ids, true).unwrap().as_str());

    let ours = local_logits(&dir, &ids);
    let theirs: Vec<Vec<f64>> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    assert_eq!(ours.len(), theirs.len());
    let mut worst = 0f64;
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((*x as f64 - y).abs() / (1.0 + y.abs()));
        }
        let argmax = |v: &[f64]| v.iter().enumerate().max_by(|p, q| p.1.total_cmp(q.1)).unwrap().0;
        let ours_f64: Vec<f64> = a.iter().map(|x| *x as f64).collect();
        assert_eq!(argmax(&ours_f64), argmax(b), "same greedy token");
    }
    assert!(worst < 1e-4, "logits differ from transformers by {worst:e} (relative)");
}

/// The demo swarm (a DHT node, two servers, a client on loopback) streams a generation.
#[test]
fn demo_generates_text() {
    let home = TestHome::new();
    let run = home.run(&["demo", "--prompt", "the old river", "--max-new-tokens", "12"]).ok();
    let mut lines = run.stdout.lines();
    let text = lines.next().unwrap();
    let generated = text.strip_prefix("the old river").expect("the prompt comes first");
    assert!(generated.split_whitespace().count() >= 1, "a non-empty generation: {text:?}");
    assert!(lines.next().unwrap().contains(" tokens in "), "{}", run.stdout);
    let route = lines.next().unwrap();
    assert!(route.starts_with("route: 0:2 on ") && route.contains(" -> 2:4 on "), "two servers in order: {route}");
    // The same seed, the same model, the same greedy words.
    let again = home.run(&["demo", "--prompt", "the old river", "--max-new-tokens", "12"]).ok();
    assert_eq!(again.stdout.lines().next(), Some(text));
}
