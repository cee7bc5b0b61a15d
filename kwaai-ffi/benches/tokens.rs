//! Per streamed token: the C ABI's callback path against iterating kwaai-core's `TokenStream` in
//! Rust, in alternating runs; prints the median and best time per token of each and their
//! difference. Two token sources:
//! - a replayed stream (`TokenStream::replay`, no model, no network), which isolates what the
//!   callback path adds per token;
//! - a real generation (`kwaai_model_generate`) on a loopback swarm (a bootstrap node and two nodes
//!   serving the halves of a tiny model). The model directory is `$KWAAI_TINY_MODEL`, else one is
//!   made with the reference venv's Python in a temporary directory. `-- --replay-only` skips it.

use std::ffi::CString;
use std::os::raw::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kwaai::*;
use kwaai_core::client::{DistributedModel, GeneratedToken, TokenStream};
use kwaai_core::model::GenerationConfig;
use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Node, NodeConfig};

const TOKENS: usize = 64;
const RUNS: usize = 15;

fn model_dir(scratch: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("KWAAI_TINY_MODEL") {
        return dir.into();
    }
    let python = std::env::var_os("KWAAI_REFERENCE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kwaai/reference-venv/bin/python")
    });
    let dir = scratch.join("tiny-bench");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/make_tiny_model.py");
    let status = Command::new(python)
        .arg(script)
        .arg(&dir)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("make_tiny_model.py runs");
    assert!(status.success(), "make_tiny_model.py failed");
    dir
}

fn node(initial_peers: Vec<String>) -> Node {
    Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers,
        ..NodeConfig::default()
    })
    .expect("node starts")
}

unsafe extern "C" fn count_token(user_data: *mut c_void, _token: u32, _piece: *const c_char, finished: bool) {
    if !finished {
        (*(user_data as *const AtomicUsize)).fetch_add(1, Ordering::Relaxed);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Tokens of a replayed stream: short text pieces, as a tokenizer gives them.
fn replayed_tokens(n: usize) -> Vec<GeneratedToken> {
    (0..n as u32).map(|id| GeneratedToken { id, text: format!(" w{}", id % 1000) }).collect()
}

fn report(what: &str, rust: &[f64], c: &[f64]) {
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!("per token, {what}:");
    println!("  Rust TokenStream iteration : median {:8.3} µs, best {:8.3} µs", median(rust.to_vec()), best(rust));
    println!("  C ABI token callback       : median {:8.3} µs, best {:8.3} µs", median(c.to_vec()), best(c));
    println!(
        "  difference (C - Rust)      : median {:+8.3} µs, best {:+8.3} µs",
        median(c.to_vec()) - median(rust.to_vec()),
        best(c) - best(rust)
    );
}

/// The callback path alone: the same replayed tokens iterated in Rust and delivered to a C callback.
fn replayed() {
    const REPLAYED: usize = 100_000;
    let (mut rust, mut c) = (Vec::new(), Vec::new());
    for _ in 0..RUNS + 1 {
        let stream = TokenStream::replay(replayed_tokens(REPLAYED)).unwrap();
        let start = Instant::now();
        let mut n = 0;
        for token in stream {
            std::hint::black_box(token.unwrap());
            n += 1;
        }
        assert_eq!(n, REPLAYED);
        rust.push(start.elapsed().as_secs_f64() * 1e6 / REPLAYED as f64);

        let stream = TokenStream::replay(replayed_tokens(REPLAYED)).unwrap();
        let count = AtomicUsize::new(0);
        let start = Instant::now();
        let user_data = &count as *const AtomicUsize as *mut c_void;
        let generation = start_generation(stream, Some(count_token), user_data).unwrap();
        assert_eq!(kwaai_generation_wait(generation), kwaai_status::Ok);
        c.push(start.elapsed().as_secs_f64() * 1e6 / REPLAYED as f64);
        kwaai_generation_free(generation);
        assert_eq!(count.load(Ordering::Relaxed), REPLAYED);
    }
    report(&format!("{RUNS} alternating runs of {REPLAYED} replayed tokens"), &rust[1..], &c[1..]);
}

fn main() {
    replayed();
    if std::env::args().any(|a| a == "--replay-only") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = model_dir(scratch.path());
    let prefix = "tiny-bench";

    // The swarm, through kwaai-core; the client node is reached through the C ABI as well.
    let boot = node(vec![]);
    let peers = vec![boot.listen_addrs()[0].to_string()];
    let serve = |start, end| {
        let host = node(peers.clone());
        let config = ServerConfig {
            model_dir: dir.clone(),
            block_indices: Some(Span::new(start, end).unwrap()),
            dht_prefix: Some(prefix.into()),
            throughput: Some(1.0),
            torch_dtype: Some(DType::F32),
            ..ServerConfig::default()
        };
        let server = Server::start(&host, config).expect("server starts");
        (host, server)
    };
    let _first = serve(0, 2);
    let _second = serve(2, 4);

    let rust_model = DistributedModel::load(&boot, &dir, Some(prefix), |_| {}).expect("model loads");
    let mut c_config = null_mut();
    assert_eq!(kwaai_config_new(&mut c_config), kwaai_status::Ok);
    let peer = CString::new(peers[0].clone()).unwrap();
    unsafe { kwaai_config_add_initial_peer(c_config, peer.as_ptr()) };
    let mut c_node = null_mut();
    assert_eq!(kwaai_node_start(c_config, &mut c_node), kwaai_status::Ok);
    kwaai_config_free(c_config);
    let (c_dir, c_prefix) = (CString::new(dir.to_str().unwrap()).unwrap(), CString::new(prefix).unwrap());
    let mut c_model = null_mut();
    assert_eq!(unsafe { kwaai_model_load(c_node, c_dir.as_ptr(), c_prefix.as_ptr(), &mut c_model) }, kwaai_status::Ok);
    let mut gen_config = null_mut();
    kwaai_generation_config_new(&mut gen_config);
    kwaai_generation_config_set_max_new_tokens(gen_config, TOKENS);

    let prompt = [1u32, 111, 123, 101, 101, 109];
    let config = GenerationConfig { max_new_tokens: TOKENS, ..GenerationConfig::default() };
    let (mut rust, mut c) = (Vec::new(), Vec::new());
    for _ in 0..RUNS + 1 {
        let start = Instant::now();
        let mut n = 0;
        for token in rust_model.generate(&prompt, config.clone()).unwrap() {
            std::hint::black_box(token.unwrap());
            n += 1;
        }
        assert_eq!(n, TOKENS);
        rust.push(start.elapsed().as_secs_f64() * 1e6 / TOKENS as f64);

        let count = AtomicUsize::new(0);
        let start = Instant::now();
        let mut generation = null_mut();
        let user_data = &count as *const AtomicUsize as *mut c_void;
        let status = unsafe {
            kwaai_model_generate(
                c_model,
                prompt.as_ptr(),
                prompt.len(),
                gen_config,
                Some(count_token),
                user_data,
                &mut generation,
            )
        };
        assert_eq!(status, kwaai_status::Ok);
        assert_eq!(kwaai_generation_wait(generation), kwaai_status::Ok);
        c.push(start.elapsed().as_secs_f64() * 1e6 / TOKENS as f64);
        kwaai_generation_free(generation);
        assert_eq!(count.load(Ordering::Relaxed), TOKENS);
    }
    // The first pair warms connections and routes up.
    report(
        &format!("{RUNS} alternating runs of {TOKENS} tokens on a loopback swarm of two servers"),
        &rust[1..],
        &c[1..],
    );

    kwaai_generation_config_free(gen_config);
    kwaai_model_free(c_model);
    kwaai_node_free(c_node);
}
