//! hivemind's caching, seen from Python nodes: a get through a kwaai node that finds a value
//! pushes it into the cache of the nearest node that did not give it (`cache_nearest`), keeps it
//! in its own cache (`cache_locally`), and a cached value read locally is looked up again before
//! it expires (`cache_refresh_before_expiry`), which brings a newer value into both caches.

mod common;

use std::time::{Duration, Instant};

use common::ReferenceProcess;
use kwaai_core::dht::{dht_time, DhtId, DhtValue};
use kwaai_core::wire::msgpack::pack;
use kwaai_core::{Node, NodeConfig};
use rmpv::Value;
use serde_json::json;

fn ask(python: &mut ReferenceProcess, request: serde_json::Value) -> serde_json::Value {
    python.send_line(&request.to_string());
    let reply = python.read_json();
    assert!(reply.get("error").is_none(), "{reply}");
    reply
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

/// Asks `python` about `key` at `node` until `done` holds for the reply (at most 10 s).
fn wait_for(
    python: &mut ReferenceProcess,
    node: usize,
    key: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = ask(python, json!({"op": "inspect", "node": node, "key": key}));
        if done(&reply) || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rust_get_caches_nearest_and_locally_and_refreshes_before_expiry() {
    let mut python = ReferenceProcess::start("dht_swarm.py", &[]);
    let p0 = ask(&mut python, json!({"op": "spawn", "initial_peers": []}))["maddrs"][0].as_str().unwrap().to_owned();
    let reader = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![p0],
        ..NodeConfig::default()
    })
    .unwrap();
    let reader_addr = reader.listen_addrs()[0].to_string();
    for _ in 0..3 {
        ask(&mut python, json!({"op": "spawn", "initial_peers": [reader_addr]}));
    }
    let ids: Vec<DhtId> = (0..4)
        .map(|i| {
            let reply = ask(&mut python, json!({"op": "inspect", "node": i, "key": "-"}));
            DhtId::from_slice(&unhex(reply["node_id"].as_str().unwrap())).unwrap()
        })
        .collect();
    assert_eq!(reader.dht().unwrap().routing_table_len(), 4, "the reader knows every Python node");

    // The value lives only at the Python node farthest from the key; the push must go to the
    // nearest one.
    let key = "cached";
    let key_id = DhtId::of_key(&Value::from(key));
    let mut by_distance: Vec<usize> = (0..4).collect();
    by_distance.sort_by_key(|&i| ids[i].distance(&key_id));
    let (nearest, holder) = (by_distance[0], by_distance[3]);
    let now = dht_time();
    let (old, new) = (now + 8.0, now + 90.0);
    let stored =
        ask(&mut python, json!({"op": "store_local", "node": holder, "key": key, "value": "old", "expiration": old}));
    assert_eq!(stored["ok"], true);

    let got = reader.dht_get(Value::from(key), false).unwrap();
    assert_eq!(got, Some(DhtValue::Regular { value: Value::from("old"), expiration: old }));
    let pushed = wait_for(&mut python, nearest, key, |r| !r["cache"].is_null());
    assert_eq!(pushed["cache"], json!([hex(&pack(&Value::from("old"))), old]), "pushed into the nearest node's cache");
    assert!(pushed["storage"].is_null(), "a cache push is not a store");
    for i in (0..4).filter(|&i| i != nearest && i != holder) {
        let reply = ask(&mut python, json!({"op": "inspect", "node": i, "key": key}));
        assert!(reply["cache"].is_null() && reply["storage"].is_null(), "cache_nearest is 1: node {i} got nothing");
    }

    // A newer value appears at the holder. The reader still answers from its cache ...
    let stored =
        ask(&mut python, json!({"op": "store_local", "node": holder, "key": key, "value": "new", "expiration": new}));
    assert_eq!(stored["ok"], true);
    let got = reader.dht_get(Value::from(key), false).unwrap();
    assert_eq!(got, Some(DhtValue::Regular { value: Value::from("old"), expiration: old }), "read from the cache");
    // ... and that local read schedules a refresh 5 s before `old` expires: the refresh finds the
    // newer value, caches it here and pushes it to the nearest node again, with no get from anyone.
    let refreshed = wait_for(&mut python, nearest, key, |r| r["cache"][1] == json!(new));
    assert_eq!(refreshed["cache"], json!([hex(&pack(&Value::from("new"))), new]), "the refresh pushed the new value");
    assert!(dht_time() < old, "refreshed before the cached value expired");
    let got = reader.dht_get(Value::from(key), false).unwrap();
    assert_eq!(got, Some(DhtValue::Regular { value: Value::from("new"), expiration: new }), "the cache was refreshed");
}
