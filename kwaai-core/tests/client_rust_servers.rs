//! The Rust client through kwaai's own servers: two Rust servers (blocks 0:2 and 2:4), and mixed
//! chains of a Python Petals server and a Rust server in both orders, each generating transformers'
//! greedy tokens, with server-to-server pushes between them; cancelling or dropping a token stream
//! ends the Rust servers' sessions.

mod client_common;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use client_common::{client_node, local_greedy, make_tiny_llama, recording_config, Swarm, PREFIX};
use kwaai_core::client::{ClientEvent, Hop};
use kwaai_core::model::{ClientModel, GenerationConfig, TextTokenizer};
use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Client, Node, NodeConfig, PeerId};

const PROMPT: &str = "Mixed swarms still agree";
const NEW_TOKENS: usize = 32;

fn wait_for_no_sessions(servers: &[&Server], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers.iter().any(|s| s.active_sessions() > 0) {
        assert!(Instant::now() < deadline, "{what}: the Rust servers still hold sessions");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rust_client_generates_transformers_greedy_tokens_through_rust_and_mixed_chains() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("tiny-llama");
    make_tiny_llama(&model_dir);
    let swarm = Swarm::start(&model_dir, &dir.path().join("swarm"), &["0:2", "2:4"]);
    let (prompt_ids, reference, eos) = local_greedy(&model_dir, PROMPT, NEW_TOKENS);
    let serve = |start, end| {
        let host = Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers: swarm.initial_peers.clone(),
            ..NodeConfig::default()
        })
        .expect("server node starts");
        let config = ServerConfig {
            model_dir: model_dir.clone(),
            block_indices: Some(Span::new(start, end).expect("span")),
            dht_prefix: Some(PREFIX.into()),
            throughput: Some(1.0),
            torch_dtype: Some(DType::F32),
            ..ServerConfig::default()
        };
        let server = Server::start(&host, config).expect("Rust server starts");
        (host, server)
    };
    let (rust0_node, rust0) = serve(0, 2);
    let (rust1_node, rust1) = serve(2, 4);
    let (rust0_peer, rust1_peer) = (rust0_node.peer_id(), rust1_node.peer_id());
    let (python0, python1) = (swarm.servers[0].peer, swarm.servers[1].peer);

    let node = client_node(&swarm);
    let model = Arc::new(ClientModel::load(&model_dir).expect("client model"));
    let prompt = TextTokenizer::from_dir(&model_dir).expect("tokenizer").encode(PROMPT, true).expect("encode");
    assert_eq!(prompt, prompt_ids);
    let greedy = GenerationConfig {
        max_new_tokens: NEW_TOKENS,
        min_new_tokens: NEW_TOKENS,
        stop_tokens: vec![eos],
        ..Default::default()
    };
    let client_through = |chain: [PeerId; 2]| {
        let (mut config, events) = recording_config();
        config.allowed_servers = Some(chain.to_vec());
        (Client::new(&node, config).expect("client"), events)
    };
    let chains = [
        ("two Rust servers", [rust0_peer, rust1_peer]),
        ("a Python then a Rust server", [python0, rust1_peer]),
        ("a Rust then a Python server", [rust0_peer, python1]),
    ];
    for (name, chain) in chains {
        let (client, events) = client_through(chain);
        let ids: Vec<u32> = client
            .generate(Arc::clone(&model), None, &prompt, greedy.clone())
            .expect("generate starts")
            .map(|t| t.map(|t| t.id))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ids, reference, "{name}: transformers' greedy tokens");
        let expected = vec![Hop { peer: chain[0], start: 0, end: 2 }, Hop { peer: chain[1], start: 2, end: 4 }];
        let events = events.lock().expect("events");
        let routes: Vec<&Vec<Hop>> = events
            .iter()
            .filter_map(|e| if let ClientEvent::RouteChosen { hops } = e { Some(hops) } else { None })
            .collect();
        assert_eq!(routes, [&expected], "{name}: the route");
    }
    assert!(rust0.pushes().sent() > 0, "the first Rust server pushed its outputs to the next server");
    assert!(rust1.pushes().received() > 0, "the second Rust server received pushes");

    // Ending a stream early ends both Rust servers' sessions.
    let (client, _events) = client_through([rust0_peer, rust1_peer]);
    let long = GenerationConfig { max_new_tokens: 400, ..Default::default() };
    for cancel_explicitly in [true, false] {
        let mut stream = client.generate(Arc::clone(&model), None, &prompt, long.clone()).expect("generate starts");
        for _ in 0..3 {
            stream.next().expect("a token").expect("no error");
        }
        assert_eq!((rust0.active_sessions(), rust1.active_sessions()), (1, 1), "the stream holds a session on each");
        if cancel_explicitly {
            stream.cancel();
        } else {
            drop(stream);
        }
        wait_for_no_sessions(&[&rust0, &rust1], if cancel_explicitly { "cancel()" } else { "drop" });
    }
    node.shutdown();
}
