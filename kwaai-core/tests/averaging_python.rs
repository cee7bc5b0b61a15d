//! Two Python `hivemind.DecentralizedAverager`s and two Rust averagers (127.0.0.1, one DHT)
//! form one group and all reach the exact weighted mean, with and without compression.
//!
//! The Python peers run `tests/reference/averaging_peers.py`, which shields hivemind's shared
//! per-part future from the cancellation of a vanished sender's handler (a hivemind 1.1.10 bug that
//! stalls the surviving Python peers of any group, see the script); everything else is stock hivemind.

mod common;

use std::time::Duration;

use common::{loopback_node, ReferenceProcess};
use kwaai_core::averaging::keys::{group_key, next_group_bits};
use kwaai_core::averaging::{AveragerConfig, AveragingStage, DecentralizedAverager};
use kwaai_core::dht::DhtValue;
use kwaai_core::tensor::{CompressionType, Data, Tensor};
use kwaai_core::{Node, PeerId};
use rmpv::Value;
use serde_json::json;

const SIZES: [usize; 3] = [3000, 3, 7000];
/// The initial group bits of the averagers that reach the mean; every member moves to new bits
/// after the round.
const GROUP_BITS: &str = "0110";
/// Bounds every all-reduce, Python's and Rust's: a round here takes a few seconds, so a peer that
/// waits longer than this on a gone peer fails the test instead of hanging it.
const ALLREDUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the test waits for the Python process's answer to a step: its 60 s search, then the
/// all-reduce, with room to spare.
const PYTHON_REPLY: Duration = Duration::from_secs(150);

/// Averager `peer`'s tensor values: distinct per peer and element.
fn values_of(peer: usize) -> Vec<Vec<f32>> {
    values_for(peer, &SIZES)
}

fn values_for(peer: usize, sizes: &[usize]) -> Vec<Vec<f32>> {
    sizes
        .iter()
        .enumerate()
        .map(|(t, &n)| {
            (0..n).map(|i| ((i * 11 + t * 5 + peer * 37) % 503) as f32 / 10.0 - 25.0 + peer as f32).collect()
        })
        .collect()
}

/// One large tensor per averager, for the rounds that lose a peer midway.
fn large_values(peer: usize) -> Vec<Vec<f32>> {
    values_for(peer, &[120_000])
}

/// A group for the rounds that lose a peer midway: large tensors, no codec, 3 s chunk timeouts.
fn start_losing_a_peer(prefix: &str) -> Mixed {
    start_mixed(prefix, CompressionType::None, "NONE", large_values, Some(Duration::from_secs(3)), "", [0.0; 4])
}

/// After a round that lost one of four peers midway, every survivor holds values within the
/// range of the four inputs, and the survivors agree on the parts the surviving reducers
/// averaged: about three quarters of the vector, so at least half.
fn assert_survivors_averaged(survivors: &[(String, Vec<f32>)]) {
    let initial: Vec<Vec<f32>> = (0..4).map(|p| large_values(p).remove(0)).collect();
    let mut agreed = 0usize;
    for i in 0..initial[0].len() {
        let low = (0..4).map(|p| initial[p][i]).fold(f32::INFINITY, f32::min);
        let high = (0..4).map(|p| initial[p][i]).fold(f32::NEG_INFINITY, f32::max);
        for (who, got) in survivors {
            assert!(
                got[i] >= low - 1e-3 && got[i] <= high + 1e-3,
                "{who} element {i}: {} outside [{low}, {high}]",
                got[i]
            );
        }
        if survivors.iter().all(|(_, got)| (got[i] - survivors[0].1[i]).abs() < 1e-4) {
            agreed += 1;
        }
    }
    assert!(agreed >= initial[0].len() / 2, "survivors agree on only {agreed} of {} elements", initial[0].len());
}

fn config(prefix: &str, compression: CompressionType) -> AveragerConfig {
    AveragerConfig {
        prefix: prefix.into(),
        target_group_size: Some(4),
        min_group_size: 4,
        min_matchmaking_time: Duration::from_secs(4),
        request_timeout: Duration::from_secs(2),
        part_size_bytes: 8 << 10,
        compression,
        ..AveragerConfig::default()
    }
}

/// Two Rust nodes (the second joined to the first), a Python process with two hivemind
/// averagers whose DHTs join both, and a Rust averager on each node. Averager `p` (Python 0, 1;
/// Rust 2, 3) holds `values(p)`.
struct Mixed {
    nodes: [Node; 2],
    python: ReferenceProcess,
    python_peers: Vec<String>,
    rust: Vec<DecentralizedAverager>,
}

fn start_mixed(
    prefix: &str,
    compression: CompressionType,
    python_codec: &str,
    values: fn(usize) -> Vec<Vec<f32>>,
    chunk_timeout: Option<Duration>,
    group_bits: &str,
    priorities: [f64; 4],
) -> Mixed {
    // The averagers' debug log, shown with a failing test's output (RUST_LOG overrides it).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kwaai_core::averaging=debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let first = loopback_node(&[]);
    let bootstrap = first.listen_addrs()[0].to_string();
    let second = loopback_node(std::slice::from_ref(&bootstrap));
    let mut python = ReferenceProcess::start("averaging_peers.py", &[]);
    let python_tensors: Vec<serde_json::Value> = (0..2)
        .map(|p| json!(values(p).iter().map(|v| json!({"shape": [v.len()], "values": v})).collect::<Vec<_>>()))
        .collect();
    let setup = json!({
        "initial_peers": [bootstrap, second.listen_addrs()[0].to_string()],
        "prefix": prefix,
        "target_group_size": 4,
        "min_group_size": 4,
        "min_matchmaking_time": 4.0,
        "request_timeout": 2.0,
        "part_size_bytes": 8 << 10,
        "compression": python_codec,
        "next_chunk_timeout": chunk_timeout.map(|t| t.as_secs_f64()),
        "allreduce_timeout": ALLREDUCE_TIMEOUT.as_secs_f64(),
        "initial_group_bits": group_bits,
        "state_sharing_priority": [priorities[0], priorities[1]],
        "averagers": python_tensors,
    });
    python.send_line(&setup.to_string());
    let ready = python.read_json_within(PYTHON_REPLY);
    let python_peers: Vec<String> =
        ready["peer_ids"].as_array().expect("peer ids").iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert_eq!(python_peers.len(), 2);
    let rust = [&first, &second]
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let tensors =
                values(2 + i).into_iter().map(|v| Tensor::new(vec![v.len()], Data::F32(v)).unwrap()).collect();
            let config = AveragerConfig {
                sender_timeout: chunk_timeout,
                reducer_timeout: chunk_timeout.map(|t| t * 2),
                allreduce_timeout: Some(ALLREDUCE_TIMEOUT),
                initial_group_bits: group_bits.into(),
                state_sharing_priority: priorities[2 + i],
                ..config(prefix, compression)
            };
            DecentralizedAverager::new(node, tensors, config).unwrap()
        })
        .collect();
    Mixed { nodes: [first, second], python, python_peers, rust }
}

/// Waits until each of `peers` (base58) is declared in the DHT as looking for a group under `key`.
fn wait_until_looking(node: &Node, key: &str, peers: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let looking: Vec<String> = match node.dht_get(Value::from(key), true).unwrap() {
            Some(DhtValue::Dictionary { entries, .. }) => entries
                .into_iter()
                .filter(|e| e.value == Value::Boolean(true))
                .filter_map(|e| match e.subkey {
                    Value::Binary(id) => PeerId::from_bytes(&id).ok().map(|p| p.to_base58()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if peers.iter().all(|p| looking.contains(p)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the Python averagers never declared under {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `python_leads`: the Rust averagers start looking once both Python ones have declared, so one of
/// those (the earliest to expire) leads the group; otherwise the Rust ones start 1.5 s first and lead.
fn mixed_group(prefix: &str, compression: CompressionType, python_codec: &str, tolerance: f32, python_leads: bool) {
    let Mixed { nodes: [first, second], mut python, python_peers, rust } =
        start_mixed(prefix, compression, python_codec, values_of, Some(Duration::from_secs(15)), GROUP_BITS, [0.0; 4]);
    let weights = [1.0, 2.0, 3.0, 4.0];
    let step = json!({"op": "step", "weights": [weights[0], weights[1]], "timeout": 60.0}).to_string();
    if python_leads {
        python.send_line(&step);
        wait_until_looking(&first, &group_key(prefix, GROUP_BITS), &python_peers);
    }
    let groups: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = rust
            .iter()
            .enumerate()
            .map(|(i, averager)| {
                s.spawn(move || averager.step(Value::from(2 + i as u64), weights[2 + i], Duration::from_secs(60)))
            })
            .collect();
        if !python_leads {
            std::thread::sleep(Duration::from_millis(1500));
            python.send_line(&step);
        }
        handles.into_iter().map(|h| h.join().unwrap().expect("Rust step succeeds")).collect()
    });
    let reply = python.read_json_within(PYTHON_REPLY);
    assert_eq!(reply["ok"], true, "{reply}");
    let results = reply["results"].as_array().unwrap();

    // Everyone is in the same group of four, and gathered everyone's value.
    let mut members: Vec<String> = groups[0].peer_ids.iter().map(|p| p.to_base58()).collect();
    members.sort();
    let mut expected_members = python_peers.clone();
    expected_members.extend([first.peer_id().to_base58(), second.peer_id().to_base58()]);
    expected_members.sort();
    assert_eq!(members, expected_members);
    assert_eq!(groups[0], groups[1]);
    let mut rust_gathered: Vec<u64> = groups[0].user_data().unwrap().iter().map(|(_, v)| v.as_u64().unwrap()).collect();
    rust_gathered.sort();
    assert_eq!(rust_gathered, vec![0, 1, 2, 3]);
    for (i, result) in results.iter().enumerate() {
        let gathered = result["gathered"].as_object().unwrap_or_else(|| panic!("Python averager {i}: {result}"));
        let mut keys: Vec<String> = gathered.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, expected_members, "Python averager {i}");
        assert_eq!(gathered[&first.peer_id().to_base58()], 2);
    }

    // Every member moved to the bits the group assigned it, computed alike in Python and Rust.
    let group = &groups[0];
    let bits_of = |peer: &str| {
        let index = group.peer_ids.iter().position(|p| p.to_base58() == peer).unwrap();
        next_group_bits(GROUP_BITS, &group.group_id, 4, index, Some(4)).unwrap()
    };
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["group_bits"], bits_of(&python_peers[i]).as_str(), "Python averager {i}");
    }
    for (averager, node) in rust.iter().zip([&first, &second]) {
        assert_eq!(averager.group_bits(), bits_of(&node.peer_id().to_base58()));
    }

    let inputs: Vec<Vec<Vec<f32>>> = (0..4).map(values_of).collect();
    let total: f64 = weights.iter().sum();
    for (t, &n) in SIZES.iter().enumerate() {
        let mean: Vec<f32> = (0..n)
            .map(|i| ((0..4).map(|p| weights[p] * f64::from(inputs[p][t][i])).sum::<f64>() / total) as f32)
            .collect();
        let mut outputs: Vec<(String, Vec<f32>)> = results
            .iter()
            .enumerate()
            .map(|(p, r)| {
                let values = r["tensors"][t].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                (format!("Python averager {p}"), values)
            })
            .collect();
        for (p, averager) in rust.iter().enumerate() {
            let Data::F32(values) = averager.tensors()[t].data().clone() else { panic!("float32") };
            outputs.push((format!("Rust averager {p}"), values));
        }
        for (who, got) in &outputs {
            assert_eq!(got.len(), n, "{who} tensor {t}");
            for (i, (g, e)) in got.iter().zip(&mean).enumerate() {
                assert!((g - e).abs() <= tolerance, "{who} tensor {t} element {i}: {g} vs mean {e}");
            }
        }
    }
}

#[test]
fn python_and_rust_averagers_reach_the_weighted_mean_under_a_python_leader() {
    mixed_group("mixednonepy", CompressionType::None, "NONE", 1e-4, true);
}

#[test]
fn python_and_rust_averagers_reach_the_weighted_mean_under_a_rust_leader() {
    mixed_group("mixednonerust", CompressionType::None, "NONE", 1e-4, false);
}

#[test]
fn python_and_rust_averagers_reach_the_mean_through_float16() {
    mixed_group("mixedhalf", CompressionType::Float16, "FLOAT16", 0.05, false);
}

#[test]
fn python_and_rust_averagers_reach_the_mean_through_uniform_8bit() {
    mixed_group("mixedeight", CompressionType::Uniform8bit, "UNIFORM_8BIT", 1.0, true);
}

#[test]
fn python_and_rust_averagers_finish_when_a_rust_averager_drops_mid_round() {
    let Mixed { nodes, mut python, python_peers, rust } = start_losing_a_peer("mixeddrop");
    // The Python averagers lead (they declare first, so their windows end first), so the dropping
    // Rust follower leaves after the group formed.
    python.send_line(&json!({"op": "step", "weights": [1.0, 1.0], "timeout": 60.0}).to_string());
    wait_until_looking(&nodes[0], &group_key("mixeddrop", ""), &python_peers);
    let rust_results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = rust
            .iter()
            .map(|averager| s.spawn(move || averager.step(Value::Nil, 1.0, Duration::from_secs(60))))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while rust[1].stage() != AveragingStage::RunningAllreduce {
            assert!(std::time::Instant::now() < deadline, "the group never formed");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(20));
        nodes[1].shutdown();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let reply = python.read_json_within(PYTHON_REPLY);
    let results = reply["results"].as_array().unwrap();
    let mut survivors: Vec<(String, Vec<f32>)> = results
        .iter()
        .enumerate()
        .map(|(p, r)| {
            assert!(r["gathered"].as_object().is_some_and(|g| g.len() == 4), "Python averager {p}: {r}");
            let values = r["tensors"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            (format!("Python averager {p}"), values)
        })
        .collect();
    let group = rust_results[0].as_ref().unwrap_or_else(|e| panic!("the surviving Rust averager failed: {e}"));
    assert_eq!(group.size(), 4);
    let Data::F32(values) = rust[0].tensors()[0].data().clone() else { panic!("float32") };
    survivors.push(("Rust averager 0".into(), values));

    assert_survivors_averaged(&survivors);
}

#[test]
fn python_and_rust_averagers_download_each_others_state() {
    // Priorities: Rust averager 1 (30) first, then Python averager 0 (20).
    let Mixed { nodes: _nodes, mut python, rust, .. } =
        start_mixed("mixedstate", CompressionType::None, "NONE", values_of, None, "0110", [20.0, 0.0, 0.0, 30.0]);
    // A Rust donor's state reaches a Python averager.
    python.send_line(&json!({"op": "load_state", "averager": 0, "timeout": 20.0}).to_string());
    let reply = python.read_json_within(PYTHON_REPLY);
    let state = &reply["state"];
    assert_eq!(state["metadata"], json!({"group_key": "0110"}), "{reply}");
    let expected = values_of(3);
    let tensors = state["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), expected.len());
    for (got, want) in tensors.iter().zip(&expected) {
        let got: Vec<f32> = got.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(&got, want);
    }

    // A Python donor's state reaches the Rust averager (which skips itself).
    let (metadata, tensors) = rust[1].load_state_from_peers(Duration::from_secs(20)).unwrap().expect("a donor");
    assert_eq!(metadata, Value::Map(vec![(Value::from("group_key"), Value::from("0110"))]));
    let got: Vec<Vec<f32>> = tensors
        .iter()
        .map(|t| match t.data() {
            Data::F32(v) => v.clone(),
            other => panic!("expected float32, got {:?}", other.dtype()),
        })
        .collect();
    assert_eq!(got, values_of(0));
    assert_eq!(tensors[0].shape(), &[SIZES[0]]);
}

#[test]
fn python_and_rust_averagers_finish_when_a_python_averager_is_killed_mid_round() {
    let Mixed { nodes: _nodes, mut python, rust, .. } = start_losing_a_peer("mixedkill");
    // The Rust averagers lead, so the killed Python follower leaves after the group formed.
    let step = json!({"op": "step", "weights": [1.0, 1.0], "timeout": 60.0, "kill": 1}).to_string();
    let rust_results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = rust
            .iter()
            .map(|averager| s.spawn(move || averager.step(Value::Nil, 1.0, Duration::from_secs(60))))
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        python.send_line(&step);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let reply = python.read_json_within(PYTHON_REPLY);
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results[1]["error"], "killed");
    let survivor = &results[0];
    assert!(survivor["gathered"].as_object().is_some_and(|g| g.len() == 4), "Python averager 0: {survivor}");
    let mut survivors: Vec<(String, Vec<f32>)> = vec![(
        "Python averager 0".into(),
        survivor["tensors"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
    )];
    for (p, (averager, result)) in rust.iter().zip(&rust_results).enumerate() {
        let group = result.as_ref().unwrap_or_else(|e| panic!("Rust averager {p} failed: {e}"));
        assert_eq!(group.size(), 4);
        let Data::F32(values) = averager.tensors()[0].data().clone() else { panic!("float32") };
        survivors.push((format!("Rust averager {p}"), values));
    }
    assert_survivors_averaged(&survivors);
}
