//! hivemind's `RemoteMixtureOfExperts` (Python) over `ffn` experts served by two kwaai nodes: its
//! output, input gradient and gate gradient match the same mixture computed locally in torch;
//! after one kwaai node shuts down (its declarations still in the DHT), the layer still returns
//! the mixture of the experts on the other node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ReferenceProcess;
use kwaai_core::moe::{ExpertDeclarer, ExpertServer, FeedForwardExpert};
use kwaai_core::tensor::DecodeLimits;
use kwaai_core::{Node, NodeConfig};
use serde_json::json;

const HIDDEN: usize = 32;

fn serve(node: &Node, uids: &[&str], dir: &std::path::Path, weights: &mut serde_json::Map<String, serde_json::Value>) {
    let mut server = ExpertServer::new(DecodeLimits::default());
    for uid in uids {
        let seed = weights.len() as u64 + 10;
        let expert = FeedForwardExpert::from_seed(HIDDEN, seed).expect("expert");
        let path = dir.join(format!("{uid}.safetensors"));
        expert.save(&path).expect("saving weights");
        weights.insert((*uid).to_owned(), json!(path.to_str().expect("utf-8 path")));
        server.add(uid, Arc::new(expert)).expect("adding an expert");
    }
    server.serve(node).expect("serving");
}

fn check_round(reply: &serde_json::Value) {
    assert!(reply["output_diff"].as_f64().expect("diff") < 1e-4, "outputs differ: {reply}");
    assert!(reply["grad_norm"].as_f64().expect("norm") > 1e-2, "a gradient worth comparing: {reply}");
    assert!(reply["grad_diff"].as_f64().expect("diff") < 1e-3, "input gradients differ: {reply}");
    assert!(reply["proj_grad_diff"].as_f64().expect("diff") < 1e-3, "gate gradients differ: {reply}");
}

#[test]
fn python_mixture_of_kwaai_experts_matches_torch_and_survives_a_stopped_node() {
    let loopback = || NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() };
    let first = Node::start(loopback()).expect("node");
    let first_addr = first.listen_addrs()[0].to_string();
    let second = Node::start(NodeConfig { initial_peers: vec![first_addr.clone()], ..loopback() }).expect("node");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut weights = serde_json::Map::new();
    let (first_uids, second_uids) = (["ffn.0.0", "ffn.0.1", "ffn.1.0"], ["ffn.1.1", "ffn.2.2"]);
    serve(&first, &first_uids, dir.path(), &mut weights);
    serve(&second, &second_uids, dir.path(), &mut weights);
    let own = |uids: &[&str]| uids.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    let first_declarer = ExpertDeclarer::start(&first, own(&first_uids), Duration::from_secs(30)).expect("declare");
    let second_declarer = ExpertDeclarer::start(&second, own(&second_uids), Duration::from_secs(30)).expect("declare");

    let mut python = ReferenceProcess::start("moe_python_mixture.py", &[]);
    // Python knows only the first node: its p2pd finds the second through it (Kademlia).
    let maddrs = [first_addr];
    let config = json!({"maddrs": maddrs, "experts": weights, "hidden": HIDDEN, "grid": [3, 3], "k_best": 4});
    python.send_line(&config.to_string());
    assert_eq!(python.read_json()["ready"], true);

    python.send_line(&json!({"dead": []}).to_string());
    let reply = python.read_json();
    check_round(&reply);
    for row in reply["chosen"].as_array().expect("chosen") {
        assert_eq!(row.as_array().expect("a row").len(), 4, "4 live experts per sample: {reply}");
    }

    // Stop the second node; its records stay in the DHT until they expire.
    drop(second_declarer);
    second.shutdown();
    python.send_line(&json!({"dead": second_uids}).to_string());
    let reply = python.read_json();
    check_round(&reply);
    for row in reply["chosen"].as_array().expect("chosen") {
        let row: Vec<&str> = row.as_array().expect("a row").iter().map(|u| u.as_str().expect("uid")).collect();
        assert!(row.iter().any(|u| second_uids.contains(u)), "a stopped expert was still chosen: {reply}");
    }
    drop(python);
    drop(first_declarer);
}
