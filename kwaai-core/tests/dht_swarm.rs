//! A swarm of kwaai nodes on loopback: values stored anywhere are read everywhere, dictionaries
//! merge subkeys from several writers, and expired values disappear.

use std::time::Duration;

use kwaai_core::dht::{dht_time, DhtValue};
use kwaai_core::{Node, NodeConfig};
use rmpv::Value;

fn start(initial_peers: Vec<String>) -> Node {
    Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers,
        ..NodeConfig::default()
    })
    .expect("node starts")
}

fn swarm(n: usize) -> Vec<Node> {
    let first = start(vec![]);
    let bootstrap = first.listen_addrs()[0].to_string();
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start(vec![bootstrap.clone()]));
    }
    nodes
}

#[test]
fn a_value_stored_on_any_node_is_read_from_every_node() {
    let nodes = swarm(4);
    let expiration = dht_time() + 60.0;
    for (i, node) in nodes.iter().enumerate() {
        let key = Value::from(format!("key-{i}"));
        assert!(node.dht_store(key, None, Value::from(i as u64), expiration).unwrap());
    }
    for reader in &nodes {
        for i in 0..nodes.len() {
            let got = reader.dht_get(Value::from(format!("key-{i}")), true).unwrap();
            assert_eq!(got, Some(DhtValue::Regular { value: Value::from(i as u64), expiration }), "key-{i}");
        }
    }
    assert_eq!(nodes[0].dht_get(Value::from("missing"), true).unwrap(), None);
}

#[test]
fn subkeys_from_different_writers_merge() {
    let nodes = swarm(3);
    let expiration = dht_time() + 60.0;
    for (i, node) in nodes.iter().enumerate() {
        let subkey = Value::from(node.peer_id().to_base58());
        assert!(node
            .dht_store(Value::from("servers"), Some(subkey), Value::from(i as u64), expiration + i as f64)
            .unwrap());
    }
    for reader in &nodes {
        let Some(DhtValue::Dictionary { entries, expiration: latest }) =
            reader.dht_get(Value::from("servers"), true).unwrap()
        else {
            panic!("expected a dictionary");
        };
        assert_eq!(latest, expiration + 2.0);
        let mut subkeys: Vec<_> = entries.iter().map(|e| e.subkey.as_str().unwrap().to_owned()).collect();
        subkeys.sort();
        let mut expected: Vec<_> = nodes.iter().map(|n| n.peer_id().to_base58()).collect();
        expected.sort();
        assert_eq!(subkeys, expected);
    }
}

#[test]
fn newer_values_win_and_expired_values_disappear() {
    let nodes = swarm(3);
    let now = dht_time();
    assert!(nodes[0].dht_store(Value::from("k"), None, Value::from("old"), now + 30.0).unwrap());
    assert!(nodes[1].dht_store(Value::from("k"), None, Value::from("new"), now + 40.0).unwrap());
    assert!(!nodes[2].dht_store(Value::from("k"), None, Value::from("stale"), now + 35.0).unwrap());
    let got = nodes[2].dht_get(Value::from("k"), true).unwrap();
    assert_eq!(got, Some(DhtValue::Regular { value: Value::from("new"), expiration: now + 40.0 }));

    assert!(nodes[0].dht_store(Value::from("short"), None, Value::from(1), dht_time() + 1.0).unwrap());
    assert!(nodes[2].dht_get(Value::from("short"), true).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(1500));
    for node in &nodes {
        assert_eq!(node.dht_get(Value::from("short"), true).unwrap(), None);
    }
}

#[test]
fn a_bootstrap_peer_that_does_not_answer_fails_the_start() {
    let gone = start(vec![]);
    let addr = gone.listen_addrs()[0].to_string();
    gone.shutdown();
    let err = Node::start(NodeConfig { initial_peers: vec![addr], ..NodeConfig::default() }).unwrap_err();
    assert_eq!(err.kind(), kwaai_core::ErrorKind::Network, "{err}");
    let err = Node::start(NodeConfig { initial_peers: vec!["/ip4/127.0.0.1/tcp/1".into()], ..NodeConfig::default() })
        .unwrap_err();
    assert_eq!(err.kind(), kwaai_core::ErrorKind::InvalidArgument, "{err}");
}
