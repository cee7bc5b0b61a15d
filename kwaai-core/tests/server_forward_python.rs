//! A kwaai node serving blocks 0..3 of a tiny Llama answers Petals' own `run_remote_forward`
//! (after `rpc_info`, with the metadata a Petals client sends) with transformers' hidden states
//! after block 3, through `rpc_forward` and `rpc_forward_stream`; a chain it does not serve is refused; once the span is announced, Petals'
//! `RemoteSequential` finds it through the DHT and gets the same result.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::loopback_node;
use kwaai_core::model::{BlockSpan, LoadOptions};
use kwaai_core::server::{
    announce, block_uid, serve_forward, serve_info, BlockSchema, ForwardService, InfoService, ServerInfo,
    ServerRpcInfo, ServerState, Span,
};
use kwaai_core::tensor::{DType, DecodeLimits};
use kwaai_core::wire::runtime::ExpertRequest;
use kwaai_core::ErrorKind;
use prost::Message;
use serde_json::Value as Json;

const PREFIX: &str = "tiny-llama-hf";

fn make_tiny_llama(dir: &std::path::Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../shared"));
    let script = shared.join("reference/make_tiny_model.py");
    let out = Command::new(common::reference_python())
        .arg(&script)
        .arg(dir)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn petals_forward_requests_match_transformers() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_tiny_llama(dir.path());
    let blocks: Vec<BlockSpan> =
        (0..3).map(|i| BlockSpan::load(dir.path(), i, i + 1, LoadOptions::default()).expect("block loads")).collect();
    let uids: Vec<String> = (0..3).map(|i| block_uid(PREFIX, i)).collect();
    let schema = BlockSchema { hidden_size: 64, dtype: DType::F32, compression: 0 };
    let server = ServerRpcInfo { dht_client_mode: false, cache_tokens_available: 1024 };

    let node = loopback_node(&[]);
    serve_info(&node, InfoService::new(uids.clone(), schema, server)).expect("rpc_info");
    let forward = ForwardService::new(blocks, uids.clone(), schema, DecodeLimits::default()).expect("service");
    serve_forward(&node, forward.clone()).expect("rpc_forward");

    let maddr = node.listen_addrs()[0].to_string();
    let peer = node.peer_id().to_base58();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    // The whole span, a sub-chain of it (as a client routing across several servers asks), and
    // the whole span again through `rpc_forward_stream` with inputs split into many parts.
    let chains = ["0:3", "1:3", "0:3:stream"];
    let mut args = vec![maddr.as_str(), &peer, &dir_arg, PREFIX];
    args.extend(chains);
    let out = common::run_reference_script("server_forward.py", &args, "");
    let replies: Json = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    for (reply, chain) in replies.as_array().expect("one reply per chain").iter().zip(chains) {
        assert!(reply.get("error").is_none(), "{chain}: {reply}");
        assert_eq!(reply["shape"], serde_json::json!([2, 7, 64]));
        assert_eq!(reply["dtype"], "torch.float32");
        let scale = reply["ref_scale"].as_f64().expect("scale");
        let err = reply["max_abs_err"].as_f64().expect("error");
        assert!(err <= 1e-4 * scale.max(1.0), "{chain}: max abs error {err} against scale {scale}");
        assert!(reply["input_moved"].as_f64().expect("moved") > 1e-2, "the blocks changed the hidden states");
        assert_eq!(reply["streamed"], chain.ends_with(":stream"), "{chain}: transport");
    }
    assert_eq!(replies.as_array().map(Vec::len), Some(chains.len()));

    let foreign = ExpertRequest { uid: block_uid(PREFIX, 3), tensors: Vec::new(), metadata: Vec::new() };
    let refused = forward.reply(&foreign.encode_to_vec()).expect_err("block 3 is not served");
    assert_eq!(refused.kind(), ErrorKind::InvalidArgument);

    // A Petals client that only knows the DHT finds the announced span and routes its forward pass
    // through it.
    let info = ServerInfo { torch_dtype: Some("float32".into()), ..ServerInfo::new(ServerState::Online, 10.0) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dht = node.dht().expect("dht");
    let span = Span::new(0, 3).expect("span");
    let stored = runtime.block_on(announce(&dht, &node.peer_id(), PREFIX, span, 4, &info, 60.0)).expect("announce");
    assert_eq!(stored, [true, true, true]);
    let out = common::run_reference_script("server_remote_sequential.py", &[&maddr, &dir_arg, PREFIX, "3"], "");
    let reply: Json = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    assert_eq!(reply["shape"], serde_json::json!([1, 5, 64]));
    let scale = reply["ref_scale"].as_f64().expect("scale");
    let err = reply["max_abs_err"].as_f64().expect("error");
    assert!(err <= 1e-4 * scale.max(1.0), "max abs error {err} against scale {scale}");
    node.shutdown();
}
