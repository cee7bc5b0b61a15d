//! 256 MiB tensors pushed through the streaming RPC: between two kwaai nodes, from kwaai to a
//! Python hivemind peer (joined there with `deserialize_tensor_stream`) and back (split there with
//! `split_for_streaming`), and a stream refused by the receiver's limits.

mod common;

use std::time::Duration;

use common::{collect_tensors, loopback_node};
use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, ErrorKind, PeerId, STREAM_THRESHOLD};
use serde_json::json;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(120);
/// 64 Mi float32 elements: 256 MiB.
const SHAPE: [usize; 2] = [8192, 8192];

/// The float32 tensor whose bit patterns are 0, 1, 2, ...: every element differs.
fn pattern() -> Tensor {
    let numel = SHAPE.iter().product::<usize>() as u32;
    let bytes: Vec<u8> = (0..numel).flat_map(u32::to_le_bytes).collect();
    Tensor::from_bytes(DType::F32, SHAPE.to_vec(), &bytes).unwrap()
}

#[test]
fn a_256_mib_tensor_streams_intact_between_kwaai_nodes() {
    let (a, b) = (loopback_node(&[]), loopback_node(&[]));
    let received = collect_tensors(&b, DecodeLimits::default());
    a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    let tensor = pattern();
    assert!(tensor.as_bytes().len() > STREAM_THRESHOLD);
    a.push_tensor(b.peer_id(), "weights", &tensor, Compression::default(), T).unwrap();
    let got = received.recv_timeout(T).unwrap();
    assert_eq!((got.peer, got.name.as_str()), (a.peer_id(), "weights"));
    assert_eq!((got.tensor.dtype(), got.tensor.shape()), (DType::F32, &SHAPE[..]));
    assert!(got.tensor.as_bytes() == tensor.as_bytes(), "the streamed bytes differ");
}

#[test]
fn a_stream_over_the_receivers_limits_is_refused() {
    let (a, b) = (loopback_node(&[]), loopback_node(&[]));
    let received = collect_tensors(&b, DecodeLimits { max_elements: 1 << 20, ..DecodeLimits::default() });
    a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    let bytes = vec![0u8; 4 << 20];
    let big = Tensor::from_bytes(DType::F32, vec![1 << 20, 1], &bytes).unwrap();
    let bigger = Tensor::from_bytes(DType::U8, vec![4 << 20], &bytes).unwrap();
    let err = a.push_tensor(b.peer_id(), "bigger", &bigger, Compression::default(), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    a.push_tensor(b.peer_id(), "big", &big, Compression::default(), T).unwrap();
    assert_eq!(received.recv_timeout(T).unwrap().name, "big");
    assert!(received.try_recv().is_err(), "the refused tensor reached the handler");
}

#[test]
fn a_256_mib_tensor_streams_intact_between_kwaai_and_python_both_ways() {
    let node = loopback_node(&[]);
    let received = collect_tensors(&node, DecodeLimits::default());
    let addr = node.listen_addrs()[0].to_string();
    let mut python = common::ReferenceProcess::start("tensor_exchange.py", &[&addr]);
    let ready = python.read_json();
    let python_peer: PeerId = ready["peer_id"].as_str().unwrap().parse().unwrap();
    let tensor = pattern();

    let command = json!({"op": "push", "peer": node.peer_id().to_base58(), "name": "from-python",
                         "dtype": "float32", "shape": SHAPE, "pattern": true});
    python.send_line(&command.to_string());
    assert_eq!(python.read_json(), json!({"ok": true, "streamed": true}));
    let got = received.recv_timeout(T).unwrap();
    assert_eq!((got.peer, got.name.as_str()), (python_peer, "from-python"));
    assert_eq!((got.tensor.dtype(), got.tensor.shape()), (DType::F32, &SHAPE[..]));
    assert!(got.tensor.as_bytes() == tensor.as_bytes(), "the streamed bytes differ");

    node.push_tensor(python_peer, "to-python", &tensor, Compression::default(), T).unwrap();
    python.send_line(r#"{"op": "received"}"#);
    let got = python.read_json();
    let digest = hex(&Sha256::digest(tensor.as_bytes()));
    let expected = json!([{"peer": node.peer_id().to_base58(), "name": "to-python", "dtype": "float32",
                           "shape": SHAPE, "sha256": digest, "streamed": true}]);
    assert_eq!(got["tensors"], expected);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
