//! The Rust client through a chain of two Python Petals servers (blocks 0:2 and 2:4 of a tiny
//! Llama): its greedy generation equals transformers' local one, stop tokens end it, sampling draws
//! what the same sampler draws over local blocks, the step-by-step session agrees,
//! and a cancelled or dropped token stream closes both servers' sessions (their attention caches
//! are freed, as their `rpc_info` shows).

mod client_common;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, IndexOp, Tensor};
use client_common::{cache_tokens_available, client_node, local_greedy, make_tiny_llama, recording_config, Swarm};
use kwaai_core::client::{ClientEvent, GeneratedToken, Hop};
use kwaai_core::model::{
    argmax, generate, BlockSpan, ClientModel, GenerationConfig, LoadOptions, SamplingConfig, TextTokenizer,
};
use kwaai_core::{Client, Node, PeerId};

const PROMPT: &str = "A quick test of the swarm";
const NEW_TOKENS: usize = 32;

/// Waits until every server's free cache is back to `baseline`; the servers keep an abandoned
/// session's cache for 300 s (their step timeout), far beyond this wait.
fn assert_caches_freed(node: &Node, servers: &[PeerId], baseline: &[u64], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u64> = servers.iter().map(|p| cache_tokens_available(node, *p)).collect();
        if now == baseline {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: caches still held: {now:?}, expected {baseline:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rust_client_generates_transformers_greedy_tokens_through_two_python_servers_and_cancel_frees_caches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model_dir = dir.path().join("tiny-llama");
    make_tiny_llama(&model_dir);
    let swarm = Swarm::start(&model_dir, &dir.path().join("swarm"), &["0:2", "2:4"]);
    let (prompt_ids, reference, eos) = local_greedy(&model_dir, PROMPT, NEW_TOKENS);
    let node = client_node(&swarm);
    let servers: Vec<PeerId> = swarm.servers.iter().map(|s| s.peer).collect();
    let baseline: Vec<u64> = servers.iter().map(|p| cache_tokens_available(&node, *p)).collect();

    let (config, events) = recording_config();
    let client = Client::new(&node, config).expect("client");
    let model = Arc::new(ClientModel::load(&model_dir).expect("client model"));
    let tokenizer = Arc::new(TextTokenizer::from_dir(&model_dir).expect("tokenizer"));
    let prompt = tokenizer.encode(PROMPT, true).expect("encode");
    assert_eq!(prompt, prompt_ids, "the tokenizers agree");

    // Greedy generation, streamed with text.
    let greedy = GenerationConfig {
        max_new_tokens: NEW_TOKENS,
        min_new_tokens: NEW_TOKENS,
        stop_tokens: vec![eos],
        ..Default::default()
    };
    let tokens: Vec<GeneratedToken> = client
        .generate(Arc::clone(&model), Some(Arc::clone(&tokenizer)), &prompt, greedy.clone())
        .expect("generate starts")
        .collect::<Result<_, _>>()
        .expect("every token arrives");
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, reference, "the swarm's greedy tokens equal transformers' local ones");
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    // Text comes as soon as its characters are complete: all of it but a trailing partial one.
    let full = tokenizer.decode(&ids, true).expect("decode");
    assert!(full.starts_with(&text), "{text:?} is a prefix of {full:?}");
    assert!(full[text.len()..].chars().all(|c| c == '\u{fffd}'), "only an incomplete character is held back");

    let events = std::mem::take(&mut *events.lock().expect("events"));
    let expected_route =
        swarm.servers.iter().map(|s| Hop { peer: s.peer, start: s.blocks.0, end: s.blocks.1 }).collect::<Vec<_>>();
    let routes: Vec<&Vec<Hop>> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::RouteChosen { hops } => Some(hops),
            _ => None,
        })
        .collect();
    assert_eq!(routes, [&expected_route], "one route through both servers");
    let hop_steps = events.iter().filter(|e| matches!(e, ClientEvent::HopLatency { .. })).count();
    assert_eq!(hop_steps, 2 * NEW_TOKENS, "one latency per hop per step");
    assert!(!events.iter().any(|e| matches!(e, ClientEvent::Retry { .. })), "no retries: {events:?}");

    // Stop tokens end the stream (the stop token included).
    let stop = reference[5];
    let until = reference.iter().position(|&t| t == stop).expect("present");
    let stopping = GenerationConfig { max_new_tokens: NEW_TOKENS, stop_tokens: vec![stop], ..Default::default() };
    let stopped: Vec<u32> = client
        .generate(Arc::clone(&model), None, &prompt, stopping)
        .expect("generate starts")
        .map(|t| t.expect("a token").id)
        .collect();
    assert_eq!(stopped, reference[..=until]);

    // Sampling through the swarm draws the same tokens as the same sampler over local blocks.
    let sampling = GenerationConfig {
        max_new_tokens: 16,
        sampling: SamplingConfig {
            do_sample: true,
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed: 11,
            ..Default::default()
        },
        ..Default::default()
    };
    let sampled: Vec<u32> = client
        .generate(Arc::clone(&model), None, &prompt, sampling.clone())
        .expect("generate starts")
        .map(|t| t.expect("a token").id)
        .collect();
    let local = BlockSpan::load(&model_dir, 0, 4, LoadOptions::default()).expect("local blocks");
    let mut cache = local.new_cache(prompt.len() + 16);
    let local_sampled =
        generate(&model, &prompt, &sampling, |h| local.forward_with_cache(h, None, &mut cache), |_| {}).expect("local");
    assert_eq!(sampled, local_sampled, "remote and local sampling agree");
    assert_ne!(sampled, reference[..16], "sampling is not greedy");

    // The step-by-step API: the prompt, then the first generated token.
    let mut session = client.inference_session(prompt.len() + 2).expect("session");
    let mut input = Tensor::new(prompt.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("ids");
    for expected in &reference[..2] {
        let hidden = session.step(&model.embed(&input).expect("embed")).expect("step");
        let last = hidden.i((.., hidden.dim(1).expect("dim") - 1..)).expect("last position");
        let logits =
            model.logits(&last).expect("logits").flatten_all().and_then(|l| l.to_vec1::<f32>()).expect("logits");
        assert_eq!(argmax(&logits), *expected);
        input = Tensor::new(&[*expected], &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("ids");
    }
    assert_eq!(session.position(), prompt.len() + 1);
    assert_eq!(session.route(), expected_route);
    let too_long = session.step(
        &model.embed(&Tensor::zeros((1, 2), candle_core::DType::U32, &Device::Cpu).expect("ids")).expect("embed"),
    );
    assert_eq!(too_long.expect_err("over max_length").kind(), kwaai_core::ErrorKind::InvalidArgument);
    session.close();
    assert_caches_freed(&node, &servers, &baseline, "closed session");

    // Cancelling a long generation mid-way, explicitly then by dropping the stream.
    let long = GenerationConfig { max_new_tokens: 400, ..Default::default() };
    for cancel_explicitly in [true, false] {
        let mut stream = client.generate(Arc::clone(&model), None, &prompt, long.clone()).expect("generate starts");
        for _ in 0..3 {
            stream.next().expect("a token").expect("no error");
        }
        let held: Vec<u64> = servers.iter().map(|p| cache_tokens_available(&node, *p)).collect();
        for (h, b) in held.iter().zip(&baseline) {
            assert!(h < b, "a running session holds cache on every server: {held:?} vs {baseline:?}");
        }
        if cancel_explicitly {
            stream.cancel();
            assert!(stream.next().is_none(), "a cancelled stream ends");
        } else {
            drop(stream);
        }
        assert_caches_freed(&node, &servers, &baseline, if cancel_explicitly { "cancel()" } else { "drop" });
    }
    node.shutdown();
}
