//! A Python Petals server dies in the middle of a generation while another one holds the same
//! blocks (servers 0:2, 2:4, 2:4): the Rust client bans it, routes through the other one, replays
//! the session's history to it, and the full greedy output still equals transformers' local one.

mod client_common;
mod common;

use std::sync::{Arc, Mutex};

use client_common::{client_node, local_greedy, make_tiny_llama, Swarm, NUM_BLOCKS, PREFIX};
use kwaai_core::client::{ClientConfig, ClientEvent};
use kwaai_core::model::{ClientModel, GenerationConfig, TextTokenizer};
use kwaai_core::{Client, PeerId};

const PROMPT: &str = "Servers come and go";
const NEW_TOKENS: usize = 32;
/// The server of blocks 2:4 is killed right after it answered this many steps.
const KILL_AFTER_STEPS: usize = 10;

#[test]
fn generation_survives_a_server_killed_mid_stream_with_unchanged_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("tiny-llama");
    make_tiny_llama(&model_dir);
    let swarm = Arc::new(Mutex::new(Swarm::start(&model_dir, &dir.path().join("swarm"), &["0:2", "2:4", "2:4"])));
    let (prompt_ids, reference, eos) = local_greedy(&model_dir, PROMPT, NEW_TOKENS);
    let node = client_node(&swarm.lock().expect("swarm"));

    // The event callback runs on the generating thread: killing the server from there makes the
    // failure land on a known step, whatever the speed of the machine.
    let events = Arc::new(Mutex::new(Vec::<ClientEvent>::new()));
    let killed = Arc::new(Mutex::new(None::<PeerId>));
    let mut config = ClientConfig::new(PREFIX, NUM_BLOCKS);
    config.max_retries = Some(6);
    let (sink, killer, victim) = (Arc::clone(&events), Arc::clone(&swarm), Arc::clone(&killed));
    config.events = Some(Arc::new(move |event: &ClientEvent| {
        let mut events = sink.lock().expect("events");
        events.push(event.clone());
        let ClientEvent::HopLatency { hop, .. } = event else { return };
        let steps =
            events.iter().filter(|e| matches!(e, ClientEvent::HopLatency { hop: h, .. } if h.start == 2)).count();
        if hop.start == 2 && steps == KILL_AFTER_STEPS {
            killer.lock().expect("swarm").kill(&hop.peer);
            *victim.lock().expect("victim") = Some(hop.peer);
        }
    }));
    let client = Client::new(&node, config).expect("client");
    let model = Arc::new(ClientModel::load(&model_dir).expect("client model"));
    let tokenizer = TextTokenizer::from_dir(&model_dir).expect("tokenizer");
    let prompt = tokenizer.encode(PROMPT, true).expect("encode");
    assert_eq!(prompt, prompt_ids);

    let greedy = GenerationConfig {
        max_new_tokens: NEW_TOKENS,
        min_new_tokens: NEW_TOKENS,
        stop_tokens: vec![eos],
        ..Default::default()
    };
    let ids: Vec<u32> = client
        .generate(model, None, &prompt, greedy)
        .expect("generate starts")
        .map(|t| t.map(|t| t.id))
        .collect::<Result<_, _>>()
        .expect("the generation survives the failure");
    assert_eq!(ids, reference, "the output is unchanged by the failover");

    let victim = killed.lock().expect("victim").expect("a server was killed mid-generation");
    let events = events.lock().expect("events");
    let retries: Vec<&ClientEvent> = events.iter().filter(|e| matches!(e, ClientEvent::Retry { .. })).collect();
    assert!(
        matches!(retries.first(), Some(ClientEvent::Retry { peer: Some(p), block: 2, .. }) if *p == victim),
        "the dead server's failure was retried: {retries:?}"
    );
    let replayed: Vec<(PeerId, usize)> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::HistoryReplayed { hop, tokens } => Some((hop.peer, *tokens)),
            _ => None,
        })
        .collect();
    let survivor = swarm
        .lock()
        .expect("swarm")
        .servers
        .iter()
        .find(|s| s.blocks == (2, 4) && s.peer != victim)
        .expect("survivor")
        .peer;
    assert_eq!(replayed, [(survivor, prompt.len() + KILL_AFTER_STEPS - 1)], "the history went to the other 2:4 server");
    let later_hops = events.iter().rev().find_map(|e| match e {
        ClientEvent::HopLatency { hop, .. } if hop.start == 2 => Some(hop.peer),
        _ => None,
    });
    assert_eq!(later_hops, Some(survivor), "the generation finished through the survivor");
    drop(events);
    node.shutdown();
}
