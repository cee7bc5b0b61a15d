//! All-reduce in a group of decentralized averagers on loopback: kwaai averagers against Python
//! hivemind's, in the same run, on the same number of float32 parameters.
//!
//! Run: `cargo bench -p kwaai-core --bench allreduce -- [--params N] [--peers P] [--rounds R]`
//! (defaults: 100,000,000 parameters, 4 peers, 3 rounds; a release build). Each side starts one node
//! (and DHT) per peer, gives every averager its own random tensor, then runs rounds: a round counts
//! from the moment every peer calls `step` until every peer holds the average. Both sides use
//! hivemind's defaults (NONE codec, 5 s matchmaking, 3 s request timeout, a group of exactly P).
//! The Python side is `benches/allreduce_python.py` in the reference venv. Prints each round, the
//! medians, their ratio, and each side's largest error against the exact mean on a sample.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kwaai_core::averaging::{AveragerConfig, DecentralizedAverager};
use kwaai_core::tensor::{Data, Tensor};
use kwaai_core::{Node, NodeConfig};
use rand::{Rng, SeedableRng};
use rmpv::Value;

const SAMPLE: usize = 4096;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect(name))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn values(tensor: &Tensor) -> &[f32] {
    match tensor.data() {
        Data::F32(v) => v,
        other => panic!("expected float32, got {:?}", other.dtype()),
    }
}

/// Seconds per round and the largest sampled error of the kwaai group.
fn rust_rounds(params: usize, peers: usize, rounds: usize) -> (Vec<f64>, f64) {
    let start = |initial_peers: Vec<String>| {
        Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers,
            ..Default::default()
        })
        .expect("node starts")
    };
    let first = start(vec![]);
    let bootstrap = vec![first.listen_addrs()[0].to_string()];
    let mut nodes = vec![first];
    nodes.extend((1..peers).map(|_| start(bootstrap.clone())));
    let config = AveragerConfig {
        prefix: "allreduce_bench".into(),
        target_group_size: Some(peers),
        min_group_size: peers,
        ..AveragerConfig::default()
    };
    let averagers: Vec<DecentralizedAverager> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let data: Vec<f32> = (0..params).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let tensor = Tensor::new(vec![params], Data::F32(data)).unwrap();
            DecentralizedAverager::new(node, vec![tensor], config.clone()).expect("averager starts")
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let index: Vec<usize> = (0..SAMPLE).map(|_| rng.gen_range(0..params)).collect();
    let (mut times, mut max_error) = (Vec::new(), 0f64);
    for round in 0..rounds {
        let sampled: Vec<Vec<f32>> = averagers
            .iter()
            .map(|a| {
                let tensors = a.tensors();
                index.iter().map(|&i| values(&tensors[0])[i]).collect()
            })
            .collect();
        let start = Instant::now();
        std::thread::scope(|s| {
            let steps: Vec<_> =
                averagers.iter().map(|a| s.spawn(move || a.step(Value::Nil, 1.0, Duration::from_secs(600)))).collect();
            for step in steps {
                let group = step.join().expect("step thread").expect("the round completes");
                assert_eq!(group.size(), peers);
            }
        });
        times.push(start.elapsed().as_secs_f64());
        for a in &averagers {
            let tensors = a.tensors();
            for (k, &i) in index.iter().enumerate() {
                let mean = sampled.iter().map(|s| f64::from(s[k])).sum::<f64>() / peers as f64;
                max_error = max_error.max((f64::from(values(&tensors[0])[i]) - mean).abs());
            }
        }
        eprintln!("kwaai round {round}: {:.2} s", times[round]);
    }
    drop(averagers);
    for node in nodes {
        node.shutdown();
    }
    (times, max_error)
}

/// Seconds per round and the largest sampled error of the hivemind group.
fn python_rounds(params: usize, peers: usize, rounds: usize) -> (Vec<f64>, f64) {
    let python = std::env::var_os("KWAAI_REFERENCE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kwaai/reference-venv/bin/python")
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/allreduce_python.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--params", &params.to_string(), "--peers", &peers.to_string(), "--rounds", &rounds.to_string()])
        .output()
        .expect("the reference venv's Python runs");
    assert!(out.status.success(), "allreduce_python.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("one JSON line");
    let result: serde_json::Value = serde_json::from_str(line).expect("JSON");
    let times = result["seconds_per_round"].as_array().expect("rounds").iter().map(|t| t.as_f64().unwrap()).collect();
    (times, result["max_error"].as_f64().expect("max_error"))
}

fn main() {
    let (params, peers, rounds) = (arg("--params", 100_000_000), arg("--peers", 4), arg("--rounds", 3));
    println!("all-reduce of {params} float32 parameters, a group of {peers} on 127.0.0.1, {rounds} rounds");
    let (rust, rust_error) = rust_rounds(params, peers, rounds);
    let (python, python_error) = python_rounds(params, peers, rounds);
    println!("  kwaai    s/round: {rust:.2?} (median {:.2}), max error {rust_error:.1e}", median(rust.clone()));
    println!("  hivemind s/round: {python:.2?} (median {:.2}), max error {python_error:.1e}", median(python.clone()));
    println!("  ratio (hivemind / kwaai, medians): {:.2}x", median(python) / median(rust));
}
