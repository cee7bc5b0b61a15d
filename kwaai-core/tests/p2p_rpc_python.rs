//! Hivemind RPC interop with a Python `hivemind.P2P` (Go p2pd) on 127.0.0.1, both directions:
//! unary and streaming calls, handler errors, and oversized messages refused on our side; over
//! TCP with Noise (p2pd's first choice) or TLS, and over QUIC.

mod common;

use std::time::Duration;

use futures::StreamExt;
use kwaai_core::p2p::RpcLimits;
use kwaai_core::{Error, ErrorKind, Node, NodeConfig, PeerId, Security};
use prost::Message;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// hivemind's `runtime.proto` ExpertRequest (tensors omitted: never set here).
#[derive(Clone, PartialEq, Message)]
struct ExpertRequest {
    #[prost(string, tag = "1")]
    uid: String,
    #[prost(bytes = "vec", tag = "3")]
    metadata: Vec<u8>,
}

/// hivemind's `runtime.proto` ExpertResponse.
#[derive(Clone, PartialEq, Message)]
struct ExpertResponse {
    #[prost(bytes = "vec", tag = "3")]
    metadata: Vec<u8>,
}

fn request(uid: &str, metadata: &[u8]) -> Vec<u8> {
    ExpertRequest { uid: uid.into(), metadata: metadata.to_vec() }.encode_to_vec()
}

fn metadata(reply: &[u8]) -> Vec<u8> {
    ExpertResponse::decode(reply).expect("an ExpertResponse").metadata
}

fn reversed(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().rev().copied().collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

struct Python {
    process: common::ReferenceProcess,
    peer_id: PeerId,
    maddrs: Vec<String>,
}

impl Python {
    fn start(initial_peers: &[&str]) -> Python {
        let mut process = common::ReferenceProcess::start("p2p_peer.py", initial_peers);
        let ready = process.read_json();
        let peer_id = ready["peer_id"].as_str().expect("peer_id").parse().expect("a peer ID");
        let maddrs =
            ready["maddrs"].as_array().expect("maddrs").iter().map(|m| m.as_str().unwrap().to_owned()).collect();
        Python { process, peer_id, maddrs }
    }

    fn run(&mut self, command: Value) -> Value {
        self.process.send_line(&command.to_string());
        self.process.read_json()
    }

    fn unary(&mut self, peer: PeerId, name: &str, uid: &str, metadata: &[u8]) -> Value {
        self.run(json!({"op": "unary", "peer": peer.to_base58(), "name": name, "uid": uid, "metadata": hex(metadata)}))
    }

    fn stream(&mut self, peer: PeerId, name: &str, requests: &[(&str, &[u8])]) -> Value {
        let requests: Vec<Value> = requests.iter().map(|(uid, m)| json!({"uid": uid, "metadata": hex(m)})).collect();
        self.run(json!({"op": "stream", "peer": peer.to_base58(), "name": name, "requests": requests}))
    }
}

/// A node on TCP serving `Rust.echo` (unary) and `Rust.stream` (streaming), mirroring the Python ones.
fn rust_node() -> Node {
    serving_node(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() })
}

/// A node started with `config` serving `Rust.echo`, `Rust.stream` and `Rust.first`.
fn serving_node(config: NodeConfig) -> Node {
    let node = Node::start(config).unwrap();
    node.add_unary_handler("Rust.echo", |caller: PeerId, bytes: Vec<u8>| async move {
        let request = ExpertRequest::decode(&bytes[..])
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad ExpertRequest: {e}")))?;
        let metadata = match request.uid.as_str() {
            "fail" => return Err(Error::new(ErrorKind::InvalidArgument, "rust says no")),
            "whoami" => caller.to_bytes(),
            _ => reversed(&request.metadata),
        };
        Ok(ExpertResponse { metadata }.encode_to_vec())
    })
    .unwrap();
    node.add_stream_handler("Rust.stream", |_caller, requests| {
        requests.map(|bytes| {
            let request = ExpertRequest::decode(&bytes?[..])
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad ExpertRequest: {e}")))?;
            if request.uid == "fail" {
                return Err(Error::new(ErrorKind::InvalidArgument, "rust stream says no"));
            }
            Ok(ExpertResponse { metadata: reversed(&request.metadata) }.encode_to_vec())
        })
    })
    .unwrap();
    // Answers the first request only and ends, without reading the caller's other requests.
    node.add_stream_handler("Rust.first", |_caller, mut requests| {
        futures::stream::once(async move {
            let request = ExpertRequest::decode(&requests.next().await.expect("a request")?[..])
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("bad ExpertRequest: {e}")))?;
            Ok(ExpertResponse { metadata: reversed(&request.metadata) }.encode_to_vec())
        })
    })
    .unwrap();
    node
}

fn connected_pair() -> (Node, Python) {
    let python = Python::start(&[]);
    let node = rust_node();
    let info = node.connect(&python.maddrs[0], T).expect("kwaai connects to p2pd");
    assert_eq!(info.peer_id, python.peer_id);
    (node, python)
}

#[test]
fn rust_calls_python_unary_and_streaming_handlers() {
    let (node, python) = connected_pair();
    let py = python.peer_id;
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let reply = node.call_unary(py, "Py.echo", &request("", &payload), T).unwrap();
    assert_eq!(metadata(&reply), reversed(&payload));
    let reply = node.call_unary(py, "Py.echo", &request("whoami", b""), T).unwrap();
    assert_eq!(metadata(&reply), node.peer_id().to_bytes(), "p2pd tells Python who called");

    let err = node.call_unary(py, "Py.echo", &request("fail", b""), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("ValueError('python says no')"), "{err}");

    let requests = vec![request("", b"abc"), request("", b""), request("", &payload)];
    let replies = node.call_stream(py, "Py.stream", requests, T).unwrap();
    let replies: Vec<Vec<u8>> = replies.iter().map(|r| metadata(r)).collect();
    assert_eq!(replies, vec![b"cba".to_vec(), vec![], reversed(&payload)]);

    let replies = node.call_stream(py, "Py.source", vec![request("5,1000", b"")], T).unwrap();
    assert_eq!(replies.len(), 5);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(metadata(reply), vec![i as u8; 1000]);
    }

    let err = node.call_stream(py, "Py.stream", vec![request("", b"x"), request("fail", b"")], T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("python stream says no"), "{err}");

    let err = node.call_unary(py, "Py.missing", &request("", b""), T).unwrap_err();
    assert!(err.message().contains("protocol not supported"), "{err}");

    // Step by step: each reply arrives before the next request is sent.
    let rpc = node.rpc().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
        let mut replies = rpc.call_stream(py, "Py.stream", rx, T).await.unwrap();
        for step in [&b"one"[..], b"two", b"three"] {
            tx.unbounded_send(request("", step)).unwrap();
            let reply = tokio::time::timeout(T, replies.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(metadata(&reply), reversed(step), "reply to {step:?} before the input ends");
        }
        drop(tx);
        assert!(replies.next().await.is_none(), "the handler closes the stream after our end of stream");
    });
}

#[test]
fn python_calls_rust_unary_and_streaming_handlers() {
    let (node, mut python) = connected_pair();
    let me = node.peer_id();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let answer = python.unary(me, "Rust.echo", "", &payload);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(unhex(answer["metadata"].as_str().unwrap()), reversed(&payload));
    let answer = python.unary(me, "Rust.echo", "whoami", b"");
    assert_eq!(unhex(answer["metadata"].as_str().unwrap()), python.peer_id.to_bytes());

    let answer = python.unary(me, "Rust.echo", "fail", b"");
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["type"], "P2PHandlerError", "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("rust says no"), "{answer}");

    let answer = python.stream(me, "Rust.stream", &[("", b"abc"), ("", b""), ("", &payload)]);
    assert_eq!(answer["ok"], true, "{answer}");
    let replies: Vec<Vec<u8>> =
        answer["replies"].as_array().unwrap().iter().map(|r| unhex(r.as_str().unwrap())).collect();
    assert_eq!(replies, vec![b"cba".to_vec(), vec![], reversed(&payload)]);

    let answer = python.stream(me, "Rust.stream", &[("", b"x"), ("fail", b"")]);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("rust stream says no"), "{answer}");

    // A handler that ends before the caller finished sending: the caller still gets its reply
    // rather than a broken pipe.
    let big = vec![7u8; 1 << 20];
    for _ in 0..3 {
        let requests: Vec<(&str, &[u8])> = vec![("", b"first"), ("", &big), ("", &big), ("", &big), ("", &big)];
        let answer = python.stream(me, "Rust.first", &requests);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["replies"], json!([hex(b"tsrif")]), "{answer}");
    }

    let answer = python.unary(me, "Rust.missing", "", b"");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("protocol not supported"), "{answer}");

    // Python gives up on a stalled handler: p2pd closes the stream and our handler is dropped.
    let dropped = common::add_stalling_handler(&node, "Rust.stall");
    let answer = python.run(json!({"op": "unary", "peer": me.to_base58(), "name": "Rust.stall", "uid": "",
                                   "metadata": "", "timeout": 0.5}));
    assert_eq!(answer["type"], "TimeoutError", "{answer}");
    dropped.recv_timeout(T).expect("the handler is cancelled when the Python caller gives up");
}

/// Unary and streaming calls both ways between `node` and `python`, over whatever connection they
/// share; without calls to Python's streaming handlers unless `python_streams`.
fn calls_both_ways(node: &Node, python: &mut Python, python_streams: bool) {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
    let reply = node.call_unary(python.peer_id, "Py.echo", &request("", &payload), T).unwrap();
    assert_eq!(metadata(&reply), reversed(&payload));
    let err = node.call_unary(python.peer_id, "Py.echo", &request("fail", b""), T).unwrap_err();
    assert!(err.message().contains("python says no"), "{err}");
    if python_streams {
        let requests = vec![request("", b"abc"), request("", &payload)];
        let replies = node.call_stream(python.peer_id, "Py.stream", requests, T).unwrap();
        let replies: Vec<Vec<u8>> = replies.iter().map(|r| metadata(r)).collect();
        assert_eq!(replies, vec![b"cba".to_vec(), reversed(&payload)]);
    }
    let answer = python.unary(node.peer_id(), "Rust.echo", "", &payload);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(unhex(answer["metadata"].as_str().unwrap()), reversed(&payload));
    let answer = python.stream(node.peer_id(), "Rust.stream", &[("", b"xyz"), ("", &payload)]);
    assert_eq!(answer["ok"], true, "{answer}");
    let replies: Vec<Vec<u8>> =
        answer["replies"].as_array().unwrap().iter().map(|r| unhex(r.as_str().unwrap())).collect();
    assert_eq!(replies, vec![b"zyx".to_vec(), reversed(&payload)]);
    let answer = python.unary(node.peer_id(), "Rust.echo", "fail", b"");
    assert!(answer["error"].as_str().unwrap().contains("rust says no"), "{answer}");
}

/// Our multiaddr (with `/p2p/`) on the listener whose address contains `transport`.
fn own_maddr(node: &Node, transport: &str) -> String {
    node.listen_addrs().into_iter().map(|a| a.to_string()).find(|a| a.contains(transport)).expect("a listener")
}

#[test]
fn tls_connections_work_both_ways() {
    // A node that speaks only TLS: every connection it makes or takes is TLS, or fails.
    let tls_only = || {
        serving_node(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            security: vec![Security::Tls],
            ..NodeConfig::default()
        })
    };
    // We dial p2pd, proposing TLS only.
    let node = tls_only();
    let mut python = Python::start(&[]);
    let info = node.connect(&python.maddrs[0], T).expect("kwaai connects to p2pd over TLS");
    assert_eq!(info.peer_id, python.peer_id);
    calls_both_ways(&node, &mut python, true);
    // p2pd dials us (it proposes Noise first, which we refuse).
    let node = tls_only();
    let mut python = Python::start(&[&own_maddr(&node, "/tcp/")]);
    calls_both_ways(&node, &mut python, true);
}

#[test]
fn quic_connections_work_both_ways() {
    let quic_only =
        || serving_node(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/udp/0/quic".into()], ..NodeConfig::default() });
    // QUIC draft-29 (`/quic`): hivemind's Python multiaddr cannot parse `/quic-v1` addresses. p2pd
    // does not serve hivemind's streaming handlers over QUIC (a Python caller gets no replies, we
    // get a reset), so only Python's unary handlers are called here; p2pd carries Python's
    // streaming calls to our handlers.
    // We dial p2pd's QUIC listener.
    let node = quic_only();
    let mut python = Python::start(&["--quic"]);
    let quic = python.maddrs.iter().find(|m| m.contains("/quic")).expect("p2pd listens on QUIC").clone();
    let info = node.connect(&quic, T).expect("kwaai connects to p2pd over QUIC");
    assert_eq!(info.peer_id, python.peer_id);
    calls_both_ways(&node, &mut python, false);
    // p2pd dials our QUIC listener (we have no other).
    let node = quic_only();
    let mut python = Python::start(&["--quic", &own_maddr(&node, "/quic")]);
    calls_both_ways(&node, &mut python, false);
}

#[test]
fn oversized_messages_are_refused_on_our_side() {
    let (node, mut python) = connected_pair();
    let py = python.peer_id;
    node.set_rpc_limits(RpcLimits { max_unary_len: 16 << 10, max_frame_len: 16 << 10, ..RpcLimits::default() })
        .unwrap();
    // Python's replies over our limits.
    let err = node.call_unary(py, "Py.echo", &request("big:100000", b""), T).unwrap_err();
    assert!(err.message().contains("exceeds the limit"), "{err}");
    let err = node.call_stream(py, "Py.source", vec![request("1,100000", b"")], T).unwrap_err();
    assert!(err.message().contains("exceeds the limit"), "{err}");
    // Python's requests over our limits: the call fails on the Python side, nothing hangs.
    let answer = python.unary(node.peer_id(), "Rust.echo", "", &[1u8; 100_000]);
    assert_eq!(answer["ok"], false, "{answer}");
    let answer = python.stream(node.peer_id(), "Rust.stream", &[("", &[1u8; 100_000])]);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("exceeds the limit"), "{answer}");
    // Both sides still work.
    let reply = node.call_unary(py, "Py.echo", &request("", b"ok"), T).unwrap();
    assert_eq!(metadata(&reply), b"ko");
    let answer = python.unary(node.peer_id(), "Rust.echo", "", b"ok");
    assert_eq!(answer["ok"], true, "{answer}");
}

#[test]
fn a_websocket_caller_reaches_python_handlers_through_a_forwarding_node() {
    let python = Python::start(&[]);
    // The relay also listens on WebRTC-direct, as kwaainet does by default: p2pd, which has no
    // WebRTC transport, gets that address through identify and must still serve the relay.
    let webrtc_listen = "/ip4/127.0.0.1/udp/0/webrtc-direct";
    let relay = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into(), "/ip4/127.0.0.1/tcp/0/ws".into(), webrtc_listen.into()],
        ..NodeConfig::default()
    })
    .unwrap();
    relay.connect(&python.maddrs[0], T).expect("the relay connects to p2pd");
    let ws = relay.listen_addrs().into_iter().find(|a| a.to_string().contains("/ws")).expect("a /ws address");
    let caller = rust_node();
    caller.connect(&ws.to_string(), T).unwrap();
    let (rpc, via, py) = (caller.rpc().unwrap(), relay.peer_id(), python.peer_id);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let reply = runtime.block_on(rpc.call_unary_via(via, py, "Py.echo", request("", &payload), T)).unwrap();
    assert_eq!(metadata(&reply), reversed(&payload));
    let reply = runtime.block_on(rpc.call_unary_via(via, py, "Py.echo", request("whoami", b""), T)).unwrap();
    assert_eq!(metadata(&reply), via.to_bytes(), "p2pd sees the forwarding node as the caller");
    let err = runtime.block_on(rpc.call_unary_via(via, py, "Py.echo", request("fail", b""), T)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");

    let requests: Vec<Vec<u8>> = (0..10u8).map(|i| request("", &vec![i; 1 + i as usize * 5000])).collect();
    let replies = runtime
        .block_on(async {
            let replies = rpc.call_stream_via(via, py, "Py.stream", futures::stream::iter(requests), T).await?;
            replies.collect::<Vec<_>>().await.into_iter().collect::<kwaai_core::Result<Vec<_>>>()
        })
        .unwrap();
    assert_eq!(replies.len(), 10);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(metadata(reply), vec![i as u8; 1 + i * 5000]);
    }
    let err = runtime.block_on(rpc.call_unary_via(via, py, "Py.missing", request("", b""), T)).unwrap_err();
    assert!(err.message().contains("protocol not supported"), "{err}");
}
