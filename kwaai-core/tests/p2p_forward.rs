//! WebSocket and WebRTC-direct listening and stream forwarding (`kwaai.forward`): a caller that
//! reaches only one node, over `/ws`, calls unary and streaming handlers of another peer through it.
//! (Only browsers dial `/webrtc-direct`: the browser tests in kwaai-wasm forward over it.)

mod common;

use std::time::Duration;

use futures::StreamExt;
use kwaai_core::{ErrorKind, Node, NodeConfig, PeerId};

const T: Duration = Duration::from_secs(15);

fn node(listen: &[&str]) -> Node {
    let listen_addrs = listen.iter().map(|a| a.to_string()).collect();
    Node::start(NodeConfig { listen_addrs, ..NodeConfig::default() }).unwrap()
}

/// `relay` listens on TCP and WebSocket; `target` (TCP only) serves `Test.echo` and `Test.count`,
/// both of which reply with who called; `caller` is connected to `relay` only, over WebSocket.
struct Trio {
    relay: Node,
    target: Node,
    caller: Node,
    runtime: tokio::runtime::Runtime,
}

fn trio() -> Trio {
    let relay = node(&["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"]);
    let target = node(&["/ip4/127.0.0.1/tcp/0"]);
    target
        .add_unary_handler("Test.echo", |peer: PeerId, request: Vec<u8>| async move {
            Ok([peer.to_bytes(), request].concat())
        })
        .unwrap();
    target
        .add_stream_handler("Test.count", |peer, requests| {
            // One reply per request (its length), then the caller's ID.
            requests
                .map(|request| request.map(|r| (r.len() as u32).to_be_bytes().to_vec()))
                .chain(futures::stream::once(async move { Ok(peer.to_bytes()) }))
        })
        .unwrap();
    let tcp = relay.listen_addrs().into_iter().find(|a| !a.to_string().contains("/ws")).unwrap();
    relay.connect(&target.listen_addrs()[0].to_string(), T).unwrap();
    let ws = relay.listen_addrs().into_iter().find(|a| a.to_string().contains("/ws")).expect("a /ws address");
    assert_ne!(ws, tcp);
    let caller = node(&["/ip4/127.0.0.1/tcp/0"]);
    let info = caller.connect(&ws.to_string(), T).unwrap();
    assert_eq!(info.peer_id, relay.peer_id(), "noise over WebSocket authenticates the relay");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    Trio { relay, target, caller, runtime }
}

#[test]
fn unary_and_streaming_calls_reach_another_peer_through_a_websocket_node() {
    let t = trio();
    let rpc = t.caller.rpc().unwrap();
    let (relay, target) = (t.relay.peer_id(), t.target.peer_id());
    for size in [0usize, 5, 300_000] {
        let request: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let reply = t.runtime.block_on(rpc.call_unary_via(relay, target, "Test.echo", request.clone(), T)).unwrap();
        let (seen, echoed) = reply.split_at(relay.to_bytes().len());
        assert_eq!(PeerId::from_bytes(seen).unwrap(), relay, "the target sees the relay as its caller");
        assert_eq!(echoed, request, "{size} bytes");
    }
    let requests: Vec<Vec<u8>> = (1..=20).map(|n| vec![7u8; n * 1000]).collect();
    let replies: Vec<Vec<u8>> = t
        .runtime
        .block_on(async {
            let stream = rpc.call_stream_via(relay, target, "Test.count", futures::stream::iter(requests), T).await?;
            stream.collect::<Vec<_>>().await.into_iter().collect::<kwaai_core::Result<Vec<_>>>()
        })
        .unwrap();
    assert_eq!(replies.len(), 21);
    for (n, reply) in replies[..20].iter().enumerate() {
        assert_eq!(reply, &(((n + 1) * 1000) as u32).to_be_bytes());
    }
    assert_eq!(PeerId::from_bytes(&replies[20]).unwrap(), relay);
    // Many forwarded calls at once.
    let calls = (0..16u8).map(|i| rpc.call_unary_via(relay, target, "Test.echo", vec![i; 64], T));
    for (i, reply) in t.runtime.block_on(futures::future::join_all(calls)).into_iter().enumerate() {
        assert!(reply.unwrap().ends_with(&[i as u8; 64]));
    }
}

#[test]
fn forwarding_refuses_what_it_cannot_or_may_not_do() {
    let t = trio();
    let rpc = t.caller.rpc().unwrap();
    let (relay, target) = (t.relay.peer_id(), t.target.peer_id());
    let call = |via, peer, name: &str| t.runtime.block_on(rpc.call_unary_via(via, peer, name, b"x".to_vec(), T));
    let err = call(relay, target, "Test.missing").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.message().contains("protocol not supported: Test.missing"), "{err}");
    let err = call(relay, relay, "Test.echo").unwrap_err();
    assert!(err.message().contains("directly"), "{err}");
    let err = call(relay, target, "kwaai.forward").unwrap_err();
    assert!(err.message().contains("forwarded again"), "{err}");
    let nobody = kwaai_core::Identity::generate().peer_id();
    let err = call(relay, nobody, "Test.echo").unwrap_err();
    assert!(err.message().contains(&nobody.to_string()), "{err}");
    // A node without a WebSocket listener does not forward.
    t.caller.connect(&t.target.listen_addrs()[0].to_string(), T).unwrap();
    let err = call(target, relay, "Test.echo").unwrap_err();
    assert!(err.message().contains("protocol not supported: kwaai.forward"), "{err}");
    // The relay still forwards afterwards.
    assert!(call(relay, target, "Test.echo").unwrap().ends_with(b"x"));
}

#[test]
fn a_webrtc_direct_listener_is_for_browsers_and_native_nodes_refuse_to_dial_it() {
    let relay = node(&["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/webrtc-direct"]);
    relay.add_unary_handler("Test.echo", |_peer, request: Vec<u8>| async move { Ok(request) }).unwrap();

    // The full dialable address: a real UDP port, the certificate's hash and the peer ID.
    let webrtc = relay.listen_addrs().into_iter().find(|a| a.to_string().contains("/webrtc-direct")).unwrap();
    let text = webrtc.to_string();
    assert!(text.starts_with("/ip4/127.0.0.1/udp/") && !text.contains("/udp/0/"), "{text}");
    assert!(text.contains("/webrtc-direct/certhash/u"), "{text}");
    assert!(text.ends_with(&format!("/p2p/{}", relay.peer_id())), "{text}");

    // A native node refuses to dial it, with or without a WebRTC listener of its own, at once
    // and saying what to dial instead.
    for listen in [&["/ip4/127.0.0.1/tcp/0"][..], &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/webrtc-direct"]] {
        let caller = node(listen);
        let err = caller.connect(&text, T).unwrap_err();
        assert!(err.message().contains("does not dial WebRTC-direct"), "{err}");
        assert!(err.message().contains("TCP or /ws address"), "{err}");
        // Its TCP address serves the same node.
        let tcp = relay.listen_addrs().into_iter().find(|a| a.to_string().contains("/tcp/")).unwrap();
        assert_eq!(caller.connect(&tcp.to_string(), T).unwrap().peer_id, relay.peer_id());
        assert_eq!(caller.call_unary(relay.peer_id(), "Test.echo", b"tcp", T).unwrap(), b"tcp");
    }
}
