//! Compression chosen per push: every hivemind codec, and the training schemes with error
//! feedback (block-wise 8-bit, top-k), between kwaai nodes; a Python hivemind peer reads top-k
//! pushes (hivemind 1.1.10 cannot decode BLOCKWISE_8BIT beside bitsandbytes 0.41.1).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{collect_tensors, loopback_node};
use kwaai_core::tensor::{CompressionType, DType, Data, DecodeLimits, Tensor};
use kwaai_core::{Compression, Error, ErrorKind, Node, PeerId, ReceivedTensor};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn pair() -> (Node, Node, mpsc::Receiver<ReceivedTensor>) {
    let (a, b) = (loopback_node(&[]), loopback_node(&[]));
    let rx = collect_tensors(&b, DecodeLimits::default());
    a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    (a, b, rx)
}

fn f32_tensor(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
    Tensor::new(shape, Data::F32(values)).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.view().to_f32().into_owned()
}

/// A deterministic pseudo-random gradient for step `step`.
fn gradient(step: u64, n: usize) -> Vec<f32> {
    let mut state = step.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

/// Pushes `steps` gradients under one name and returns the largest gap between the running sums
/// of what was sent and what arrived; `feedback` false forgets the residual before each push.
fn sum_gap(compression: Compression, feedback: bool) -> f32 {
    let (a, b, received) = pair();
    let n = 10_000;
    let (mut sent, mut got) = (vec![0f32; n], vec![0f32; n]);
    for step in 0..20 {
        let g = gradient(step, n);
        if !feedback {
            a.clear_push_feedback();
        }
        a.push_tensor(b.peer_id(), "grad", &f32_tensor(vec![100, 100], g.clone()), compression, T).unwrap();
        let r = received.recv_timeout(T).unwrap();
        assert_eq!((r.name.as_str(), r.tensor.shape()), ("grad", &[100usize, 100][..]));
        sent.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
        got.iter_mut().zip(values(&r.tensor)).for_each(|(s, v)| *s += v);
    }
    sent.iter().zip(&got).map(|(s, g)| (s - g).abs()).fold(0.0, f32::max)
}

#[test]
fn error_feedback_keeps_the_sum_of_received_tensors_close_to_the_sum_sent() {
    for compression in [Compression::TopK { k: 1000 }, Compression::Blockwise8bitFeedback] {
        let with = sum_gap(compression, true);
        let without = sum_gap(compression, false);
        assert!(with * 4.0 < without, "{compression:?}: gap {with} with feedback, {without} without");
    }
}

#[test]
fn every_hivemind_codec_is_selectable_per_push() {
    let (a, b, received) = pair();
    let x: Vec<f32> = (0..4096).map(|i| ((i % 97) as f32 - 48.0) / 16.0).collect();
    let tensor = f32_tensor(vec![64, 64], x.clone());
    let codecs = [
        (CompressionType::None, 0.0),
        (CompressionType::Float16, 2e-3),
        (CompressionType::Meanstd16bit, 2e-3),
        (CompressionType::Quantile8bit, 0.1),
        (CompressionType::Uniform8bit, 0.1),
        (CompressionType::Blockwise8bit, 0.05),
    ];
    for (codec, tolerance) in codecs {
        a.push_tensor(b.peer_id(), "w", &tensor, codec.into(), T).unwrap();
        let got = received.recv_timeout(T).unwrap().tensor;
        assert_eq!((got.dtype(), got.shape()), (DType::F32, &[64usize, 64][..]), "{codec:?}");
        let err = values(&got).iter().zip(&x).map(|(g, v)| (g - v).abs()).fold(0.0, f32::max);
        assert!(err <= tolerance, "{codec:?}: max error {err}");
    }
    let all = Compression::TopK { k: 4096 };
    a.push_tensor(b.peer_id(), "exact", &tensor, all, T).unwrap();
    assert_eq!(received.recv_timeout(T).unwrap().tensor, tensor, "top-k of every entry is exact");
}

#[test]
fn bad_feedback_input_is_refused_and_leaves_the_residual() {
    let (a, b, received) = pair();
    let ints = Tensor::new(vec![4], Data::I64(vec![1, 2, 3, 4])).unwrap();
    let err = a.push_tensor(b.peer_id(), "i", &ints, Compression::TopK { k: 1 }, T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    let first = f32_tensor(vec![4], vec![4.0, 1.0, 0.0, 0.0]);
    a.push_tensor(b.peer_id(), "g", &first, Compression::TopK { k: 1 }, T).unwrap();
    assert_eq!(values(&received.recv_timeout(T).unwrap().tensor), vec![4.0, 0.0, 0.0, 0.0]);
    let resized = f32_tensor(vec![5], vec![0.0; 5]);
    let err = a.push_tensor(b.peer_id(), "g", &resized, Compression::TopK { k: 1 }, T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    b.clear_tensor_handler().unwrap();
    let zero = f32_tensor(vec![4], vec![0.0; 4]);
    assert!(a.push_tensor(b.peer_id(), "g", &zero, Compression::TopK { k: 1 }, T).is_err());
    let (tx, again) = mpsc::channel();
    b.set_tensor_handler(DecodeLimits::default(), move |r| {
        tx.send(r).map_err(|_| Error::new(ErrorKind::Closed, "gone"))
    })
    .unwrap();
    a.push_tensor(b.peer_id(), "g", &zero, Compression::TopK { k: 1 }, T).unwrap();
    assert_eq!(values(&again.recv_timeout(T).unwrap().tensor), vec![0.0, 1.0, 0.0, 0.0], "the residual survived");
}

#[test]
fn a_python_hivemind_peer_reads_a_top_k_push() {
    let node = loopback_node(&[]);
    let addr = node.listen_addrs()[0].to_string();
    let mut python = common::ReferenceProcess::start("tensor_exchange.py", &[&addr]);
    let ready = python.read_json();
    let python_peer: PeerId = ready["peer_id"].as_str().unwrap().parse().unwrap();
    let tensor = f32_tensor(vec![2, 3], vec![0.5, -4.0, 3.0, 0.25, 0.0, 1.0]);
    node.push_tensor(python_peer, "sparse", &tensor, Compression::TopK { k: 2 }, T).unwrap();
    python.send_line(r#"{"op": "received"}"#);
    let got = python.read_json();
    let sparse = &got["tensors"][0];
    assert_eq!(sparse["name"], json!("sparse"));
    assert_eq!(sparse["shape"], json!([2, 3]));
    assert_eq!(sparse["values"], json!([0.0, -4.0, 3.0, 0.0, 0.0, 0.0]));
    assert_eq!(got["tensors"].as_array().unwrap().len(), 1);
}
