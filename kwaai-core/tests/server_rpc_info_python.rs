//! A kwaai node answers `TransformerConnectionHandler.rpc_info` called through hivemind's P2P
//! stub exactly as a Petals client decodes it: server-wide info, block schemas as
//! `BatchTensorDescriptor`s, and an error for a block it does not serve.

mod common;

use common::loopback_node;
use kwaai_core::server::{serve_info, BlockSchema, InfoService, ServerRpcInfo};
use kwaai_core::tensor::DType;
use serde_json::{json, Value as Json};

#[test]
fn python_stub_reads_server_info_and_block_schemas() {
    let node = loopback_node(&[]);
    let schema = BlockSchema { hidden_size: 64, dtype: DType::BF16, compression: 0 };
    let server = ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 1234 };
    serve_info(&node, InfoService::new(["tiny-hf.0".to_owned(), "tiny-hf.1".to_owned()], schema, server))
        .expect("handler registered");

    let maddr = node.listen_addrs()[0].to_string();
    let peer = node.peer_id().to_base58();
    let out = common::run_reference_script("server_rpc_info.py", &[&maddr, &peer, "", "tiny-hf.1", "tiny-hf.7"], "");
    let replies: Json = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");

    let whole = &replies[0];
    assert_eq!(whole["version"], "2.2.0.post1");
    assert_eq!(whole["dht_client_mode"], false);
    assert_eq!(whole["cache_tokens_available"], 1234);
    assert_eq!(whole["keys"], json!(["cache_tokens_available", "dht_client_mode", "version"]));

    let block = &replies[1];
    let hidden = json!({"size": [null, 1, 2048, 64], "dtype": "torch.bfloat16", "compression": 0});
    assert_eq!(block["forward_args"], json!([hidden.clone()]));
    assert_eq!(block["forward_kwargs"], json!({}));
    assert_eq!(block["outputs"], json!([hidden.clone()]));
    assert_eq!(block["keyword_names"], json!([]));
    assert_eq!(
        block["inference_args"],
        json!([
            hidden,
            {"size": [null], "dtype": "torch.bfloat16", "compression": 0},
            {"size": [null], "dtype": "torch.int64", "compression": 0}
        ])
    );

    let unknown = replies[2]["error"].as_str().expect("an unknown block is an error");
    assert!(unknown.contains("tiny-hf.7"), "{unknown}");
    node.shutdown();
}
