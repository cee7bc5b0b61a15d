//! Forward and backward passes (prompt tuning) of the Rust client through two Python Petals
//! servers (blocks 0:2 and 2:4) equal the same passes through the blocks computed locally, with
//! and without deep prompts; an input over 1 MiB goes through `rpc_forward_stream`.

mod client_common;
mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use client_common::{client_node, make_tiny_llama, recording_config, Swarm};
use kwaai_core::model::{BlockSpan, LoadOptions};
use kwaai_core::Client;

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let err =
        (got - want).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|m| m.to_scalar::<f32>()).expect("diff");
    let scale = want.abs().and_then(|w| w.max_all()).and_then(|m| m.to_scalar::<f32>()).expect("scale");
    assert!(err <= 1e-4 * scale.max(1.0), "{what}: max abs error {err} against scale {scale}");
}

#[test]
fn forward_and_backward_through_python_servers_match_local_blocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("tiny-llama");
    make_tiny_llama(&model_dir);
    let swarm = Swarm::start(&model_dir, &dir.path().join("swarm"), &["0:2", "2:4"]);
    let node = client_node(&swarm);
    let (config, _events) = recording_config();
    let client = Client::new(&node, config).expect("client");
    let local = BlockSpan::load(&model_dir, 0, 4, LoadOptions::default()).expect("local blocks");

    let cpu = Device::Cpu;
    let hidden = Tensor::randn(0f32, 1.0, (3, 7, 64), &cpu).expect("hidden");
    let prompts = (Tensor::randn(0f32, 1.0, (4, 3, 2, 64), &cpu).expect("prompts") * 0.1).expect("scaled");
    let grad_out = Tensor::randn(0f32, 1.0, (3, 7, 64), &cpu).expect("grad");

    for prompts in [None, Some(&prompts)] {
        let what = if prompts.is_some() { "with prompts" } else { "without prompts" };
        let pass = client.forward(&hidden, prompts).expect("remote forward");
        assert_close(pass.output(), &local.forward(&hidden, prompts).expect("local forward"), what);
        let (grad_in, grad_prompts) = client.backward(&pass, &grad_out).expect("remote backward");
        let (want_in, want_prompts) = local.backward(&hidden, prompts, &grad_out).expect("local backward");
        assert_close(&grad_in, &want_in, &format!("{what}: input gradient"));
        match (grad_prompts, want_prompts) {
            (Some(got), Some(want)) => assert_close(&got, &want, &format!("{what}: prompt gradient")),
            (None, None) => {}
            other => panic!("{what}: prompt gradients differ in presence: {other:?}"),
        }
    }

    // 4200 tokens x 64 floats is over 1 MiB: streamed. The blocks are causal, so the first
    // positions equal a local pass over those positions alone.
    let long = Tensor::randn(0f32, 1.0, (1, 4200, 64), &cpu).expect("long input");
    let pass = client.forward(&long, None).expect("streamed forward");
    assert_eq!(pass.output().dims(), &[1, 4200, 64]);
    let head = long.i((.., ..64)).expect("head");
    let out_head = pass.output().i((.., ..64)).expect("out head").to_dtype(DType::F32).expect("f32");
    assert_close(&out_head, &local.forward(&head, None).expect("local head"), "streamed forward");
    node.shutdown();
}
