//! Hivemind RPC between two kwaai nodes on 127.0.0.1: unary and streaming calls, handler errors,
//! refusals, limits, timeouts and cancellation, with identify still negotiated by the swarm.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kwaai_core::p2p::RpcLimits;
use kwaai_core::{Error, ErrorKind, Node, NodeConfig, Security};

const T: Duration = Duration::from_secs(10);

fn node() -> Node {
    Node::start(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() }).unwrap()
}

/// Two connected nodes; `b` serves `Test.echo` (unary) and `Test.sum` (streaming).
fn pair() -> (Node, Node) {
    let (a, b) = (node(), node());
    b.add_unary_handler("Test.echo", |_peer, request: Vec<u8>| async move {
        if request == b"fail" {
            return Err(Error::new(ErrorKind::InvalidArgument, "echo refuses to fail"));
        }
        Ok(request)
    })
    .unwrap();
    b.add_stream_handler("Test.sum", |peer, requests| {
        // Replies with a running total of the first byte of each request, then the caller's ID.
        requests
            .scan(0u32, |total, request| {
                let item = request.and_then(|r| match r.first() {
                    Some(&b) => {
                        *total += u32::from(b);
                        Ok(total.to_be_bytes().to_vec())
                    }
                    None => Err(Error::new(ErrorKind::InvalidArgument, "empty request in sum")),
                });
                futures::future::ready(Some(item))
            })
            .chain(futures::stream::once(async move { Ok(peer.to_bytes()) }))
    })
    .unwrap();
    let info = a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    assert_eq!(info.peer_id, b.peer_id(), "identify still works behind the RPC muxer");
    (a, b)
}

/// A node listening on `listen` with the security protocols `security`, serving `Test.echo`.
fn echo_node(listen: &str, security: &[Security]) -> Node {
    let node = Node::start(NodeConfig {
        listen_addrs: vec![listen.into()],
        security: security.to_vec(),
        ..NodeConfig::default()
    })
    .unwrap();
    node.add_unary_handler("Test.echo", |_peer, request: Vec<u8>| async move { Ok(request) }).unwrap();
    node
}

#[test]
fn calls_run_over_tls_and_over_quic() {
    let tls = [Security::Tls];
    let both = [Security::Noise, Security::Tls];
    for (listen, a_security, b_security) in [
        ("/ip4/127.0.0.1/tcp/0", &tls[..], &both[..]),
        ("/ip4/127.0.0.1/tcp/0", &both[..], &tls[..]),
        ("/ip4/127.0.0.1/tcp/0/ws", &both[..], &both[..]),
        ("/ip4/127.0.0.1/tcp/0/ws", &tls[..], &tls[..]),
        ("/ip4/127.0.0.1/udp/0/quic-v1", &both[..], &both[..]),
    ] {
        let (a, b) = (echo_node(listen, a_security), echo_node(listen, b_security));
        let info = a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
        assert_eq!(info.peer_id, b.peer_id(), "{listen}");
        for size in [0usize, 64, 3 << 20] {
            let request: Vec<u8> = (0..size).map(|i| (i * 5 % 247) as u8).collect();
            let reply = a.call_unary(b.peer_id(), "Test.echo", &request, T).unwrap();
            assert_eq!(reply, request, "{listen}, {size} bytes");
            let reply = b.call_unary(a.peer_id(), "Test.echo", &request, T).unwrap();
            assert_eq!(reply, request, "{listen}, {size} bytes back");
        }
    }
}

#[test]
fn nodes_without_a_common_security_protocol_do_not_connect() {
    let (a, b) =
        (echo_node("/ip4/127.0.0.1/tcp/0", &[Security::Noise]), echo_node("/ip4/127.0.0.1/tcp/0", &[Security::Tls]));
    let err = a.connect(&b.listen_addrs()[0].to_string(), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    let err = Node::start(NodeConfig { security: vec![], ..NodeConfig::default() }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("no security protocol"), "{err}");
    let twice = vec![Security::Tls, Security::Tls];
    let err = Node::start(NodeConfig { security: twice, ..NodeConfig::default() }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

#[test]
fn unary_call_round_trips_and_handler_errors_arrive_with_their_message() {
    let (a, b) = pair();
    for size in [0usize, 1, 64, 1 << 20] {
        let request: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(a.call_unary(b.peer_id(), "Test.echo", &request, T).unwrap(), request, "{size} bytes");
    }
    let err = a.call_unary(b.peer_id(), "Test.echo", b"fail", T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("echo refuses to fail"), "{err}");
    // Still usable afterwards, and calls made concurrently all succeed.
    let rpc = a.rpc().unwrap();
    let peer = b.peer_id();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let replies = runtime
        .block_on(futures::future::join_all((0..20u8).map(|i| rpc.call_unary(peer, "Test.echo", vec![i; 100], T))));
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), vec![i as u8; 100]);
    }
}

#[test]
fn unknown_handler_is_refused_with_na() {
    let (a, b) = pair();
    let err = a.call_unary(b.peer_id(), "Test.missing", b"x", T).unwrap_err();
    assert!(err.message().contains("protocol not supported"), "{err}");
    let err = a.call_stream(b.peer_id(), "Test.missing", vec![b"x".to_vec()], T).unwrap_err();
    assert!(err.message().contains("protocol not supported"), "{err}");
    assert!(b.remove_handler("Test.echo").unwrap());
    let err = a.call_unary(b.peer_id(), "Test.echo", b"x", T).unwrap_err();
    assert!(err.message().contains("protocol not supported"), "{err}");
}

#[test]
fn streaming_call_returns_every_reply_then_the_end() {
    let (a, b) = pair();
    let replies = a.call_stream(b.peer_id(), "Test.sum", vec![vec![1], vec![2], vec![3, 9]], T).unwrap();
    let expected: Vec<Vec<u8>> = vec![
        1u32.to_be_bytes().to_vec(),
        3u32.to_be_bytes().to_vec(),
        6u32.to_be_bytes().to_vec(),
        a.peer_id().to_bytes(),
    ];
    assert_eq!(replies, expected);
    let err = a.call_stream(b.peer_id(), "Test.sum", vec![vec![1], vec![]], T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("empty request in sum"), "{err}");
}

#[test]
fn streaming_replies_arrive_before_the_input_ends() {
    let (a, b) = pair();
    let rpc = a.rpc().unwrap();
    let peer = b.peer_id();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
        let mut replies = rpc.call_stream(peer, "Test.sum", rx, T).await.unwrap();
        for (byte, total) in [(5u8, 5u32), (6, 11), (7, 18)] {
            tx.unbounded_send(vec![byte]).unwrap();
            assert_eq!(replies.next().await.unwrap().unwrap(), total.to_be_bytes().to_vec());
        }
        drop(tx);
        assert_eq!(replies.next().await.unwrap().unwrap(), a.peer_id().to_bytes());
        assert!(replies.next().await.is_none());
    });
}

#[test]
fn oversized_messages_are_refused_and_the_connection_survives() {
    let (a, b) = pair();
    let small = RpcLimits { max_unary_len: 4096, max_frame_len: 4096, ..RpcLimits::default() };
    // Our own oversized request never leaves.
    a.set_rpc_limits(small).unwrap();
    let err = a.call_unary(b.peer_id(), "Test.echo", &[0u8; 8192], T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    a.set_rpc_limits(RpcLimits::default()).unwrap();
    // The handler side refuses an envelope over its limit without reading it, and a frame too.
    b.set_rpc_limits(small).unwrap();
    let err = a.call_unary(b.peer_id(), "Test.echo", &[0u8; 8192], T).unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Timeout, "{err}");
    let err = a.call_stream(b.peer_id(), "Test.sum", vec![vec![1; 8192]], T).unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Timeout, "{err}");
    // A reply over the caller's limit is refused too.
    b.set_rpc_limits(RpcLimits::default()).unwrap();
    a.set_rpc_limits(small).unwrap();
    b.add_unary_handler("Test.big", |_, _| async { Ok(vec![7u8; 100_000]) }).unwrap();
    let err = a.call_unary(b.peer_id(), "Test.big", b"", T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("exceeds the limit"), "{err}");
    a.set_rpc_limits(RpcLimits::default()).unwrap();
    assert_eq!(a.call_unary(b.peer_id(), "Test.echo", b"still here", T).unwrap(), b"still here");
}

#[test]
fn a_stalled_handler_times_out_and_is_cancelled() {
    let (a, b) = pair();
    let dropped = common::add_stalling_handler(&b, "Test.stall");
    let err = a.call_unary(b.peer_id(), "Test.stall", b"", Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    dropped.recv_timeout(T).expect("the handler is cancelled when its caller goes away");
    assert_eq!(a.call_unary(b.peer_id(), "Test.echo", b"ok", T).unwrap(), b"ok");
}

#[test]
fn calling_an_unknown_peer_fails_without_hanging() {
    let a = node();
    let stranger = kwaai_core::Identity::generate().peer_id();
    let err = a.call_unary(stranger, "Test.echo", b"", T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
}

#[test]
fn bad_handler_names_are_invalid_arguments() {
    let a = node();
    for name in ["", "/slash", "new\nline"] {
        let err = a.add_unary_handler(name, |_, r| async move { Ok(r) }).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name:?}");
        let err = a.call_unary(a.peer_id(), name, b"", T).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name:?}");
        let err = a.call_stream(a.peer_id(), name, vec![], T).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name:?}");
    }
}

#[test]
fn a_connection_stays_open_while_short_calls_come_and_closes_an_idle_timeout_after_the_last() {
    let idle = Duration::from_millis(800);
    let start = || {
        Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            idle_connection_timeout: idle,
            ..NodeConfig::default()
        })
        .unwrap()
    };
    let (a, b) = (start(), start());
    b.add_unary_handler("Test.echo", |_peer, request: Vec<u8>| async move { Ok(request) }).unwrap();
    a.connect(&b.listen_addrs()[0].to_string(), T).unwrap();
    let (rpc_a, rpc_b) = (a.rpc().unwrap(), b.rpc().unwrap());
    // Short calls 300 ms apart for four idle timeouts: each restarts the idle timer on both ends.
    let began = Instant::now();
    let mut last_call = began;
    while began.elapsed() < idle * 4 {
        assert!(rpc_a.is_connected(&b.peer_id()), "the caller closed the connection after {:?}", began.elapsed());
        assert!(rpc_b.is_connected(&a.peer_id()), "the server closed the connection after {:?}", began.elapsed());
        assert_eq!(a.call_unary(b.peer_id(), "Test.echo", b"ping", T).unwrap(), b"ping");
        last_call = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
    }
    // Then both ends close it about one idle timeout after the last call.
    while rpc_a.is_connected(&b.peer_id()) || rpc_b.is_connected(&a.peer_id()) {
        assert!(last_call.elapsed() < idle * 3, "still open {:?} after the last call", last_call.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let quiet = last_call.elapsed();
    assert!(quiet >= idle - Duration::from_millis(100), "closed only {quiet:?} after the last call");
    // The next call dials again.
    assert_eq!(a.call_unary(b.peer_id(), "Test.echo", b"again", T).unwrap(), b"again");
}
