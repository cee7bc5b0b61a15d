//! Pushing named tensors between peers: kwaai to kwaai, kwaai to a Python hivemind peer and back,
//! and the refusals (no handler, a handler error, a tensor over the receiver's limits).

mod common;

use std::time::Duration;

use common::{collect_tensors, loopback_node};
use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, Error, ErrorKind, PeerId, ReceivedTensor};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_bytes(DType::F32, shape, &bytes).unwrap()
}

#[test]
fn a_tensor_pushed_between_kwaai_nodes_arrives_whole_and_named() {
    let (a, b) = (loopback_node(&[]), loopback_node(&[]));
    let received = collect_tensors(&b, DecodeLimits::default());
    a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    let tensor = f32_tensor(vec![2, 3], &[1.0, -2.5, 3.25, 0.0, 1e-3, 7.0]);
    a.push_tensor(b.peer_id(), "layer.0.grad", &tensor, Compression::default(), T).unwrap();
    let got = received.recv_timeout(T).unwrap();
    assert_eq!(got, ReceivedTensor { peer: a.peer_id(), name: "layer.0.grad".into(), tensor });
}

#[test]
fn pushes_are_refused_without_a_handler_on_handler_errors_and_over_limits() {
    let (a, b) = (loopback_node(&[]), loopback_node(&[]));
    a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    let small = f32_tensor(vec![1], &[1.0]);
    assert_eq!(
        a.push_tensor(b.peer_id(), "x", &small, Compression::default(), T).unwrap_err().kind(),
        ErrorKind::Protocol
    );

    b.set_tensor_handler(DecodeLimits::default(), |r| Err(Error::invalid_argument(format!("no thanks, {}", r.name))))
        .unwrap();
    let err = a.push_tensor(b.peer_id(), "x", &small, Compression::default(), T).unwrap_err();
    assert!(err.message().contains("no thanks, x"), "{err}");

    let received = collect_tensors(&b, DecodeLimits { max_elements: 4, ..DecodeLimits::default() });
    let big = f32_tensor(vec![5], &[0.0; 5]);
    assert_eq!(
        a.push_tensor(b.peer_id(), "big", &big, Compression::default(), T).unwrap_err().kind(),
        ErrorKind::Protocol
    );
    a.push_tensor(b.peer_id(), "ok", &small, Compression::default(), T).unwrap();
    assert_eq!(received.recv_timeout(T).unwrap().name, "ok");

    assert_eq!(
        a.push_tensor(b.peer_id(), "", &small, Compression::default(), T).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert!(b.clear_tensor_handler().unwrap());
    assert_eq!(
        a.push_tensor(b.peer_id(), "x", &small, Compression::default(), T).unwrap_err().kind(),
        ErrorKind::Protocol
    );
}

#[test]
fn tensors_cross_between_kwaai_and_a_python_hivemind_peer_both_ways() {
    let mut python = common::ReferenceProcess::start("tensor_exchange.py", &[]);
    let ready = python.read_json();
    let python_peer: PeerId = ready["peer_id"].as_str().unwrap().parse().unwrap();
    let node = loopback_node(&[]);
    let received = collect_tensors(&node, DecodeLimits::default());
    node.connect(ready["maddrs"][0].as_str().unwrap(), T).unwrap();

    let tensor = f32_tensor(vec![3, 1], &[0.5, -1.0, 2.0]);
    node.push_tensor(python_peer, "to-python", &tensor, Compression::default(), T).unwrap();
    python.send_line(r#"{"op": "received"}"#);
    let got = python.read_json();
    let expected = json!({"peer": node.peer_id().to_base58(), "name": "to-python", "dtype": "float32",
                          "shape": [3, 1], "values": [0.5, -1.0, 2.0], "streamed": false});
    let mut entry = got["tensors"][0].clone();
    entry.as_object_mut().unwrap().remove("sha256");
    assert_eq!((got["tensors"].as_array().unwrap().len(), entry), (1, expected));

    let command = json!({"op": "push", "peer": node.peer_id().to_base58(), "name": "from-python",
                         "dtype": "int64", "shape": [2, 2], "values": [1, -2, 3, 1i64 << 40]});
    python.send_line(&command.to_string());
    assert_eq!(python.read_json(), json!({"ok": true, "streamed": false}));
    let got = received.recv_timeout(T).unwrap();
    assert_eq!((got.peer, got.name.as_str()), (python_peer, "from-python"));
    assert_eq!((got.tensor.dtype(), got.tensor.shape()), (DType::I64, &[2usize, 2][..]));
    let values: Vec<i64> = got.tensor.as_bytes().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, vec![1, -2, 3, 1 << 40]);
}
