//! A swarm of kwaai nodes on loopback: values stored anywhere are read everywhere, dictionaries
//! merge subkeys from several writers, and expired values disappear.

mod common;

use std::time::Duration;

use common::{loopback_node, loopback_swarm};
use kwaai_core::dht::{dht_time, DhtValue};
use kwaai_core::{Node, NodeConfig};
use rmpv::Value;

#[test]
fn a_value_stored_on_any_node_is_read_from_every_node() {
    let nodes = loopback_swarm(4);
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
        // Batched reads (not `latest`) ask each key's nearest node first, several keys per call.
        let keys: Vec<Value> = (0..nodes.len()).map(|i| Value::from(format!("key-{i}"))).collect();
        let got = reader.dht_get_many(keys, false).unwrap();
        let expected: Vec<_> =
            (0..nodes.len()).map(|i| Some(DhtValue::Regular { value: Value::from(i as u64), expiration })).collect();
        assert_eq!(got, expected);
    }
    assert_eq!(nodes[0].dht_get(Value::from("missing"), true).unwrap(), None);
}

#[test]
fn subkeys_from_different_writers_merge() {
    let nodes = loopback_swarm(3);
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
    let nodes = loopback_swarm(3);
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
    let gone = loopback_node(&[]);
    let addr = gone.listen_addrs()[0].to_string();
    gone.shutdown();
    let err = Node::start(NodeConfig { initial_peers: vec![addr], ..NodeConfig::default() }).unwrap_err();
    assert_eq!(err.kind(), kwaai_core::ErrorKind::Network, "{err}");
    let err = Node::start(NodeConfig { initial_peers: vec!["/ip4/127.0.0.1/tcp/1".into()], ..NodeConfig::default() })
        .unwrap_err();
    assert_eq!(err.kind(), kwaai_core::ErrorKind::InvalidArgument, "{err}");
}

#[test]
fn a_node_restarted_with_its_identity_rejoins_and_its_records_are_found_after_re_store() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = loopback_swarm(3);
    let bootstrap = nodes[0].listen_addrs()[0].to_string();
    let config = || NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        identity_path: Some(dir.path().join("id.key")),
        initial_peers: vec![bootstrap.clone()],
        ..NodeConfig::default()
    };
    let node = Node::start(config()).unwrap();
    let peer_id = node.peer_id();
    let expiration = dht_time() + 60.0;
    assert!(node
        .dht_store(Value::from("mine"), Some(Value::from(peer_id.to_base58())), Value::from(1), expiration)
        .unwrap());
    node.shutdown();

    let again = Node::start(config()).unwrap();
    assert_eq!(again.peer_id(), peer_id);
    let later = expiration + 1.0;
    assert!(again
        .dht_store(Value::from("mine"), Some(Value::from(peer_id.to_base58())), Value::from(2), later)
        .unwrap());
    for reader in &nodes {
        let Some(DhtValue::Dictionary { entries, .. }) = reader.dht_get(Value::from("mine"), true).unwrap() else {
            panic!("expected a dictionary");
        };
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].value.clone(), entries[0].expiration), (Value::from(2), later));
    }
}

#[test]
fn malformed_dht_requests_get_errors_and_lose_nothing() {
    use kwaai_core::dht::{RPC_FIND, RPC_STORE};
    use kwaai_core::wire::dht::{NodeInfo, StoreRequest, StoreResponse};
    use prost::Message;

    let nodes = loopback_swarm(2);
    let (victim, attacker) = (&nodes[0], &nodes[1]);
    let expiration = dht_time() + 60.0;
    assert!(victim.dht_store(Value::from("precious"), None, Value::from("intact"), expiration).unwrap());
    let timeout = Duration::from_secs(5);
    let call = |name: &str, request: Vec<u8>| attacker.call_unary(victim.peer_id(), name, &request, timeout);

    for garbage in [vec![0xff; 64], vec![0x0a, 0x7f, 0x01]] {
        let err = call(RPC_STORE, garbage.clone()).unwrap_err();
        assert!(err.message().contains("bad DHT message"), "{err}");
        assert!(call(RPC_FIND, garbage).is_err());
    }
    let misaligned = StoreRequest {
        keys: vec![vec![1; 20], vec![2; 20]],
        subkeys: vec![vec![0xc0]; 2],
        values: vec![vec![0x01]],
        expiration_time: vec![expiration; 2],
        in_cache: vec![false; 2],
        ..StoreRequest::default()
    };
    assert!(call(RPC_STORE, misaligned.encode_to_vec()).unwrap_err().message().contains("not aligned"));
    let short_key = StoreRequest {
        keys: vec![vec![1; 19]],
        subkeys: vec![vec![0xc0]],
        values: vec![vec![0x01]],
        expiration_time: vec![expiration],
        in_cache: vec![false],
        peer: Some(NodeInfo { node_id: vec![3; 7] }),
        ..StoreRequest::default()
    };
    assert!(call(RPC_STORE, short_key.encode_to_vec()).is_err());
    let oversized = StoreRequest {
        keys: vec![vec![1; 20]],
        subkeys: vec![vec![0xc0]],
        values: vec![vec![0xc4; (1 << 20) + 1]],
        expiration_time: vec![expiration],
        in_cache: vec![false],
        ..StoreRequest::default()
    };
    let reply = StoreResponse::decode(call(RPC_STORE, oversized.encode_to_vec()).unwrap().as_slice()).unwrap();
    assert_eq!(reply.store_ok, vec![false], "an oversized value is refused");

    let got = victim.dht_get(Value::from("precious"), false).unwrap();
    assert_eq!(got, Some(DhtValue::Regular { value: Value::from("intact"), expiration }));
    assert!(attacker.dht_get(Value::from("precious"), true).unwrap().is_some());
}

#[test]
fn a_refresh_timeout_looks_up_stale_buckets_and_finds_nodes_that_joined_later() {
    use kwaai_core::dht::DhtConfig;
    let first = loopback_node(&[]);
    let bootstrap = first.listen_addrs()[0].to_string();
    // Client-mode nodes are never contacted, so they learn of new nodes only by asking.
    let client = |refresh_timeout| {
        Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers: vec![bootstrap.clone()],
            dht: DhtConfig { client_mode: true, refresh_timeout, ..DhtConfig::default() },
            ..NodeConfig::default()
        })
        .expect("client starts")
    };
    let refreshing = client(Some(Duration::from_millis(500)));
    let idle = client(None);
    assert_eq!(refreshing.dht().unwrap().routing_table_len(), 1);
    let later: Vec<Node> = (0..3).map(|_| loopback_node(std::slice::from_ref(&bootstrap))).collect();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refreshing.dht().unwrap().routing_table_len() < 1 + later.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(refreshing.dht().unwrap().routing_table_len(), 1 + later.len(), "the refresh found the newcomers");
    assert_eq!(idle.dht().unwrap().routing_table_len(), 1, "without a refresh nothing is looked up");
}

#[test]
fn a_store_leaves_the_value_in_the_writers_cache_even_when_it_is_no_replica() {
    use kwaai_core::dht::{DhtConfig, DhtId, RPC_FIND};
    use kwaai_core::wire::dht::{FindRequest, FindResponse, ResultType};
    use prost::Message;

    let nodes = loopback_swarm(10);
    let bootstrap = nodes[0].listen_addrs()[0].to_string();
    let writer = |cache_on_store| {
        Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers: vec![bootstrap.clone()],
            dht: DhtConfig { cache_on_store, ..DhtConfig::default() },
            ..NodeConfig::default()
        })
        .unwrap()
    };
    let (caching, plain) = (writer(true), writer(false));
    let ids: Vec<DhtId> = nodes.iter().map(|n| n.dht().unwrap().node_id()).collect();
    // A key with at least 5 swarm nodes nearer than the writer: the writer is no replica of it.
    let key_not_held_by = |writer: &Node, tag: &str| {
        let own = writer.dht().unwrap().node_id();
        (0..100_000)
            .map(|i| Value::from(format!("{tag}-{i}")))
            .find(|key| {
                let id = DhtId::of_key(key);
                ids.iter().filter(|n| n.distance(&id) < own.distance(&id)).count() >= 5
            })
            .expect("such a key")
    };
    let find = |node: &Node, key: &Value| {
        let request = FindRequest { keys: vec![DhtId::of_key(key).as_bytes().to_vec()], ..FindRequest::default() };
        let reply = nodes[0].call_unary(node.peer_id(), RPC_FIND, &request.encode_to_vec(), Duration::from_secs(5));
        FindResponse::decode(reply.unwrap().as_slice()).unwrap().results.remove(0)
    };
    let expiration = dht_time() + 60.0;
    let key = key_not_held_by(&caching, "cached");
    assert!(caching.dht_store(key.clone(), None, Value::from("v"), expiration).unwrap());
    let found = find(&caching, &key);
    assert_eq!(found.r#type, ResultType::FoundRegular as i32, "the writer's cache answers a find");
    assert_eq!((found.value, found.expiration_time), (kwaai_core::wire::msgpack::pack(&Value::from("v")), expiration));
    let key = key_not_held_by(&plain, "plain");
    assert!(plain.dht_store(key.clone(), None, Value::from("w"), expiration).unwrap());
    assert_eq!(find(&plain, &key).r#type, ResultType::NotFound as i32, "without cache_on_store nothing is kept");
}

/// A node that just joined (client mode or not) finds its initial peer in its routing table at
/// once: its first store and get, right after `Node::start` returns, reach the swarm.
#[test]
fn the_first_store_and_get_right_after_joining_reach_the_swarm() {
    let nodes = loopback_swarm(3);
    let bootstrap = nodes[0].listen_addrs()[0].to_string();
    let expiration = dht_time() + 60.0;
    assert!(nodes[1].dht_store(Value::from("early"), None, Value::from(7), expiration).unwrap());
    for round in 0..6 {
        let client_mode = round % 2 == 0;
        let joined = Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers: vec![bootstrap.clone()],
            dht: kwaai_core::dht::DhtConfig { client_mode, ..Default::default() },
            ..NodeConfig::default()
        })
        .expect("node starts");
        let got = joined.dht_get(Value::from("early"), false).unwrap();
        assert_eq!(got, Some(DhtValue::Regular { value: Value::from(7), expiration }), "round {round}");
        let key = Value::from(format!("from-{round}"));
        assert!(joined.dht_store(key, None, Value::from(round), expiration).unwrap(), "round {round}");
        joined.shutdown();
    }
}
