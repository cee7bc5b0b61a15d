//! A kwaai node that joins a Python Petals swarm (two Petals servers on blocks 0..2 and 1..3 of a
//! 6-block tiny Llama, plus DHT-only records of an ONLINE, a JOINING and an OFFLINE server) reads
//! the block records and chooses the span a new server should take: for every size, the same
//! blocks as Petals' own `choose_best_blocks`, from the same per-block throughputs.

mod common;

use std::path::PathBuf;
use std::process::Command;

use kwaai_core::server::{
    choose_best_blocks, choose_blocks_from_dht, compute_spans, compute_throughputs, get_remote_module_infos,
    ServerState,
};
use kwaai_core::{Node, NodeConfig};
use serde_json::json;

const PREFIX: &str = "tiny-llama-hf";

fn shared_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../shared"))
}

#[test]
fn rust_chooses_the_blocks_petals_chooses_in_a_python_swarm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let swarm_script = shared_dir().join("reference/swarm.py").to_string_lossy().into_owned();
    let model = dir.path().join("model");
    let out = Command::new(common::reference_python())
        .arg(shared_dir().join("reference/make_tiny_model.py"))
        .arg(&model)
        .args(["--family", "llama", "--layers", "6", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let model = model.to_string_lossy().into_owned();
    let workdir = dir.path().join("swarm").to_string_lossy().into_owned();
    let mut python = common::ReferenceProcess::start(
        "server_block_selection.py",
        &[&swarm_script, &workdir, &model, PREFIX, "0:2", "1:3"],
    );
    let ready = python.read_json();
    let total = ready["num_blocks"].as_u64().expect("num_blocks") as u32;
    assert_eq!(total, 6);
    let initial_peers: Vec<String> = ready["initial_peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p.as_str().expect("a multiaddr").to_owned())
        .collect();

    let node = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers,
        ..NodeConfig::default()
    })
    .expect("node joins the swarm");
    let dht = node.dht().expect("dht");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let infos = runtime.block_on(get_remote_module_infos(&dht, PREFIX, total)).expect("module infos");
    let spans = compute_spans(&infos, ServerState::Joining);
    assert_eq!(spans.len(), 4, "two Petals servers, one ONLINE and one JOINING record: {spans:?}");
    let throughputs = compute_throughputs(&spans, infos.len());
    // Petals servers of 1.0 each on 0..2 and 1..3, 2.5 on 3..5, 0.75 (JOINING) on 4..6.
    assert_eq!(throughputs, [1.0, 2.0, 1.0, 2.5, 3.25, 0.75]);

    let mut chosen = Vec::new();
    for num_blocks in 1..=total + 1 {
        python.send_line(&json!({ "num_blocks": num_blocks }).to_string());
        let petals = python.read_json();
        assert_eq!(petals["throughputs"], json!(throughputs), "both sides see the same swarm");
        let span = runtime.block_on(choose_blocks_from_dht(&dht, PREFIX, total, num_blocks)).expect("a choice");
        let ours: Vec<u32> = (span.start..span.end).collect();
        assert_eq!(json!(ours), petals["blocks"], "{num_blocks} blocks");
        if num_blocks <= total {
            assert_eq!(choose_best_blocks(num_blocks as usize, &infos).expect("pure choice"), span);
        }
        chosen.push(span.start);
    }
    // Not one answer for every size: the rule was exercised.
    assert_eq!(chosen, [5, 4, 3, 2, 1, 0, 0]);
    node.shutdown();
}
