//! A kwaai node announces a span of blocks; Petals' own `get_remote_module_infos` (run from a
//! Python hivemind DHT that joins through the kwaai node) sees the server with every field, and
//! `compute_spans` routes through it while it is ONLINE but not once it announces OFFLINE.

mod common;

use kwaai_core::server::{announce, ServerInfo, ServerState, Span};
use kwaai_core::{Node, NodeConfig};
use serde_json::Value as Json;

const PREFIX: &str = "tiny-kwaai-hf";
const NUM_BLOCKS: u32 = 4;

fn python_view(node: &Node) -> Json {
    let maddr = node.listen_addrs()[0].to_string();
    let out = common::run_reference_script("server_module_infos.py", &[&maddr, PREFIX, &NUM_BLOCKS.to_string()], "");
    serde_json::from_str(out.lines().last().expect("one JSON line")).expect("JSON")
}

fn announce_blocking(node: &Node, span: Span, info: &ServerInfo) -> Vec<bool> {
    let dht = node.dht().expect("dht");
    let peer = node.peer_id();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(announce(&dht, &peer, PREFIX, span, NUM_BLOCKS, info, 60.0)).expect("announce")
}

#[test]
fn petals_client_sees_our_span_online_with_every_field_then_offline() {
    let node = Node::start(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() })
        .expect("node starts");
    let peer = node.peer_id().to_base58();
    let span = Span::new(1, 3).expect("span");
    let info = ServerInfo {
        public_name: Some("kwaai-test".into()),
        torch_dtype: Some("float32".into()),
        quant_type: Some("none".into()),
        using_relay: Some(false),
        cache_tokens_left: Some(8192),
        forward_rps: Some(40.5),
        network_rps: Some(900.0),
        inference_rps: Some(7.25),
        adapters: vec!["lora-a".into()],
        next_pings: Some(vec![("QmSuccessor".into(), 0.125)]),
        ..ServerInfo::new(ServerState::Online, 12.5)
    };
    assert_eq!(announce_blocking(&node, span, &info), [true, true]);

    let view = python_view(&node);
    let blocks = view["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), NUM_BLOCKS as usize);
    for (i, block) in blocks.iter().enumerate() {
        let servers = block["servers"].as_object().expect("servers");
        if !(span.start..span.end).contains(&(i as u32)) {
            assert!(servers.is_empty(), "block {i} is not ours: {block}");
            continue;
        }
        let ours = &servers[&peer];
        assert_eq!(ours["state"], "ONLINE");
        assert_eq!(ours["throughput"], 12.5);
        assert_eq!((ours["start_block"].as_u64(), ours["end_block"].as_u64()), (Some(1), Some(3)));
        assert_eq!(ours["public_name"], "kwaai-test");
        assert_eq!(ours["version"], "2.2.0.post1");
        assert_eq!(ours["forward_rps"], 40.5);
        assert_eq!(ours["network_rps"], 900.0);
        assert_eq!(ours["inference_rps"], 7.25);
        assert_eq!(ours["adapters"], serde_json::json!(["lora-a"]));
        assert_eq!(ours["torch_dtype"], "float32");
        assert_eq!(ours["quant_type"], "none");
        assert_eq!(ours["using_relay"], false);
        assert_eq!(ours["cache_tokens_left"], 8192);
        assert_eq!(ours["next_pings"], serde_json::json!({"QmSuccessor": 0.125}));
    }
    assert_eq!(view["online_spans"], serde_json::json!({ peer.clone(): [1, 3] }));

    // OFFLINE replaces the record under the same subkey: Petals no longer routes through us.
    let offline = ServerInfo { state: ServerState::Offline, next_pings: None, ..info };
    assert_eq!(announce_blocking(&node, span, &offline), [true, true]);
    let view = python_view(&node);
    assert_eq!(view["blocks"][1]["servers"][&peer]["state"], "OFFLINE");
    assert_eq!(view["online_spans"], serde_json::json!({}));
    node.shutdown();
}
