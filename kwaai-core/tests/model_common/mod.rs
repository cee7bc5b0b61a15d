//! Fixtures for the model tests: tiny random models written by the reference stack, and reference outputs
//! computed with transformers in the same test run.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

/// The reference venv's Python (fails when the reference stack is not installed).
pub fn python() -> PathBuf {
    let path = std::env::var_os("KWAAI_REFERENCE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/kwaai/reference-venv/bin/python")
    });
    assert!(path.exists(), "the reference stack is not installed at {}: run `make reference`", path.display());
    path
}

/// A newer transformers (4.46, `make reference` installs it beside the reference venv) for the
/// families Petals 2.2's transformers 4.33 lacks (Mixtral); put first on `PYTHONPATH`.
pub fn newer_transformers() -> PathBuf {
    let path = std::env::var_os("KWAAI_NEWER_TRANSFORMERS").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/kwaai/transformers-4.46")
    });
    assert!(path.join("transformers").exists(), "no newer transformers at {}: run `make reference`", path.display());
    path
}

fn run_python(script: &Path, args: &[&str], python_path: Option<&Path>) {
    let mut command = Command::new(python());
    if let Some(path) = python_path {
        command.env("PYTHONPATH", path);
    }
    let out = command
        .arg(script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} {args:?} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
}

/// `make_tiny_model.py` from the shared reference folder (`$KWAAI_SHARED` or `../shared` beside the repo).
fn make_tiny_model_script() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../shared"));
    let script = shared.join("reference/make_tiny_model.py");
    assert!(script.exists(), "{} is missing", script.display());
    script
}

/// A tiny random model in a temp dir, plus reference outputs for it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub reference: HashMap<String, Tensor>,
}

impl Fixture {
    /// Makes a model with `make_tiny_model.py <model_args>` and runs `tests/reference/model_blocks.py` on it (one
    /// Python process for both).
    pub fn new(model_args: &[&str], reference_args: &[&str]) -> Fixture {
        Self::make(model_args, reference_args, None)
    }

    /// [`Fixture::new`] with transformers 4.46 ([`newer_transformers`]) instead of the reference's.
    pub fn on_newer_transformers(model_args: &[&str], reference_args: &[&str]) -> Fixture {
        Self::make(model_args, reference_args, Some(&newer_transformers()))
    }

    fn make(model_args: &[&str], reference_args: &[&str], python_path: Option<&Path>) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = dir.path().join("model");
        let model_s = model.to_str().expect("utf-8 temp path");
        let out = dir.path().join("reference.safetensors");
        let out_s = out.to_str().expect("utf-8 temp path");
        let maker = make_tiny_model_script();
        let mut args = vec![model_s, out_s];
        args.extend_from_slice(reference_args);
        args.push("--make-tiny-model");
        args.push(maker.to_str().expect("utf-8 path"));
        args.extend_from_slice(model_args);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/model_blocks.py");
        run_python(&script, &args, python_path);
        let reference = candle_core::safetensors::load(&out, &Device::Cpu).expect("reading the reference outputs");
        Fixture { dir, reference }
    }

    /// The model directory.
    pub fn model_dir(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    /// A reference tensor.
    pub fn get(&self, name: &str) -> &Tensor {
        self.reference.get(name).unwrap_or_else(|| panic!("no reference tensor {name}"))
    }
}

/// `||a - b|| / ||b||`, computed in float32.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    diff / norm.max(f32::MIN_POSITIVE)
}

/// Asserts `rel_err(a, b) <= tol`.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    eprintln!("{what}: relative error {e:e} (tolerance {tol:e})");
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Loads blocks `[start, end)` of the fixture's model.
pub fn load_span(f: &Fixture, start: usize, end: usize) -> kwaai_core::model::BlockSpan {
    kwaai_core::model::BlockSpan::load(&f.model_dir(), start, end, Default::default()).expect("loading the span")
}

/// The span's full-sequence forward equals the reference `hidden_out`.
pub fn check_span_forward(f: &Fixture, span: &kwaai_core::model::BlockSpan, tol: f32) {
    let out = span.forward(f.get("hidden_in"), None).unwrap();
    assert_eq!(out.dtype(), f.get("hidden_in").dtype(), "the output keeps the input's dtype");
    assert_close("hidden after the span", &out, f.get("hidden_out"), tol);
}

/// A prefill of 8 positions then one position at a time to the end of the reference sequence, each step
/// compared with the reference full forward; the cache is bounded by the sequence length.
pub fn check_cached_decode(f: &Fixture, span: &kwaai_core::model::BlockSpan, tol: f32) {
    let input = f.get("hidden_in");
    let full = f.get("hidden_out");
    let total = input.dim(1).unwrap();
    let mut cache = span.new_cache(total);
    let prefill = span.forward_with_cache(&input.narrow(1, 0, 8).unwrap(), None, &mut cache).unwrap();
    assert_close("prefill", &prefill, &full.narrow(1, 0, 8).unwrap(), tol);
    for t in 8..total {
        let step = span.forward_with_cache(&input.narrow(1, t, 1).unwrap(), None, &mut cache).unwrap();
        assert_close(&format!("decode step {t}"), &step, &full.narrow(1, t, 1).unwrap(), tol);
    }
    assert_eq!(cache.len(), total);
    let err = span.forward_with_cache(&input.narrow(1, 0, 1).unwrap(), None, &mut cache).unwrap_err();
    assert_eq!(err.kind(), kwaai_core::ErrorKind::InvalidArgument, "max_length must bound the cache");
}

/// Forward with deep prompts and the gradients of backward equal torch's (gradients within `grad_tol`).
pub fn check_prompts_and_backward(f: &Fixture, span: &kwaai_core::model::BlockSpan, tol: f32, grad_tol: f32) {
    let prompts = f.get("prompts");
    let out = span.forward(f.get("hidden_in"), Some(prompts)).unwrap();
    assert_close("forward with deep prompts", &out, f.get("out_prompted"), tol);
    let (gx, gp) = span.backward(f.get("hidden_in"), Some(prompts), f.get("grad_out")).unwrap();
    assert_close("grad wrt hidden states", &gx, f.get("grad_hidden"), grad_tol);
    assert_close("grad wrt prompts", &gp.expect("prompt grads"), f.get("grad_prompts"), grad_tol);
}

/// Greedy generation of 32 tokens (tokenizer, embeddings, every block, norm, LM head) equals transformers'
/// `generate` on the same prompt.
pub fn check_greedy_generation(f: &Fixture) {
    use kwaai_core::model::{generate, ClientModel, GenerationConfig, TextTokenizer};
    let dir = f.model_dir();
    let client = ClientModel::load(&dir).expect("loading the client side");
    let layers = client.config().num_layers;
    let span = load_span(f, 0, layers);
    let tokenizer = TextTokenizer::from_dir(&dir).unwrap();
    let prompt = tokenizer.encode("Hello, Petals! A tiny swarm on loopback.", true).unwrap();
    let expected_prompt: Vec<u32> =
        f.get("gen_input").flatten_all().unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect();
    assert_eq!(prompt, expected_prompt, "the tokenizer encodes as transformers' does");
    let expected: Vec<u32> = f.get("gen_output").flatten_all().unwrap().to_vec1::<i64>().unwrap()[prompt.len()..]
        .iter()
        .map(|&x| x as u32)
        .collect();
    let config = GenerationConfig {
        max_new_tokens: 32,
        min_new_tokens: 32,
        stop_tokens: client.config().eos_token_id.into_iter().collect(),
        ..Default::default()
    };
    let mut cache = span.new_cache(prompt.len() + 32);
    let mut streamed = vec![];
    let tokens =
        generate(&client, &prompt, &config, |h| span.forward_with_cache(h, None, &mut cache), |t| streamed.push(t))
            .unwrap();
    assert_eq!(tokens, expected, "greedy tokens differ from transformers' generate");
    assert_eq!(streamed, tokens);
    let distinct: std::collections::HashSet<_> = tokens.iter().collect();
    assert!(distinct.len() > 4, "the fixture should not be degenerate: {tokens:?}");
    let text = tokenizer.decode(&tokens, true).unwrap();
    assert!(!text.is_empty());
}
