//! `kwaainet demo`: a private swarm on 127.0.0.1 in this process: a DHT bootstrap node, two
//! servers each holding half of the demo model's blocks, and a client that streams a generation
//! through them to the terminal, then reports tokens/s and the route it took.
//!
//! Every node has its own libp2p host and talks to the others over loopback TCP exactly as
//! separate machines would; they share a process only so that the demo needs no setup.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kwaai_core::client::{ClientEvent, DistributedModel, Hop};
use kwaai_core::dht::DhtConfig;
use kwaai_core::model::GenerationConfig;
use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Node, NodeConfig};

use crate::args::DemoArgs;
use crate::demo_model::{write_demo_model, LAYERS};
use crate::failure::Failure;
use crate::paths::Home;

/// The DHT prefix the demo swarm announces the model under.
const DEMO_PREFIX: &str = "kwaai-demo";

/// Runs the demo (or, with `--make-model`, only writes the model).
pub fn run(home: &Home, args: &DemoArgs) -> Result<(), Failure> {
    if let Some(dir) = &args.make_model {
        write_demo_model(dir)?;
        println!("wrote the demo model to {}", dir.display());
        return Ok(());
    }
    let dir = home.root().join("demo-model");
    write_demo_model(&dir)?;

    let steps = ProgressBar::new(4).with_style(
        ProgressStyle::with_template("{msg:>28} [{bar:20}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    steps.set_message("starting the DHT node");
    let bootstrap = loopback_node(vec![], false)?;
    let peers = vec![bootstrap.listen_addrs()[0].to_string()];
    steps.inc(1);
    let half = (LAYERS / 2) as u32;
    let mut servers = Vec::new();
    for (start, end) in [(0, half), (half, LAYERS as u32)] {
        steps.set_message(format!("starting server {start}:{end}"));
        let host = loopback_node(peers.clone(), false)?;
        let config = ServerConfig {
            model_dir: dir.clone(),
            block_indices: Some(Span::new(start, end)?),
            dht_prefix: Some(DEMO_PREFIX.into()),
            throughput: Some(1.0),
            torch_dtype: Some(DType::F32),
            ..ServerConfig::default()
        };
        let server = Server::start(&host, config)?;
        servers.push((host, server));
        steps.inc(1);
    }
    steps.set_message("starting the client");
    let client_node = loopback_node(peers, true)?;
    let route: Arc<Mutex<Vec<Hop>>> = Arc::default();
    let seen = Arc::clone(&route);
    let model = DistributedModel::load(&client_node, &dir, Some(DEMO_PREFIX), move |config| {
        config.events = Some(Arc::new(move |event: &ClientEvent| {
            if let ClientEvent::RouteChosen { hops } = event {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = hops.clone();
            }
        }));
    })?;
    steps.inc(1);
    steps.finish_and_clear();

    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: model.model().config().eos_token_id.into_iter().collect(),
        ..GenerationConfig::default()
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", args.prompt);
    let _ = out.flush();
    let started = Instant::now();
    let mut first_token: Option<Duration> = None;
    let mut count = 0usize;
    for token in model.generate_text(&args.prompt, config)? {
        let token = token?;
        first_token.get_or_insert_with(|| started.elapsed());
        count += 1;
        if !token.text.is_empty() {
            let _ = write!(out, " {}", token.text.trim_start());
            let _ = out.flush();
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let _ = writeln!(out);
    drop(out);
    let first = first_token.unwrap_or_default().as_secs_f64() * 1e3;
    println!(
        "{count} tokens in {seconds:.3}s: {:.1} tokens/s, first token after {first:.0} ms",
        count as f64 / seconds
    );
    let route = route.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let hops: Vec<String> = route.iter().map(|h| format!("{}:{} on {}", h.start, h.end, short(&h.peer))).collect();
    println!("route: {}", hops.join(" -> "));
    for (host, server) in &servers {
        let span = server.span();
        println!("server {} holds blocks {}:{}", short(&host.peer_id()), span.start, span.end);
    }
    drop(model);
    for (host, mut server) in servers {
        server.shutdown();
        host.shutdown();
    }
    client_node.shutdown();
    bootstrap.shutdown();
    Ok(())
}

/// A node listening on a free loopback port, joining through `initial_peers`.
fn loopback_node(initial_peers: Vec<String>, client_mode: bool) -> Result<Node, Failure> {
    Ok(Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers,
        dht: DhtConfig { client_mode, ..DhtConfig::default() },
        ..NodeConfig::default()
    })?)
}

/// The last characters of a peer ID, enough to tell the demo's nodes apart.
fn short(peer: &kwaai_core::PeerId) -> String {
    let text = peer.to_base58();
    format!("…{}", &text[text.len().saturating_sub(6)..])
}
