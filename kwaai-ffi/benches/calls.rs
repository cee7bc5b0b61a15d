//! The Rust side of the C ABI call-cost comparison (the C side is benches/ffi_calls.c): the same
//! operations through kwaai-core directly.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kwaai_core::tensor::{DType, Tensor};
use kwaai_core::{Node, NodeConfig};

fn calls(c: &mut Criterion) {
    let node = Node::start(NodeConfig::default()).expect("node starts");
    let tensor = Tensor::from_bytes(DType::F32, vec![4], &[0u8; 16]).unwrap();
    c.bench_function("rust: tensor rank", |b| b.iter(|| black_box(&tensor).shape().len()));
    c.bench_function("rust: node listen_addrs().len()", |b| b.iter(|| black_box(&node).listen_addrs().len()));
    node.shutdown();
}

criterion_group!(benches, calls);
criterion_main!(benches);
