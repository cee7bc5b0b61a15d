//! A kwaai node announces a span of blocks through an [`Announcer`]: JOINING first, then ONLINE,
//! refreshed before expiry, then OFFLINE on shutdown. Petals' own `get_remote_module_infos` (run
//! from a Python hivemind DHT that joins through the kwaai node) sees the server with every field,
//! and `compute_spans` routes through it while it is ONLINE but not once it is OFFLINE.

mod common;

use std::time::{Duration, Instant};

use common::loopback_node;
use kwaai_core::dht::DhtValue;
use kwaai_core::server::{block_uid, Announcement, Announcer, ServerInfo, ServerState, Span};
use kwaai_core::Node;
use serde_json::Value as Json;

const PREFIX: &str = "tiny-kwaai-hf";
const NUM_BLOCKS: u32 = 4;

fn python_view(node: &Node) -> Json {
    let maddr = node.listen_addrs()[0].to_string();
    let out = common::run_reference_script("server_module_infos.py", &[&maddr, PREFIX, &NUM_BLOCKS.to_string()], "");
    serde_json::from_str(out.lines().last().expect("one JSON line")).expect("JSON")
}

/// Our record under block 1 as the DHT holds it: the parsed info and its expiration.
fn our_record(node: &Node) -> (ServerInfo, f64) {
    let got = node.dht_get(rmpv::Value::from(block_uid(PREFIX, 1)), true).expect("get").expect("a record");
    let DhtValue::Dictionary { entries, .. } = got else { panic!("block records are dictionaries") };
    let peer = rmpv::Value::from(node.peer_id().to_base58());
    let ours = entries.iter().find(|e| e.subkey == peer).expect("our subkey");
    (ServerInfo::from_value(&ours.value).expect("a valid ServerInfo"), ours.expiration)
}

#[test]
fn petals_client_sees_our_span_online_with_every_field_then_offline() {
    let node = loopback_node(&[]);
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
        ..ServerInfo::new(ServerState::Joining, 12.5)
    };
    let announcement = Announcement {
        dht_prefix: PREFIX.into(),
        span,
        num_blocks: NUM_BLOCKS,
        info,
        update_period: Duration::from_millis(300),
        // Long enough that the OFFLINE record outlives the Python client's start.
        lifetime: Some(Duration::from_secs(60)),
    };
    let announcer = Announcer::start(node.dht().expect("dht"), node.peer_id(), announcement).expect("announcer");
    let (joining, first_expiration) = our_record(&node);
    assert_eq!(joining.state, ServerState::Joining);
    assert_eq!((joining.start_block, joining.end_block), (Some(1), Some(3)));
    assert_eq!(announcer.set_state(ServerState::Online).expect("online"), [true, true]);

    // The loop refreshes the record before it expires.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (online, expiration) = our_record(&node);
        assert_eq!(online.state, ServerState::Online);
        if expiration > first_expiration + 0.25 {
            break;
        }
        assert!(Instant::now() < deadline, "the announcement was never refreshed");
        std::thread::sleep(Duration::from_millis(20)); // polling interval while waiting for the refresh
    }

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
    assert_eq!(view["models"], serde_json::json!({ PREFIX: {"num_blocks": NUM_BLOCKS, "repository": null} }));

    // OFFLINE replaces the record under the same subkey: Petals no longer routes through us.
    assert_eq!(announcer.shutdown().expect("offline"), [true, true]);
    let view = python_view(&node);
    assert_eq!(view["blocks"][1]["servers"][&peer]["state"], "OFFLINE");
    assert_eq!(view["blocks"][1]["servers"][&peer]["next_pings"], Json::Null);
    assert_eq!(view["online_spans"], serde_json::json!({}));
    node.shutdown();
}
