//! Expert declarations between kwaai and hivemind: what Python's `declare_experts` writes is
//! exactly what kwaai's `declaration_items` computes (keys, subkeys, tuple values), kwaai's
//! `get_experts` and beam search find Python-declared experts (1-D and 3-D grids), and Python's
//! `get_experts`, raw reads and `MoEBeamSearcher` find kwaai-declared ones.

mod common;

use common::{loopback_node, ReferenceProcess};
use kwaai_core::dht::{dht_time, DhtValue};
use kwaai_core::moe::{declaration_items, declare_experts, get_experts, MoeBeamSearcher};
use kwaai_core::wire::msgpack;
use kwaai_core::PeerId;
use rmpv::Value;
use serde_json::{json, Value as Json};

/// A msgpack value in the JSON form the Python script prints.
fn plain(value: &Value) -> Json {
    if let Some(items) = msgpack::as_tuple(value) {
        return json!({"tuple": items.iter().map(plain).collect::<Vec<_>>()});
    }
    match value {
        Value::Nil => Json::Null,
        Value::String(s) => json!(s.as_str().expect("utf-8")),
        Value::Integer(i) => json!(i.as_i64().expect("an i64")),
        Value::Boolean(b) => json!(b),
        other => panic!("unexpected value {other:?}"),
    }
}

fn plain_dht(value: Option<DhtValue>) -> Json {
    match value {
        None => Json::Null,
        Some(DhtValue::Regular { value, .. }) => plain(&value),
        Some(DhtValue::Dictionary { entries, .. }) => {
            let mut pairs: Vec<(i64, Json)> =
                entries.iter().map(|e| (e.subkey.as_i64().expect("int subkey"), plain(&e.value))).collect();
            pairs.sort_by_key(|(k, _)| *k);
            json!({"dict": pairs.into_iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()})
        }
    }
}

fn ask(python: &mut ReferenceProcess, command: Json) -> Json {
    python.send_line(&command.to_string());
    let reply = python.read_json();
    assert!(reply.get("error").is_none(), "{reply}");
    reply
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn declarations_written_by_either_side_are_read_and_searched_by_the_other() {
    let node = loopback_node(&[]);
    let mut python = ReferenceProcess::start("moe_declare.py", &[&node.listen_addrs()[0].to_string()]);
    let python_peer: PeerId = python.read_json()["peer_id"].as_str().expect("peer id").parse().expect("peer id");

    // Python declares; every record is what declaration_items computes for the same uids.
    let python_uids = ["pexp.0", "pexp.3", "pgrid.1.2.3", "pgrid.1.0.3"];
    let expiration = dht_time() + 120.0;
    ask(&mut python, json!({"op": "declare", "uids": python_uids, "expiration": expiration}));
    let expected = declaration_items(&strings(&python_uids), &python_peer, expiration).expect("items");
    for item in &expected {
        let got = node.dht_get(item.key.clone(), true).expect("dht get");
        match (&item.subkey, got) {
            (None, Some(DhtValue::Regular { value, .. })) => assert_eq!(value, item.value, "{:?}", item.key),
            (Some(subkey), Some(DhtValue::Dictionary { entries, .. })) => {
                let entry = entries.iter().find(|e| &e.subkey == subkey).expect("the subkey");
                assert_eq!(entry.value, item.value, "{:?}[{subkey:?}]", item.key);
            }
            (_, got) => panic!("{:?}: unexpected {got:?}", item.key),
        }
    }
    let found = get_experts(&node, &strings(&python_uids)).expect("get_experts");
    for (uid, info) in python_uids.iter().zip(found) {
        let info = info.unwrap_or_else(|| panic!("{uid} found"));
        assert_eq!((info.uid.as_str(), info.peer_id), (*uid, python_peer));
    }
    let flat = MoeBeamSearcher::new(&node, "pexp", vec![5], false).expect("searcher");
    let best = flat.find_best_experts(&[vec![0.0, 1.0, 2.0, 5.0, 3.0]], 3).expect("beam search");
    assert_eq!(best.iter().map(|e| e.uid.as_str()).collect::<Vec<_>>(), ["pexp.3", "pexp.0"]);
    let grid = MoeBeamSearcher::new(&node, "pgrid.", vec![2, 3, 4], true).expect("searcher");
    let scores = [vec![0.0, 1.0], vec![2.0, 0.0, 1.0], vec![0.0, 0.0, 0.0, 1.0]];
    let best = grid.find_best_experts(&scores, 2).expect("beam search");
    assert_eq!(best.iter().map(|e| e.uid.as_str()).collect::<Vec<_>>(), ["pgrid.1.0.3", "pgrid.1.2.3"]);

    // kwaai declares; Python reads the raw records, finds the experts and searches the grids.
    let rust_uids = ["rexp.4", "rgrid.0.1.2"];
    let flags = declare_experts(&node, &strings(&rust_uids), dht_time() + 120.0).expect("declare");
    assert!(flags.iter().all(|ok| *ok), "{flags:?}");
    let me = node.peer_id().to_base58();
    for (key, value) in [
        ("rexp.4", json!(me)),
        ("rexp.4.", json!({"dict": [[-1, {"tuple": ["rexp.4", me]}]]})),
        ("rgrid.0.1.2", json!(me)),
        ("rgrid.0.1.", json!({"dict": [[2, {"tuple": ["rgrid.0.1.2", me]}]]})),
        ("rgrid.0.", json!({"dict": [[1, {"tuple": ["rgrid.0.1.2", me]}]]})),
    ] {
        assert_eq!(ask(&mut python, json!({"op": "get", "key": key}))["value"], value, "{key}");
        assert_eq!(plain_dht(node.dht_get(Value::from(key), true).expect("get")), value, "{key} from kwaai");
    }
    let found = ask(&mut python, json!({"op": "get_experts", "uids": rust_uids}));
    assert_eq!(found["experts"], json!([["rexp.4", me], ["rgrid.0.1.2", me]]));
    let flat = ask(
        &mut python,
        json!({"op": "beam", "prefix": "rexp.", "grid": [6], "scores": [[0, 0, 0, 0, 1, 0]], "beam": 2}),
    );
    assert_eq!(flat["uids"], json!(["rexp.4"]));
    let scores = json!([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0, 1.0]]);
    let grid =
        ask(&mut python, json!({"op": "beam", "prefix": "rgrid.", "grid": [2, 2, 3], "scores": scores, "beam": 2}));
    assert_eq!(grid["uids"], json!(["rgrid.0.1.2"]));
}
