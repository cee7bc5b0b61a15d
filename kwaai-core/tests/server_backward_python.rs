//! A kwaai node serving all 4 blocks of a tiny Llama takes a Petals client through one deep
//! prompt-tuning step (`AutoDistributedModelForCausalLM`, `tuning_mode="deep_ptune"`): the client
//! finds the span through the DHT, runs forward, then backward through `rpc_backward` (and, forced,
//! through `rpc_forward_stream` / `rpc_backward_stream`), and its gradients for the prompt
//! embeddings, the deep prompts and the input embeddings equal those transformers computes locally;
//! the same holds when a Python Petals server holds the first half of the blocks. Bad requests are
//! refused with the text a Petals server sends for the same request.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::loopback_node;
use kwaai_core::model::{BlockSpan, LoadOptions};
use kwaai_core::server::{
    announce, block_uid, serve_backward, serve_forward, serve_info, BackwardService, BlockSchema, ForwardService,
    InfoService, ServerInfo, ServerRpcInfo, ServerState, Span,
};
use kwaai_core::tensor::{decode, encode, CompressionType, DType, Data, DecodeLimits, Tensor};
use kwaai_core::wire::msgpack;
use kwaai_core::wire::runtime::{ExpertRequest, ExpertResponse};
use kwaai_core::{ErrorKind, Node, NodeConfig};
use prost::Message;
use rmpv::Value;
use serde_json::Value as Json;

const PREFIX: &str = "tiny-llama-hf";
const HIDDEN: usize = 64;

fn shared_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../shared"))
}

fn make_tiny_llama(dir: &std::path::Path) {
    let out = Command::new(common::reference_python())
        .arg(shared_dir().join("reference/make_tiny_model.py"))
        .arg(dir)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn load_blocks(dir: &std::path::Path) -> (Vec<BlockSpan>, Vec<String>) {
    let blocks = (0..4).map(|i| BlockSpan::load(dir, i, i + 1, LoadOptions::default()).expect("block loads")).collect();
    (blocks, (0..4).map(|i| block_uid(PREFIX, i)).collect())
}

fn f32_tensor(shape: Vec<usize>, fill: impl Fn(usize) -> f32) -> kwaai_core::wire::runtime::Tensor {
    let n = shape.iter().product();
    let t = Tensor::new(shape, Data::F32((0..n).map(fill).collect())).expect("tensor");
    encode(&t.view(), CompressionType::None).expect("encodes")
}

fn assert_close(comparison: &Json, what: &str) {
    let err = comparison["max_abs_err"].as_f64().expect("error");
    let scale = comparison["ref_scale"].as_f64().expect("scale");
    assert!(scale > 1e-6, "{what}: the reference gradient is zero");
    assert!(err <= 1e-4 * scale.max(1.0), "{what}: gradient max abs error {err} against scale {scale}");
}

/// Serves blocks `range` of the model in `dir` on `node` (rpc_info, forward, backward) and
/// announces them ONLINE.
fn serve_and_announce(node: &Node, dir: &std::path::Path, range: std::ops::Range<u32>) {
    let (blocks, uids) = load_blocks(dir);
    let (blocks, uids) = (
        blocks[range.start as usize..range.end as usize].to_vec(),
        uids[range.start as usize..range.end as usize].to_vec(),
    );
    let schema = BlockSchema { hidden_size: HIDDEN as u64, dtype: DType::F32, compression: 0 };
    let server = ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 1024 };
    serve_info(node, InfoService::new(uids.clone(), schema, server)).expect("rpc_info");
    let limits = DecodeLimits::default();
    serve_forward(node, ForwardService::new(blocks.clone(), uids.clone(), schema, limits).expect("forward"))
        .expect("rpc_forward");
    serve_backward(node, BackwardService::new(blocks, uids, schema, limits).expect("backward")).expect("rpc_backward");

    let info = ServerInfo { torch_dtype: Some("float32".into()), ..ServerInfo::new(ServerState::Online, 10.0) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dht = node.dht().expect("dht");
    let span = Span::new(range.start, range.end).expect("span");
    let stored = runtime.block_on(announce(&dht, &node.peer_id(), PREFIX, span, 4, &info, 120.0)).expect("announce");
    assert_eq!(stored, vec![true; range.len()]);
}

/// Runs `server_prompt_tuning.py` through the swarm joined at `initial_peer` for `modes` and checks
/// every loss and gradient against transformers'; returns the per-mode replies.
fn prompt_tuning_step(initial_peer: &str, model: &std::path::Path, modes: &[&str]) -> Vec<Json> {
    let model = model.to_string_lossy().into_owned();
    let mut args = vec![initial_peer, &model, PREFIX];
    args.extend(modes);
    let out = common::run_reference_script("server_prompt_tuning.py", &args, "");
    let replies: Json = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    let replies = replies.as_array().expect("one reply per mode").clone();
    assert_eq!(replies.len(), modes.len());
    for reply in &replies {
        let loss = reply["loss"].as_f64().expect("loss");
        let expected = reply["expected_loss"].as_f64().expect("expected loss");
        assert!(
            (loss - expected).abs() <= 1e-4 * expected.abs().max(1.0),
            "{}: loss {loss} vs {expected}",
            reply["mode"]
        );
        for what in ["prompts", "deep_prompts", "inputs"] {
            assert_close(&reply[what], &format!("{} {what}", reply["mode"]));
        }
        let layers = reply["deep_prompts_per_layer"].as_array().expect("per layer");
        assert_eq!(layers.len(), 4);
        for (i, layer) in layers.iter().enumerate() {
            assert_close(layer, &format!("{} deep prompts of layer {i}", reply["mode"]));
        }
    }
    replies
}

#[test]
fn petals_prompt_tuning_step_through_rust_server_matches_transformers() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_tiny_llama(dir.path());
    let node = loopback_node(&[]);
    serve_and_announce(&node, dir.path(), 0..4);

    let maddr = node.listen_addrs()[0].to_string();
    let replies = prompt_tuning_step(&maddr, dir.path(), &["unary", "stream"]);
    assert!(replies[0]["unary_calls"].as_u64() >= Some(1) && replies[0]["stream_calls"] == 0, "{}", replies[0]);
    assert!(replies[1]["stream_calls"].as_u64() >= Some(1) && replies[1]["unary_calls"] == 0, "{}", replies[1]);
    node.shutdown();
}

#[test]
fn prompt_tuning_through_a_python_then_a_rust_server_matches_transformers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model");
    make_tiny_llama(&model);
    let swarm = shared_dir().join("reference/swarm.py").to_string_lossy().into_owned();
    let workdir = dir.path().join("swarm").to_string_lossy().into_owned();
    let model_arg = model.to_string_lossy().into_owned();
    let mut python = common::ReferenceProcess::start(
        "swarm_process.py",
        &[&swarm, &model_arg, "--workdir", &workdir, "--dht-prefix", PREFIX, "--servers", "0:2"],
    );
    let ready = python.read_json();
    let bootstrap = ready["initial_peers"][0].as_str().expect("the bootstrap multiaddr").to_owned();

    let node = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![bootstrap.clone()],
        ..NodeConfig::default()
    })
    .expect("node joins the swarm");
    serve_and_announce(&node, &model, 2..4);

    // The Python server holds blocks 0..2 and the Rust server 2..4: one backward call each.
    let replies = prompt_tuning_step(&bootstrap, &model, &["unary"]);
    assert_eq!(replies[0]["unary_calls"], 2, "{}", replies[0]);
    node.shutdown();
}

#[test]
fn bad_backward_requests_are_refused_as_petals_refuses_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_tiny_llama(dir.path());
    let (blocks, uids) = load_blocks(dir.path());
    let schema = BlockSchema { hidden_size: HIDDEN as u64, dtype: DType::F32, compression: 0 };
    let service = BackwardService::new(blocks[..2].to_vec(), uids[..2].to_vec(), schema, DecodeLimits::default())
        .expect("service");
    let hidden = || f32_tensor(vec![2, 4, HIDDEN], |i| ((i % 7) as f32 - 3.0) * 0.1);
    let no_prompts = || f32_tensor(vec![0], |_| 0.0);
    let request = |uid: String, tensors, metadata: Vec<u8>| ExpertRequest { uid, tensors, metadata }.encode_to_vec();

    // A block this server does not hold.
    let chain = format!("{} {}", block_uid(PREFIX, 1), block_uid(PREFIX, 2));
    let e = service.reply(&request(chain.clone(), vec![hidden(), hidden(), no_prompts()], Vec::new())).unwrap_err();
    assert_eq!(e.message(), format!("RuntimeError('Remote peer does not serve {}')", block_uid(PREFIX, 2)));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = service.reply_stream(&[request(chain, vec![hidden()], Vec::new())]).unwrap_err();
    assert_eq!(e.message(), format!("Remote peer does not serve {}", block_uid(PREFIX, 2)));

    // An adapter this server has not loaded.
    let served = format!("{} {}", block_uid(PREFIX, 0), block_uid(PREFIX, 1));
    let metadata = msgpack::pack(&Value::Map(vec![(Value::from("active_adapter"), Value::from("lora"))]));
    let e = service.reply(&request(served.clone(), vec![hidden(), hidden(), no_prompts()], metadata)).unwrap_err();
    assert_eq!(e.message(), "KeyError('adapter lora not found')");

    // Too few tensors, and prompts for the wrong number of blocks.
    let e = service.reply(&request(served.clone(), vec![hidden(), hidden()], Vec::new())).unwrap_err();
    assert_eq!(e.message(), "ValueError('not enough values to unpack (expected at least 3, got 2)')");
    let prompts = f32_tensor(vec![3, 1, 2, HIDDEN], |_| 0.5);
    let e = service.reply(&request(served.clone(), vec![hidden(), hidden(), prompts], Vec::new())).unwrap_err();
    assert_eq!(e.message(), "AssertionError('internal shape error during backward')");

    // A good request: gradients of the inputs and of the prompts, in the schema's dtype and codec.
    let prompts = || f32_tensor(vec![2, 1, 2, HIDDEN], |i| (i % 5) as f32 * 0.05);
    let good = |metadata: Vec<u8>| request(served.clone(), vec![hidden(), hidden(), prompts()], metadata);
    let reply = ExpertResponse::decode(service.reply(&good(Vec::new())).expect("gradients").as_slice()).expect("reply");
    let shapes: Vec<Vec<u32>> = reply.tensors.iter().map(|t| t.size.clone()).collect();
    // The prompts' batch of 1 was broadcast over the inputs' batch; their gradient is not summed.
    assert_eq!(shapes, [vec![2, 4, HIDDEN as u32], vec![2, 2, 2, HIDDEN as u32]]);
    assert!(reply.tensors.iter().all(|t| t.dtype == "float32" && t.compression == 0));
    let exact = values(&reply.tensors);

    // The client may name the codecs; a bfloat16 server replies in bfloat16.
    let float16 = msgpack::pack(&Value::Map(vec![(
        Value::from("output_compression"),
        Value::Array(vec![Value::from(2), Value::from(2)]),
    )]));
    let reply = ExpertResponse::decode(service.reply(&good(float16)).expect("gradients").as_slice()).expect("reply");
    assert!(reply.tensors.iter().all(|t| t.compression == CompressionType::Float16 as i32));
    assert_close_to(&values(&reply.tensors), &exact, 2e-3);
    let bf16_schema = BlockSchema { dtype: DType::BF16, ..schema };
    let bf16 = BackwardService::new(blocks[..2].to_vec(), uids[..2].to_vec(), bf16_schema, DecodeLimits::default())
        .expect("service");
    let reply = ExpertResponse::decode(bf16.reply(&good(Vec::new())).expect("gradients").as_slice()).expect("reply");
    assert!(reply.tensors.iter().all(|t| t.dtype == "bfloat16"));
    assert_close_to(&values(&reply.tensors), &exact, 5e-2);
}

/// Each reply tensor's values as float32.
fn values(tensors: &[kwaai_core::wire::runtime::Tensor]) -> Vec<Vec<f32>> {
    tensors.iter().map(|t| decode(t, &DecodeLimits::default()).expect("decodes").view().to_f32().into_owned()).collect()
}

fn assert_close_to(got: &[Vec<f32>], expected: &[Vec<f32>], relative: f32) {
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = g.iter().zip(e).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 0.0 && err <= relative * scale, "max abs error {err} against scale {scale}");
    }
}

#[test]
fn bad_backward_requests_fail_in_the_petals_client_as_with_a_petals_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model");
    make_tiny_llama(&model);
    let (blocks, uids) = load_blocks(&model);
    let schema = BlockSchema { hidden_size: HIDDEN as u64, dtype: DType::F32, compression: 0 };
    let node = loopback_node(&[]);
    let service = BackwardService::new(blocks[..2].to_vec(), uids[..2].to_vec(), schema, DecodeLimits::default())
        .expect("service");
    serve_backward(&node, service).expect("rpc_backward");

    let swarm = shared_dir().join("reference/swarm.py").to_string_lossy().into_owned();
    let workdir = dir.path().join("swarm").to_string_lossy().into_owned();
    let model = model.to_string_lossy().into_owned();
    let maddr = node.listen_addrs()[0].to_string();
    let out =
        common::run_reference_script("server_backward_errors.py", &[&swarm, &workdir, &model, PREFIX, &maddr], "");
    let results: Json = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    let results = results.as_array().expect("one result per case");
    assert_eq!(results.len(), 14);
    for result in results {
        let python = result["python"].as_str().unwrap_or_else(|| panic!("the Petals server accepted {result}"));
        assert!(!python.is_empty(), "{result}");
        assert_eq!(result["kwaai"].as_str(), Some(python), "{} (stream: {})", result["case"], result["stream"]);
    }
    node.shutdown();
}
