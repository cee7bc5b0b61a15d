//! One swarm of 3 Python `hivemind.DHT` nodes and 3 kwaai nodes on loopback: Rust nodes join
//! through a Python node and Python nodes through a Rust node; a value stored on any node is read
//! from every node; subkeys written from both sides merge; expired values disappear on both sides.

mod common;

use std::time::Duration;

use common::ReferenceProcess;
use kwaai_core::dht::{dht_time, DhtValue};
use kwaai_core::{Node, NodeConfig};
use rmpv::Value;
use serde_json::json;

struct PythonNodes {
    process: ReferenceProcess,
    count: usize,
}

impl PythonNodes {
    fn ask(&mut self, request: serde_json::Value) -> serde_json::Value {
        self.process.send_line(&request.to_string());
        let reply = self.process.read_json();
        assert!(reply.get("error").is_none(), "{reply}");
        reply
    }

    fn spawn(&mut self, initial_peers: &[String]) -> String {
        let reply = self.ask(json!({"op": "spawn", "initial_peers": initial_peers}));
        self.count += 1;
        reply["maddrs"][0].as_str().expect("a maddr").to_owned()
    }
}

fn rust_node(initial_peer: &str) -> Node {
    Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![initial_peer.to_owned()],
        ..NodeConfig::default()
    })
    .expect("a kwaai node joins through its initial peer")
}

#[test]
fn mixed_python_and_rust_swarm_shares_values_dictionaries_and_expirations() {
    let mut python = PythonNodes { process: ReferenceProcess::start("dht_swarm.py", &[]), count: 0 };
    let p0 = python.spawn(&[]);
    // A Rust node whose only initial peer is Python ...
    let r0 = rust_node(&p0);
    let r0_addr = r0.listen_addrs()[0].to_string();
    // ... and Python nodes whose only initial peer is Rust (they validate-ping it back).
    let p1 = python.spawn(std::slice::from_ref(&r0_addr));
    python.spawn(std::slice::from_ref(&r0_addr));
    let rust = [r0, rust_node(&p1), rust_node(&r0_addr)];

    // Every node stores one key; every node reads every key.
    let expiration = dht_time() + 120.0;
    for (i, node) in rust.iter().enumerate() {
        assert!(node.dht_store(Value::from(format!("rust-{i}")), None, Value::from(i as u64), expiration).unwrap());
    }
    for i in 0..python.count {
        let reply = python
            .ask(json!({"op": "store", "node": i, "key": format!("python-{i}"), "value": i, "expiration": expiration}));
        assert_eq!(reply["ok"], true, "python node {i} store");
    }
    for (i, node) in rust.iter().enumerate() {
        for j in 0..python.count {
            let got = node.dht_get(Value::from(format!("python-{j}")), true).unwrap();
            assert_eq!(
                got,
                Some(DhtValue::Regular { value: Value::from(j as u64), expiration }),
                "rust {i} reads python-{j}"
            );
        }
    }
    for i in 0..python.count {
        for j in 0..rust.len() {
            let reply = python.ask(json!({"op": "get", "node": i, "key": format!("rust-{j}"), "latest": true}));
            assert_eq!(
                reply,
                json!({"found": true, "value": j, "expiration": expiration}),
                "python {i} reads rust-{j}"
            );
        }
    }

    // Subkeys written from both sides merge into one dictionary, seen alike everywhere.
    let mut expected = Vec::new();
    for (i, node) in rust.iter().enumerate() {
        let subkey = format!("rust-peer-{i}");
        assert!(node
            .dht_store(Value::from("servers"), Some(Value::from(subkey.clone())), Value::from(i as u64), expiration)
            .unwrap());
        expected.push(subkey);
    }
    for i in 0..python.count {
        let subkey = format!("python-peer-{i}");
        let reply = python.ask(json!({"op": "store", "node": i, "key": "servers", "subkey": subkey, "value": 10 + i, "expiration": expiration}));
        assert_eq!(reply["ok"], true);
        expected.push(subkey);
    }
    expected.sort();
    for node in &rust {
        let Some(DhtValue::Dictionary { entries, .. }) = node.dht_get(Value::from("servers"), true).unwrap() else {
            panic!("servers is not a dictionary");
        };
        let mut got: Vec<String> = entries.iter().map(|e| e.subkey.as_str().unwrap().to_owned()).collect();
        got.sort();
        assert_eq!(got, expected, "rust view of the dictionary");
    }
    for i in 0..python.count {
        let reply = python.ask(json!({"op": "get", "node": i, "key": "servers", "latest": true}));
        let mut got: Vec<String> = reply["dictionary"].as_object().expect("a dictionary").keys().cloned().collect();
        got.sort();
        assert_eq!(got, expected, "python {i} view of the dictionary");
    }

    // Short-lived values vanish on both sides.
    let soon = dht_time() + 2.0;
    assert!(rust[1].dht_store(Value::from("short-rust"), None, Value::from(1), soon).unwrap());
    let reply = python.ask(json!({"op": "store", "node": 2, "key": "short-python", "value": 2, "expiration": soon}));
    assert_eq!(reply["ok"], true);
    assert!(rust[0].dht_get(Value::from("short-python"), true).unwrap().is_some());
    std::thread::sleep(Duration::from_secs_f64((soon - dht_time()).max(0.0) + 0.5));
    for key in ["short-rust", "short-python"] {
        for node in &rust {
            assert_eq!(node.dht_get(Value::from(key), true).unwrap(), None, "{key} expired for rust");
        }
        for i in 0..python.count {
            let reply = python.ask(json!({"op": "get", "node": i, "key": key, "latest": true}));
            assert_eq!(reply, json!({"found": false}), "{key} expired for python {i}");
        }
    }
}
