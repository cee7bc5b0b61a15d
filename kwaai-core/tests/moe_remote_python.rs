//! hivemind's own client against experts served by kwaai: a Python peer finds the experts that a
//! kwaai node declared (get_experts and MoEBeamSearcher), reads their rpc_info, and runs forward
//! and backward through `RemoteExpert`, unary and streamed; outputs and input gradients match the
//! same `ffn` expert run locally in torch, and the rpc_info reply is byte for byte what hivemind's
//! own server sends for its `ffn` expert.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::loopback_node;
use kwaai_core::moe::{ExpertDeclarer, ExpertServer, FeedForwardExpert};
use kwaai_core::tensor::DecodeLimits;
use serde_json::json;

const HIDDEN: usize = 64;

#[test]
fn python_remote_experts_match_local_torch_through_a_kwaai_server() {
    let node = loopback_node(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let uids = ["ffn.0.0", "ffn.0.1", "ffn.1.2"];
    let mut server = ExpertServer::new(DecodeLimits::default());
    let mut weights = serde_json::Map::new();
    for (seed, uid) in uids.iter().enumerate() {
        let expert = FeedForwardExpert::from_seed(HIDDEN, seed as u64 + 1).expect("expert");
        let path = dir.path().join(format!("{uid}.safetensors"));
        expert.save(&path).expect("saving weights");
        weights.insert((*uid).to_owned(), json!(path.to_str().expect("utf-8 path")));
        server.add(uid, Arc::new(expert)).expect("adding an expert");
    }
    server.serve(&node).expect("serving");
    let uids_owned: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
    let _declarer = ExpertDeclarer::start(&node, uids_owned, Duration::from_secs(30)).expect("declaring");

    // Scores per grid dimension: ffn.1.2 = 3.0, ffn.0.0 = 0.8, ffn.0.1 = -0.5.
    let request = json!({
        "maddr": node.listen_addrs()[0].to_string(),
        "experts": weights,
        "hidden": HIDDEN,
        "grid": [2, 3],
        "scores": [[0.5, 1.0], [0.3, -1.0, 2.0]],
        "beam": 2,
    });
    let output = common::run_reference_script("moe_remote_expert.py", &[], &request.to_string());
    let result: serde_json::Value = serde_json::from_str(output.trim()).expect("one JSON line");

    assert_eq!(result["found"], json!(uids), "hivemind's get_experts reads our declarations");
    assert_eq!(result["beam_search"], json!(["ffn.1.2", "ffn.0.0"]), "MoEBeamSearcher walks our prefixes");
    assert_eq!(result["info_hex"], result["hivemind_info_hex"], "rpc_info bytes equal hivemind's for its ffn expert");
    let schema = &result["schema"];
    assert_eq!(schema["args"], json!([{"shape": [null, HIDDEN], "dtype": "torch.float32", "compression": 0}]));
    assert_eq!(schema["outputs"], json!({"shape": [null, HIDDEN], "dtype": "torch.float32", "compression": 0}));
    assert_eq!(schema["kwargs"], json!([]));
    assert_eq!(schema["keyword_names"], json!([]));

    let cases = result["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2 * uids.len(), "{result}");
    for case in cases {
        let batch = case["batch"].as_u64().expect("batch");
        assert_eq!(case["shape"], json!([batch, HIDDEN]), "{case}");
        assert!(case["output_diff"].as_f64().expect("diff") < 1e-4, "outputs differ: {case}");
        assert!(case["grad_norm"].as_f64().expect("norm") > 1.0, "a gradient worth comparing: {case}");
        assert!(case["grad_diff"].as_f64().expect("diff") < 1e-3, "gradients differ: {case}");
    }
}
