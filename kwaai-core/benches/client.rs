//! End-to-end generation through a loopback chain of two servers (blocks 0:2 and 2:4 of a tiny
//! Llama): tokens per second and first-token latency of our client against Petals' own client
//! (tests/reference/client_bench_petals.py) on the same two Python servers, then of our client
//! through two Rust servers that join the same swarm afterwards, all in the same run.
//!
//! `cargo bench -p kwaai-core --bench client` (env: `CLIENT_BENCH_TOKENS`, default 64;
//! `CLIENT_BENCH_RUNS`, default 5). Prints one JSON line with both sides' medians and the ratios.

#[path = "../tests/client_common/mod.rs"]
mod client_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use client_common::{client_node, make_tiny_llama, Swarm, NUM_BLOCKS, PREFIX};
use kwaai_core::model::{ClientModel, GenerationConfig, TextTokenizer};
use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Client, ClientConfig, Node, NodeConfig};

const PROMPT: &str = "Benchmarks measure what they measure";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there is nothing to list.
    }
    let tokens = env_usize("CLIENT_BENCH_TOKENS", 64);
    let runs = env_usize("CLIENT_BENCH_RUNS", 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("tiny-llama");
    make_tiny_llama(&model_dir);
    let swarm = Swarm::start(&model_dir, &dir.path().join("swarm"), &["0:2", "2:4"]);

    let node = client_node(&swarm);
    let client = Client::new(&node, ClientConfig::new(PREFIX, NUM_BLOCKS)).expect("client");
    let model = Arc::new(ClientModel::load(&model_dir).expect("client model"));
    let prompt = TextTokenizer::from_dir(&model_dir).expect("tokenizer").encode(PROMPT, true).expect("encode");
    let config =
        GenerationConfig { max_new_tokens: tokens, min_new_tokens: tokens, stop_tokens: vec![2], ..Default::default() };
    let generate_once = |client: &Client| {
        let start = Instant::now();
        let mut first = None;
        let mut ids = Vec::new();
        for token in client.generate(Arc::clone(&model), None, &prompt, config.clone()).expect("generate") {
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            ids.push(token.expect("a token").id);
        }
        (first.expect("a first token"), tokens as f64 / start.elapsed().as_secs_f64(), ids)
    };
    let measure = |client: &Client| {
        generate_once(client); // warm-up: DHT read, pings, rpc_info, connections
        (0..runs).map(|_| generate_once(client)).collect::<Vec<_>>()
    };
    let rust = measure(&client);
    let rust_ids = rust[0].2.clone();

    let mut args = vec![
        model_dir.to_string_lossy().into_owned(),
        PREFIX.into(),
        PROMPT.into(),
        tokens.to_string(),
        runs.to_string(),
    ];
    args.extend(swarm.initial_peers.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_reference_script("client_bench_petals.py", &args, "");
    let python: serde_json::Value = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    let floats = |key: &str| -> Vec<f64> {
        python[key].as_array().expect(key).iter().map(|v| v.as_f64().expect("a number")).collect()
    };
    let python_ids: Vec<u32> =
        python["tokens"].as_array().expect("tokens").iter().map(|v| v.as_u64().expect("id") as u32).collect();
    assert_eq!(rust_ids, python_ids, "both clients generate the same tokens");

    // Two Rust servers join the swarm (only now, so that Petals' client never routed through
    // them) and our client is restricted to them.
    let serve = |start, end| {
        let host = Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers: swarm.initial_peers.clone(),
            ..NodeConfig::default()
        })
        .expect("server node");
        let config = ServerConfig {
            model_dir: model_dir.clone(),
            block_indices: Some(Span::new(start, end).expect("span")),
            dht_prefix: Some(PREFIX.into()),
            throughput: Some(1.0),
            torch_dtype: Some(DType::F32),
            ..ServerConfig::default()
        };
        let server = Server::start(&host, config).expect("Rust server");
        (host, server)
    };
    let rust_servers = [serve(0, 2), serve(2, 4)];
    let mut config = ClientConfig::new(PREFIX, NUM_BLOCKS);
    config.allowed_servers = Some(rust_servers.iter().map(|(host, _)| host.peer_id()).collect());
    let all_rust = measure(&Client::new(&node, config).expect("client"));
    assert_eq!(all_rust[0].2, rust_ids, "Rust servers generate the same tokens");
    node.shutdown();

    let (rust_first, rust_rate) =
        (median(rust.iter().map(|r| r.0).collect()), median(rust.iter().map(|r| r.1).collect()));
    let (py_first, py_rate) = (median(floats("first_token_s")), median(floats("tokens_per_s")));
    let (all_rust_first, all_rust_rate) =
        (median(all_rust.iter().map(|r| r.0).collect()), median(all_rust.iter().map(|r| r.1).collect()));
    let report = serde_json::json!({
        "tokens": tokens, "runs": runs,
        "rust_client_python_servers": { "tokens_per_s": rust_rate, "first_token_ms": rust_first * 1e3,
                  "all_tokens_per_s": rust.iter().map(|r| r.1).collect::<Vec<_>>() },
        "python_client_python_servers": { "tokens_per_s": py_rate, "first_token_ms": py_first * 1e3, "all_tokens_per_s": floats("tokens_per_s") },
        "tokens_per_s_ratio": rust_rate / py_rate,
        "first_token_latency_ratio": py_first / rust_first,
        "rust_client_rust_servers": { "tokens_per_s": all_rust_rate, "first_token_ms": all_rust_first * 1e3,
                  "all_tokens_per_s": all_rust.iter().map(|r| r.1).collect::<Vec<_>>() },
        "all_rust_vs_all_python_tokens_per_s_ratio": all_rust_rate / py_rate,
        "all_rust_vs_all_python_first_token_latency_ratio": py_first / all_rust_first,
    });
    println!("{report}");
}
