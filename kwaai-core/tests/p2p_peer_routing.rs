//! Kademlia peer routing with Python hivemind peers (Go p2pd) on 127.0.0.1: a peer that knows only
//! the other's peer ID reaches it through a third peer, in both directions, whether the third peer
//! is a Python peer or a kwaai node.

mod common;

use std::time::Duration;

use kwaai_core::{Error, ErrorKind, Node, NodeConfig, PeerId};
use prost::Message;
use serde_json::{json, Value};

/// hivemind's `runtime.proto` ExpertResponse (tensors omitted).
#[derive(Clone, PartialEq, Message)]
struct ExpertResponse {
    #[prost(bytes = "vec", tag = "3")]
    metadata: Vec<u8>,
}

const T: Duration = Duration::from_secs(30);

fn ready(process: &mut common::ReferenceProcess) -> (PeerId, String) {
    let ready = process.read_json();
    let peer_id = ready["peer_id"].as_str().expect("peer_id").parse().expect("a peer ID");
    (peer_id, ready["maddrs"][0].as_str().expect("a multiaddr").to_owned())
}

#[test]
fn peers_that_know_only_a_peer_id_find_each_other_through_a_third_peer_and_strangers_fail() {
    let mut third = common::ReferenceProcess::start("p2p_peer.py", &[]);
    let (third_id, third_addr) = ready(&mut third);
    // Two Python peers that know only the third one.
    let mut reached_by_us = common::ReferenceProcess::start("p2p_peer.py", &[&third_addr]);
    let mut reaching_us = common::ReferenceProcess::start("p2p_peer.py", &[&third_addr]);
    let (target_id, _) = ready(&mut reached_by_us);
    let (caller_id, _) = ready(&mut reaching_us);

    let node =
        Node::start(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() }).unwrap();
    node.add_unary_handler("Rust.echo", |caller: PeerId, _| async move {
        Ok(ExpertResponse { metadata: caller.to_bytes() }.encode_to_vec())
    })
    .unwrap();
    let info = node.connect(&third_addr, T).unwrap();
    assert_eq!(info.peer_id, third_id);

    // We know only the target's peer ID: Kademlia through the third peer gives its address.
    let reply = node.call_unary(target_id, "Py.echo", &[], T).expect("we reach a Python peer by its ID");
    // An empty ExpertRequest is answered by an empty ExpertResponse.
    assert!(reply.is_empty(), "{reply:?}");

    // The caller knows only our peer ID: its p2pd asks the third peer, which admitted us to its
    // routing table because our identify lists /ipfs/kad/1.0.0.
    let command =
        json!({"op": "unary", "peer": node.peer_id().to_base58(), "name": "Rust.echo", "uid": "", "metadata": ""});
    reaching_us.send_line(&command.to_string());
    let answer: Value = reaching_us.read_json();
    assert_eq!(answer["ok"], true, "{answer}");
    // Our handler replied with the caller's peer ID, so the call came from that peer.
    let expected: String = caller_id.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(answer["metadata"], expected, "{answer}");

    // A peer ID nobody knows: the lookup ends and the dial fails (no hang).
    let nobody = kwaai_core::Identity::generate().peer_id();
    let err: Error = node.dial_peer(nobody, T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
}

fn kwaai_node(initial_peers: Vec<String>) -> Node {
    Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers,
        ..NodeConfig::default()
    })
    .unwrap()
}

#[test]
fn python_peers_and_kwaai_nodes_find_each_other_through_a_kwaai_node() {
    // The only peer everyone knows is a kwaai node.
    let hub = kwaai_node(vec![]);
    let hub_addr = hub.listen_addrs()[0].to_string();
    let target = kwaai_node(vec![hub_addr.clone()]);
    target
        .add_unary_handler("Rust.echo", |caller: PeerId, _| async move {
            Ok(ExpertResponse { metadata: caller.to_bytes() }.encode_to_vec())
        })
        .unwrap();
    let mut python = common::ReferenceProcess::start("p2p_peer.py", &[&hub_addr]);
    let (python_id, _) = ready(&mut python);
    // A Kademlia client (as a hivemind DHT in client mode runs p2pd): in no routing table.
    let mut python_client = common::ReferenceProcess::start("p2p_peer.py", &["--dht-client", &hub_addr]);
    let (client_id, _) = ready(&mut python_client);

    // The Python peer knows only the target's peer ID: its p2pd asks the hub, whose answer must
    // carry addresses go-libp2p can dial.
    let command =
        json!({"op": "unary", "peer": target.peer_id().to_base58(), "name": "Rust.echo", "uid": "", "metadata": ""});
    python.send_line(&command.to_string());
    let answer: Value = python.read_json();
    assert_eq!(answer["ok"], true, "{answer}");
    let expected: String = python_id.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(answer["metadata"], expected, "{answer}");

    // The target knows only the Python peers' IDs: the hub names the server-mode peer from its
    // routing table, and the client-mode one because it is connected to it (as p2pd does).
    for peer in [python_id, client_id] {
        let reply = target.call_unary(peer, "Py.echo", &[], T).unwrap_or_else(|e| panic!("reaching {peer}: {e}"));
        assert!(reply.is_empty(), "{reply:?}");
    }
}
