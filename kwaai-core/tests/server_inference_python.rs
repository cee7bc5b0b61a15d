//! The Python Petals client generates through kwaai servers exactly what transformers generates
//! locally: through one Rust server holding every block (with `generate()`, step by step inside
//! `inference_session()`, and with beam search), and through chains of one Rust and one Python
//! Petals server in both orders, with and without server-to-server pushes, and through two Rust
//! servers that push to each other (the first announcing its round trip to the second in
//! `next_pings`). A lone kwaai node is the swarm's bootstrap peer; in the mixed
//! chains it joins the Python swarm's bootstrap node. Afterwards every session is closed and its
//! cache returned. The rules of `rpc_inference` (limits, errors, step ids, the cache budget) are
//! checked with hand-made requests, and a generation survives the Rust server dying mid-session.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kwaai_core::dht::DhtValue;
use kwaai_core::model::ModelConfig;
use kwaai_core::server::{block_uid, cache_bytes_per_token, Server, ServerConfig, ServerInfo, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Node, NodeConfig};
use serde_json::Value as Json;

const PREFIX: &str = "tiny-kwaai-inference";
const BLOCKS: u32 = 4;
const TOKENS: usize = 32;

/// One tiny random Llama for every test of this file.
fn model_dir() -> &'static Path {
    static MODEL: OnceLock<tempfile::TempDir> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let shared = std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../shared"));
            let out = Command::new(common::reference_python())
                .arg(shared.join("reference/make_tiny_model.py"))
                .arg(dir.path())
                .args(["--family", "llama", "--layers", &BLOCKS.to_string(), "--hidden", "64"])
                .output()
                .expect("make_tiny_model.py runs");
            assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
            dir
        })
        .path()
}

fn start_node(initial_peers: &[String]) -> Node {
    let config = NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: initial_peers.to_vec(),
        ..NodeConfig::default()
    };
    Node::start(config).expect("node starts")
}

fn maddr(node: &Node) -> String {
    node.listen_addrs()[0].to_string()
}

fn server_config(start: u32, end: u32) -> ServerConfig {
    ServerConfig {
        model_dir: model_dir().to_path_buf(),
        block_indices: Some(Span::new(start, end).expect("span")),
        dht_prefix: Some(PREFIX.into()),
        throughput: Some(1.0),
        torch_dtype: Some(DType::F32),
        ..ServerConfig::default()
    }
}

fn start_server(node: &Node, start: u32, end: u32) -> Server {
    Server::start(node, server_config(start, end)).expect("server starts")
}

/// Runs the Petals client with `initial_peers`.
fn generate(initial_peers: &[String], push: bool) -> Json {
    let model = model_dir().to_string_lossy().into_owned();
    let tokens = TOKENS.to_string();
    let peers = initial_peers.join(",");
    let mut args = vec![model.as_str(), &peers, PREFIX, "--tokens", &tokens];
    if !push {
        args.push("--no-push");
    }
    let out = common::run_reference_script("server_generate.py", &args, "");
    serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON")
}

fn assert_same_tokens(result: &Json, what: &str) {
    assert!(result.get("error").is_none(), "{what}: {result}");
    let local = &result["local"];
    assert_eq!(local.as_array().map(Vec::len), Some(TOKENS), "{what}: {result}");
    assert_eq!(&result["generate"], local, "{what}: generate() differs from transformers");
    assert_eq!(&result["session"], local, "{what}: the step-by-step session differs from transformers");
    let prompt = result["prompt_len"].as_u64().expect("prompt length");
    assert_eq!(result["session_position"].as_u64(), Some(prompt + TOKENS as u64 - 1), "{what}: {result}");
    assert_eq!(result["beam"], result["local_beam"], "{what}: beam search differs from transformers");
}

/// Waits until the clients' sessions are closed on `server` and its whole cache is free again.
fn assert_sessions_freed(server: &Server, full_cache: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.active_sessions() > 0 || server.cache_tokens_left() != full_cache {
        assert!(
            Instant::now() < deadline,
            "{} sessions still open, {} of {full_cache} cache tokens free",
            server.active_sessions(),
            server.cache_tokens_left()
        );
        std::thread::sleep(Duration::from_millis(50)); // polling for the streams' teardown
    }
}

#[test]
fn petals_client_generates_through_one_rust_server() {
    let node = start_node(&[]);
    let mut server = start_server(&node, 0, BLOCKS);
    let full_cache = server.cache_tokens_left();
    assert_eq!(server.uids().len(), BLOCKS as usize);
    // Petals' 16384 tokens per block for a model with grouped-query attention, counted in key
    // and value rows.
    assert_eq!(full_cache, 2 * 16384 * u64::from(BLOCKS));

    let result = generate(&[maddr(&node)], true);
    assert_same_tokens(&result, "one Rust server");
    assert_eq!(server.pushes().sent(), 0, "a lone server has no next server to push to");
    assert_sessions_freed(&server, full_cache);
    server.shutdown();
    node.shutdown();
}

/// Runs a Python swarm (a bootstrap node and a Petals server for blocks `start..end`); returns it
/// with its bootstrap address and the server's peer id.
fn python_swarm(start: u32, end: u32) -> (common::ReferenceProcess, String, String) {
    let model = model_dir().to_string_lossy().into_owned();
    let span = format!("{start}:{end}");
    let args = [model.as_str(), "--servers", &span, "--dht-prefix", PREFIX, "--timeout", "120"];
    let mut swarm = common::ReferenceProcess::start("server_swarm.py", &args);
    let ready = swarm.read_json();
    assert_eq!(ready["servers"][0]["blocks"], serde_json::json!([start, end]), "{ready}");
    let bootstrap = ready["initial_peers"][0].as_str().expect("a bootstrap address").to_owned();
    let peer = ready["servers"][0]["peer_id"].as_str().expect("the server's peer id").to_owned();
    (swarm, bootstrap, peer)
}

#[test]
fn chain_of_a_rust_then_a_python_server() {
    let (_python, bootstrap, _) = python_swarm(BLOCKS / 2, BLOCKS);
    let peers = [bootstrap];
    let node = start_node(&peers);
    let server = start_server(&node, 0, BLOCKS / 2);
    let full_cache = server.cache_tokens_left();

    assert_same_tokens(&generate(&peers, false), "Rust 0:2 then Python 2:4, no push");
    assert_eq!(server.pushes().sent(), 0, "the client asked for no pushes");
    assert_same_tokens(&generate(&peers, true), "Rust 0:2 then Python 2:4, with push");
    assert!(server.pushes().sent() > 0, "the Rust server pushed no step to the Python server");
    assert_sessions_freed(&server, full_cache);
}

#[test]
fn chain_of_a_python_then_a_rust_server() {
    let (_python, bootstrap, _) = python_swarm(0, BLOCKS / 2);
    let peers = [bootstrap];
    let node = start_node(&peers);
    let server = start_server(&node, BLOCKS / 2, BLOCKS);
    let full_cache = server.cache_tokens_left();

    assert_same_tokens(&generate(&peers, false), "Python 0:2 then Rust 2:4, no push");
    assert_same_tokens(&generate(&peers, true), "Python 0:2 then Rust 2:4, with push");
    assert_sessions_freed(&server, full_cache);
}

#[test]
fn chain_of_two_rust_servers_pushing_to_each_other() {
    let first_node = start_node(&[]);
    // Re-announced every second, so that its next_pings soon include the second server.
    let config = ServerConfig { update_period: Duration::from_secs(1), ..server_config(0, BLOCKS / 2) };
    let first = Server::start(&first_node, config).expect("first server starts");
    let second_node = start_node(&[maddr(&first_node)]);
    let second = start_server(&second_node, BLOCKS / 2, BLOCKS);

    // The first server measures its round trip to the server of the block after its span.
    let second_peer = second_node.peer_id().to_base58();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = first_node.dht_get(rmpv::Value::from(block_uid(PREFIX, 0)), true).expect("get");
        let Some(DhtValue::Dictionary { entries, .. }) = record else { panic!("block records are dictionaries") };
        let ours = rmpv::Value::from(first_node.peer_id().to_base58());
        let entry = entries.iter().find(|e| e.subkey == ours).expect("the first server's record");
        let info = ServerInfo::from_value(&entry.value).expect("a valid ServerInfo");
        let rtt = info.next_pings.unwrap_or_default().into_iter().find(|(peer, _)| *peer == second_peer);
        if let Some((_, rtt)) = rtt {
            assert!(rtt.is_finite() && rtt > 0.0, "round trip {rtt}");
            break;
        }
        assert!(Instant::now() < deadline, "the first server never pinged the second");
        std::thread::sleep(Duration::from_millis(100)); // polling for the next announcement
    }

    let peers = [maddr(&first_node), maddr(&second_node)];
    assert_same_tokens(&generate(&peers, true), "Rust 0:2 then Rust 2:4, with push");
    assert!(first.pushes().sent() > 0, "the first server pushed nothing");
    assert!(second.pushes().received() > 0, "the second server received no push");
    assert_eq!(second.pushes().sent(), 0, "the last server has no next server");
}

#[test]
fn inference_sessions_keep_petals_rules_and_limits() {
    let node = start_node(&[]);
    let config = server_config(0, BLOCKS);
    let mut server = Server::start(&node, ServerConfig { max_sessions: 3, max_message_size: 256 << 10, ..config })
        .expect("server starts");
    let full_cache = server.cache_tokens_left();
    let model = ModelConfig::from_dir(model_dir()).expect("config");
    let per_token = cache_bytes_per_token(&model, DType::F32) * u64::from(BLOCKS);

    let peer = node.peer_id().to_base58();
    let hidden = model.hidden_size.to_string();
    let model_arg = model_dir().to_string_lossy().into_owned();
    let args = [maddr(&node), peer, PREFIX.into(), BLOCKS.to_string(), hidden, model_arg];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = common::ReferenceProcess::start("server_inference.py", &args);
    let out = client.read_json();
    let error = |key: &str| out[key]["error"].as_str().unwrap_or_else(|| panic!("{key}: no error: {out}")).to_owned();
    let h = model.hidden_size;

    // Deep prompts in a prefill, then a step without: transformers' blocks with the same prompts.
    let scale = out["deep_prompts"]["ref_scale"].as_f64().expect("scale");
    let err = out["deep_prompts"]["max_abs_err"].as_f64().expect("error");
    assert!(err <= 1e-4 * scale.max(1.0), "deep prompts: max abs error {err} against scale {scale}");
    assert!(error("too_long").contains("Cannot allocate KV cache for 1000000 tokens, max = 8192"), "{out}");
    assert!(error("float_max_length").contains("rpc_inference metadata must contain int max_length, got 2.5"), "{out}");
    assert!(error("unserved").contains(&format!("Remote peer does not serve {PREFIX}.7")), "{out}");
    assert!(error("int32_hypo_ids").contains("hypo ids must be int64, got torch.int32"), "{out}");
    // The repeated step id got no reply: the next reply is the empty step's.
    assert_eq!(out["step_shapes"], serde_json::json!([[1, 3, h], [1, 0, h], [1, 2, h]]), "{out}");
    let past = out["past_max_length"].as_str().expect("an error past max_length");
    assert!(past.contains("Maximum length exceeded: prefix 5 + current 1 exceeds pre-allocated maximum 5"), "{past}");
    assert_eq!(out["beam_shapes"], serde_json::json!([[2, 2, h], [2, 1, h]]), "{out}");
    assert_eq!(out["beam_close"], "closed");

    let at_once = 3 * 8192 * per_token;
    assert!(error("batch3_at_once").contains(&format!("Could not allocate {at_once} bytes immediately: out of memory")));
    assert_eq!(out["holder"], serde_json::json!([2, 0, h]));
    let small = 16 * per_token;
    assert!(error("waited_half_a_second").contains(&format!("Could not allocate {small} within 0.5 seconds")), "{out}");
    assert_eq!(out["waiter_done_while_holder_open"], false, "the waiter got memory the holder still had");
    assert_eq!(out["holder_close"], "closed");
    assert_eq!(out["waiter"], serde_json::json!([1, 1, h]), "the waiter got the memory once it was freed");
    assert!(error("fourth_session").contains("the server already has 3 open"), "{out}");
    assert!(error("too_big").contains("exceeds the limit of 262144"), "{out}");

    // A session whose client vanishes without closing it gives its cache back; shutting the
    // server down ends the other.
    assert_eq!(client.read_json()["holding"], 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.active_sessions() != 2 {
        assert!(Instant::now() < deadline, "{} sessions open, expected the 2 held", server.active_sessions());
        std::thread::sleep(Duration::from_millis(50)); // polling for the earlier sessions' teardown
    }
    let held = 2 * 64 * u64::from(BLOCKS);
    assert_eq!(server.cache_tokens_left(), full_cache - 2 * held);
    client.send_line("drop");
    assert_eq!(client.read_json()["dropped"], true);
    while server.active_sessions() != 1 {
        assert!(Instant::now() < deadline, "the dropped session is still open");
        std::thread::sleep(Duration::from_millis(50)); // polling for the stream's teardown
    }
    assert_eq!(server.cache_tokens_left(), full_cache - held);
    server.shutdown();
    assert_sessions_freed(&server, full_cache);
}

#[test]
fn generation_goes_on_when_the_rust_server_dies_mid_session() {
    let (_python, bootstrap, python_peer) = python_swarm(0, BLOCKS);
    let node = start_node(std::slice::from_ref(&bootstrap));
    // Announced as much faster than the Python server, so that the client starts with it.
    let config = ServerConfig { inference_rps: Some(1e6), ..server_config(0, BLOCKS) };
    let server = Server::start(&node, config).expect("server starts");

    let model = model_dir().to_string_lossy().into_owned();
    let tokens = TOKENS.to_string();
    let args = [model.as_str(), &bootstrap, PREFIX, "--tokens", &tokens, "--before-kill", "8"];
    let mut client = common::ReferenceProcess::start("server_failover.py", &args);
    let before = client.read_json();
    assert_eq!(before["first_route"], serde_json::json!([node.peer_id().to_base58()]), "{before}");
    assert_eq!(server.active_sessions(), 1);

    // Killed: the node goes away without announcing OFFLINE or closing the session.
    node.shutdown();
    client.send_line("go on");
    let after = client.read_json();
    assert!(after.get("error").is_none(), "{after} (before the kill: {before})");
    assert_eq!(after["last_route"], serde_json::json!([python_peer]), "{after}");
    assert_eq!(after["local"].as_array().map(Vec::len), Some(TOKENS), "{after}");
    assert_eq!(after["remote"], after["local"], "the tokens after the failover differ from transformers");
    drop(server);
}
