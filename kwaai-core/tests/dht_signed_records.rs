//! Signed records in a mixed swarm where every node runs hivemind's `RSASignatureValidator`
//! (Python) or ours (Rust): records signed on either side verify on both, and writes to a subkey
//! owned by the other side's key are refused by both.

mod common;

use std::sync::Arc;

use common::ReferenceProcess;
use kwaai_core::dht::validation::{RsaSignatureValidator, Validators};
use kwaai_core::dht::{dht_time, DhtConfig, DhtValue};
use kwaai_core::{Node, NodeConfig};
use rmpv::Value;
use serde_json::json;

fn ask(python: &mut ReferenceProcess, request: serde_json::Value) -> serde_json::Value {
    python.send_line(&request.to_string());
    python.read_json()
}

/// The value of `subkey` in the dictionary at `key`, as a Rust node reads it.
fn rust_read(node: &Node, key: &str, subkey: &str) -> Option<Value> {
    match node.dht_get(Value::from(key), true).unwrap() {
        Some(DhtValue::Dictionary { entries, .. }) => {
            entries.into_iter().find(|e| e.subkey.as_str() == Some(subkey)).map(|e| e.value)
        }
        other => panic!("expected a dictionary at {key}, got {other:?}"),
    }
}

/// The value of `subkey` in the dictionary at `key`, as a Python node reads it.
fn python_read(python: &mut ReferenceProcess, node: usize, key: &str, subkey: &str) -> serde_json::Value {
    let reply = ask(python, json!({"op": "get", "node": node, "key": key, "latest": true}));
    reply["dictionary"][subkey][0].clone()
}

/// Every node, on both sides, reads "py" under Python's subkey and "rs" under Rust's.
fn assert_everyone_reads_the_owners_values(
    python: &mut ReferenceProcess,
    rust: &[&Node],
    python_subkey: &str,
    rust_subkey: &str,
) {
    for node in rust {
        assert_eq!(rust_read(node, "owned", python_subkey), Some(Value::from("py")));
        assert_eq!(rust_read(node, "owned", rust_subkey), Some(Value::from("rs")));
    }
    for i in 0..2 {
        assert_eq!(python_read(python, i, "owned", python_subkey), json!("py"));
        assert_eq!(python_read(python, i, "owned", rust_subkey), json!("rs"));
    }
}

#[test]
fn signed_records_are_accepted_and_refused_alike_by_python_and_rust() {
    let mut python = ReferenceProcess::start("dht_swarm.py", &["--rsa"]);
    let p0 = ask(&mut python, json!({"op": "spawn", "initial_peers": []}))["maddrs"][0].as_str().unwrap().to_owned();
    let validator = Arc::new(RsaSignatureValidator::generate().unwrap());
    let config = |peer: &str| NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![peer.to_owned()],
        dht: DhtConfig { validators: Validators::new(vec![validator.clone()]), ..DhtConfig::default() },
        ..NodeConfig::default()
    };
    let r0 = Node::start(config(&p0)).unwrap();
    let r0_addr = r0.listen_addrs()[0].to_string();
    ask(&mut python, json!({"op": "spawn", "initial_peers": [r0_addr]}));
    let r1 = Node::start(config(&r0_addr)).unwrap();

    let python_marker = ask(&mut python, json!({"op": "owner_marker"}))["marker"].as_str().unwrap().to_owned();
    let rust_marker = String::from_utf8(validator.owner_marker().to_vec()).unwrap();
    assert!(python_marker.starts_with("[owner:ssh-rsa ") && rust_marker.starts_with("[owner:ssh-rsa "));
    let python_subkey = format!("python{python_marker}");
    let rust_subkey = format!("rust{rust_marker}");
    let expiration = dht_time() + 120.0;

    // Each side signs its own subkey; both sides verify and strip the other's signature.
    let reply = ask(
        &mut python,
        json!({"op": "store", "node": 0, "key": "owned", "subkey": python_subkey, "value": "py", "expiration": expiration}),
    );
    assert_eq!(reply["ok"], true);
    assert!(r0
        .dht_store(Value::from("owned"), Some(Value::from(rust_subkey.clone())), Value::from("rs"), expiration)
        .unwrap());
    assert_everyone_reads_the_owners_values(&mut python, &[&r0, &r1], &python_subkey, &rust_subkey);

    // Forgeries: Rust writes under Python's key and Python under Rust's, with newer expirations.
    let later = expiration + 10.0;
    assert!(!r1
        .dht_store(Value::from("owned"), Some(Value::from(python_subkey.clone())), Value::from("forged"), later)
        .unwrap());
    let reply = ask(
        &mut python,
        json!({"op": "store", "node": 1, "key": "owned", "subkey": rust_subkey, "value": "forged", "expiration": later}),
    );
    assert_eq!(reply["ok"], false);
    assert_everyone_reads_the_owners_values(&mut python, &[&r0, &r1], &python_subkey, &rust_subkey);
}
