//! The browser client end to end: a local swarm on 127.0.0.1, the example page served with the web
//! package and the model, headless Chromium driven through chromedriver's WebDriver API. The page
//! generates 16 tokens; they and their text must equal the native Rust client's greedy generation
//! on the same swarm. Two swarms: a Rust DHT node listening on TCP and WebSocket (or, in one case,
//! WebRTC-direct) with two Rust servers behind it; and a mixed chain, a Rust server then a Python Petals server, reached through
//! a kwaai node that joined the Python swarm. Screenshots of the page go to `target/artifacts/`.
//!
//! Needs the web package (`target/browser-pkg`, or `$KWAAI_BROWSER_PKG`), chromedriver and
//! chromium; it fails, naming the make target that provides them, when one is missing.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../../kwaai-core/tests/client_common/mod.rs"]
mod client_common;
#[path = "../../kwaai-core/tests/common/mod.rs"]
mod common;
#[path = "../../kwaai-cli/src/demo_model.rs"]
#[allow(dead_code)]
mod demo_model;
#[path = "../../kwaai-cli/src/failure.rs"]
#[allow(dead_code)]
mod failure;
mod web;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kwaai_core::client::{ClientConfig, Hop};
use kwaai_core::dht::DhtConfig;
use kwaai_core::model::{ClientModel, GenerationConfig, ModelConfig, TextTokenizer};
use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Client, Node, NodeConfig};
use web::{PageRun, PageSetup};

const PREFIX: &str = "browser-demo";
const PROMPT: &str = "the old river and the quiet stone";
const NEW_TOKENS: usize = 16;
/// The make target that builds the web package and installs chromium and chromedriver.
const MAKE_TARGET: &str = "make test-browser";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn browser_package() -> PathBuf {
    let dir = std::env::var_os("KWAAI_BROWSER_PKG")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/browser-pkg"));
    for file in ["kwaai_wasm.js", "kwaai_wasm_bg.wasm"] {
        assert!(
            dir.join(file).is_file(),
            "the web package is missing ({} has no {file}): build it with `{MAKE_TARGET}` (cargo build --release -p \
             kwaai-wasm --target wasm32-unknown-unknown, then wasm-bindgen --target web --out-dir target/browser-pkg)",
            dir.display()
        );
    }
    dir
}

fn node(listen: &[&str], initial_peers: Vec<String>, client_mode: bool) -> Node {
    Node::start(NodeConfig {
        listen_addrs: listen.iter().map(|a| a.to_string()).collect(),
        initial_peers,
        dht: DhtConfig { client_mode, ..DhtConfig::default() },
        ..NodeConfig::default()
    })
    .expect("a node starts")
}

/// A kwaai node listening on TCP and WebSocket, joined to `initial_peers`: with its TCP and `/ws`
/// multiaddrs (with its peer ID).
fn websocket_node(initial_peers: Vec<String>) -> (Node, String, String) {
    let node = node(&["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"], initial_peers, false);
    let with_peer = |addr: &kwaai_core::Multiaddr| match addr.to_string() {
        text if text.contains("/p2p/") => text,
        text => format!("{text}/p2p/{}", node.peer_id()),
    };
    let addrs = node.listen_addrs();
    let tcp = addrs.iter().find(|a| !a.to_string().contains("/ws")).map(with_peer).expect("a TCP address");
    let ws = addrs.iter().find(|a| a.to_string().contains("/ws")).map(with_peer);
    let ws = ws.unwrap_or_else(|| panic!("no /ws address among {addrs:?}"));
    (node, tcp, ws)
}

/// A kwaai node listening on TCP and WebRTC-direct: with its TCP and `/webrtc-direct/certhash/...`
/// multiaddrs (with its peer ID).
fn webrtc_node() -> (Node, String, String) {
    let node = node(&["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/webrtc-direct"], Vec::new(), false);
    let addrs: Vec<String> = node.listen_addrs().iter().map(ToString::to_string).collect();
    let tcp = addrs.iter().find(|a| a.contains("/tcp/")).cloned().expect("a TCP address");
    let webrtc = addrs.iter().find(|a| a.contains("/webrtc-direct/certhash/")).cloned();
    let webrtc = webrtc.unwrap_or_else(|| panic!("no /webrtc-direct address among {addrs:?}"));
    (node, tcp, webrtc)
}

/// A Rust server of blocks `start..end` on a node of its own joined to `initial_peers`.
fn rust_server(initial_peers: Vec<String>, model_dir: &Path, prefix: &str, start: u32, end: u32) -> (Node, Server) {
    let host = node(&["/ip4/127.0.0.1/tcp/0"], initial_peers, false);
    let config = ServerConfig {
        model_dir: model_dir.to_path_buf(),
        block_indices: Some(Span::new(start, end).expect("a span")),
        dht_prefix: Some(prefix.into()),
        throughput: Some(1.0),
        torch_dtype: Some(DType::F32),
        ..ServerConfig::default()
    };
    let server = Server::start(&host, config).expect("a Rust server starts");
    (host, server)
}

/// The native client's greedy generation of `n` tokens (`min` of them before the model's EOS may
/// stop it) after `prompt`, as the page makes it: the ids and the text.
fn native_greedy(
    prompt: &str,
    initial_peers: Vec<String>,
    model_dir: &Path,
    prefix: &str,
    n: usize,
    min: usize,
) -> (Vec<u32>, String) {
    let client_node = node(&["/ip4/127.0.0.1/tcp/0"], initial_peers, true);
    let model_config = ModelConfig::from_dir(model_dir).expect("config.json");
    let eos: Vec<u32> = model_config.eos_token_id.into_iter().collect();
    let client = Client::new(&client_node, ClientConfig::new(prefix, model_config.num_layers as u32)).expect("client");
    let model = Arc::new(ClientModel::load(model_dir).expect("the client model"));
    let tokenizer = Arc::new(TextTokenizer::from_dir(model_dir).expect("the tokenizer"));
    let prompt = tokenizer.encode(prompt, true).expect("the prompt encodes");
    let greedy =
        GenerationConfig { max_new_tokens: n, min_new_tokens: min, stop_tokens: eos, ..GenerationConfig::default() };
    let native: Vec<(u32, String)> = client
        .generate(model, Some(tokenizer), &prompt, greedy)
        .expect("the native generation starts")
        .map(|t| t.map(|t| (t.id, t.text)))
        .collect::<Result<_, _>>()
        .expect("the native generation");
    client_node.shutdown();
    (native.iter().map(|(id, _)| *id).collect(), native.iter().map(|(_, text)| text.as_str()).collect())
}

/// What the page needs besides the swarm, checked first: the test fails when one is missing.
struct Tools {
    package: PathBuf,
    driver: PathBuf,
    chromium: PathBuf,
}

fn tools() -> Tools {
    let package = browser_package();
    let driver = web::chromedriver().unwrap_or_else(|e| panic!("{e}: install it with `{MAKE_TARGET}`"));
    let chromium = web::chromium().unwrap_or_else(|e| panic!("{e}: install it with `{MAKE_TARGET}`"));
    Tools { package, driver, chromium }
}

/// What the page must show: the native client's greedy generation after `prompt`, and `route`.
struct Expected<'a> {
    prompt: &'a str,
    /// How many tokens both clients generate before the model's EOS may stop them.
    min_new_tokens: usize,
    native: (Vec<u32>, String),
    route: &'a [Hop],
}

/// Generates in the page through the node at `bootstrap` and checks the tokens, the text and the route
/// against the native generation.
/// `shot` names the screenshot in `target/artifacts/`.
fn check_page(tools: &Tools, model_dir: &Path, bootstrap: &str, prefix: &str, expected: Expected, shot: &str) {
    let (native_ids, native_text) = expected.native;
    assert_eq!(native_ids.len(), NEW_TOKENS, "the demo model does not stop early on this prompt");
    let page = PageRun::generate(&PageSetup {
        driver: &tools.driver,
        chromium: &tools.chromium,
        package: &tools.package,
        site: &workspace().join("examples/browser"),
        model: model_dir,
        bootstrap,
        prefix,
        prompt: expected.prompt,
        new_tokens: NEW_TOKENS,
        min_new_tokens: expected.min_new_tokens,
        screenshot: &workspace().join("target/artifacts").join(shot),
    });
    assert_eq!(page.ids, native_ids, "the browser's greedy tokens are the native client's");
    let shown = format!("{}{native_text}", expected.prompt);
    assert_eq!(page.output, shown, "the page shows the prompt and the generated text");
    let hops: Vec<String> = (expected.route.iter())
        .map(|h| format!("{} [{}:{})", web::short_peer(&h.peer.to_base58()), h.start, h.end))
        .collect();
    assert_eq!(page.route, hops.join(" → "), "the page shows the route");
    assert!(page.speed.contains("tokens/s"), "the speed is shown: {:?}", page.speed);
}

/// The route through `servers`, of blocks 0:2 and 2:4.
fn route_of(servers: &[(Node, Server); 2]) -> Vec<Hop> {
    (servers.iter().zip([(0, 2), (2, 4)]))
        .map(|((host, _), (start, end))| Hop { peer: host.peer_id(), start, end })
        .collect()
}

#[test]
fn the_browser_page_generates_the_native_clients_greedy_tokens() {
    let tools = tools();
    let dir = tempfile::tempdir().expect("a temp dir");
    let model_dir = dir.path().join(PREFIX);
    demo_model::write_demo_model(&model_dir).expect("the demo model is written");
    // The swarm: a DHT node on TCP and WebSocket, and two servers joined to it over TCP.
    let (bootstrap, tcp, ws) = websocket_node(Vec::new());
    let servers = [(0, 2), (2, 4)].map(|(start, end)| rust_server(vec![tcp.clone()], &model_dir, PREFIX, start, end));
    let native = native_greedy(PROMPT, vec![tcp.clone()], &model_dir, PREFIX, NEW_TOKENS, 0);
    let expected = Expected { prompt: PROMPT, min_new_tokens: 0, native, route: &route_of(&servers) };
    check_page(&tools, &model_dir, &ws, PREFIX, expected, "browser-generation.png");
    for (host, mut server) in servers {
        server.shutdown();
        host.shutdown();
    }
    bootstrap.shutdown();
}

#[test]
fn the_browser_page_generates_over_webrtc_direct() {
    if !common::in_private_network() {
        return;
    }
    let tools = tools();
    let dir = tempfile::tempdir().expect("a temp dir");
    let model_dir = dir.path().join(PREFIX);
    demo_model::write_demo_model(&model_dir).expect("the demo model is written");
    // The page reaches the DHT node over WebRTC-direct only; the servers joined it over TCP. A long
    // prompt: the page's first request to each server (its hidden states) is over 8 KiB, more
    // than libp2p-webrtc reads in one data-channel message (see kwaai_core::p2p::bounded_writes).
    let prompt = [PROMPT; 12].join(" ");
    let (bootstrap, tcp, webrtc) = webrtc_node();
    let servers = [(0, 2), (2, 4)].map(|(start, end)| rust_server(vec![tcp.clone()], &model_dir, PREFIX, start, end));
    let native = native_greedy(&prompt, vec![tcp.clone()], &model_dir, PREFIX, NEW_TOKENS, NEW_TOKENS);
    let expected = Expected { prompt: &prompt, min_new_tokens: NEW_TOKENS, native, route: &route_of(&servers) };
    check_page(&tools, &model_dir, &webrtc, PREFIX, expected, "browser-generation-webrtc.png");
    for (host, mut server) in servers {
        server.shutdown();
        host.shutdown();
    }
    bootstrap.shutdown();
}

#[test]
fn the_browser_page_generates_through_a_mixed_chain_with_a_python_server() {
    let tools = tools();
    let dir = tempfile::tempdir().expect("a temp dir");
    let model_dir = dir.path().join("demo");
    demo_model::write_demo_model(&model_dir).expect("the demo model is written");
    // Python Petals: a bootstrap node and a server of blocks 2:4. A kwaai node on WebSocket joins
    // that swarm, a Rust server of blocks 0:2 joins through it.
    let prefix = client_common::PREFIX;
    let swarm = client_common::Swarm::start(&model_dir, &dir.path().join("swarm"), &["2:4"]);
    let (relay, tcp, ws) = websocket_node(swarm.initial_peers.clone());
    let (host, mut server) = rust_server(vec![tcp.clone()], &model_dir, prefix, 0, 2);
    let native = native_greedy(PROMPT, swarm.initial_peers.clone(), &model_dir, prefix, NEW_TOKENS, 0);
    let python = &swarm.servers[0];
    let route = [
        Hop { peer: host.peer_id(), start: 0, end: 2 },
        Hop { peer: python.peer, start: python.blocks.0, end: python.blocks.1 },
    ];
    let expected = Expected { prompt: PROMPT, min_new_tokens: 0, native, route: &route };
    check_page(&tools, &model_dir, &ws, prefix, expected, "browser-generation-mixed.png");
    server.shutdown();
    host.shutdown();
    relay.shutdown();
}

#[test]
fn the_page_fails_over_when_a_server_leaves_mid_generation() {
    const LONG: usize = 200;
    let tools = tools();
    let dir = tempfile::tempdir().expect("a temp dir");
    let model_dir = dir.path().join(PREFIX);
    demo_model::write_demo_model(&model_dir).expect("the demo model is written");
    // Blocks 0:2 on one server, 2:4 on two: the page's route uses one of the two, which leaves.
    let (relay, tcp, ws) = websocket_node(Vec::new());
    let (first_host, mut first) = rust_server(vec![tcp.clone()], &model_dir, PREFIX, 0, 2);
    let spares = RefCell::new([0, 1].map(|_| Some(rust_server(vec![tcp.clone()], &model_dir, PREFIX, 2, 4))));
    let (native_ids, native_text) = native_greedy(PROMPT, vec![tcp.clone()], &model_dir, PREFIX, LONG, LONG);
    let left = Cell::new(None);
    let setup = PageSetup {
        driver: &tools.driver,
        chromium: &tools.chromium,
        package: &tools.package,
        site: &workspace().join("examples/browser"),
        model: &model_dir,
        bootstrap: &ws,
        prefix: PREFIX,
        prompt: PROMPT,
        new_tokens: LONG,
        min_new_tokens: LONG,
        screenshot: &workspace().join("target/artifacts/browser-generation-failover.png"),
    };
    let page = PageRun::generate_with(&setup, |browser| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while serde_json::from_str::<Vec<u32>>(&browser.text("tokens")).expect("ids").len() < 5 {
            assert!(Instant::now() < deadline, "no tokens: {}", browser.text("status"));
            std::thread::sleep(Duration::from_millis(20));
        }
        let route = browser.text("route");
        let mut spares = spares.borrow_mut();
        let in_route = |s: &Option<(Node, Server)>| {
            s.as_ref().is_some_and(|(host, _)| route.contains(&web::short_peer(&host.peer_id().to_base58())))
        };
        let index = spares.iter().position(in_route).unwrap_or_else(|| panic!("no 2:4 server in the route {route:?}"));
        let (host, mut server) = spares[index].take().expect("a running server");
        server.shutdown();
        host.shutdown();
        left.set(Some(index));
    });
    assert_eq!(page.ids, native_ids, "the tokens after the failover are the native client's");
    assert_eq!(page.output, format!("{PROMPT}{native_text}"));
    assert!(page.events.iter().any(|e| e == "retry"), "the page saw a retry: {:?}", page.events);
    assert_eq!(page.events.iter().filter(|e| *e == "route").count(), 2, "a route, then the rebuilt one");
    let spares = spares.into_inner();
    let (other_host, _) = spares[1 - left.get().expect("a server left")].as_ref().expect("the other server runs");
    let other = web::short_peer(&other_host.peer_id().to_base58());
    assert!(page.route.ends_with(&format!("{other} [2:4)")), "the route {:?} ends at {other}", page.route);
    for (host, mut server) in spares.into_iter().flatten() {
        server.shutdown();
        host.shutdown();
    }
    first.shutdown();
    first_host.shutdown();
    relay.shutdown();
}

#[test]
fn the_page_reconnects_to_another_node_when_its_node_goes_away() {
    page_reconnects(false, "browser-generation-reconnect.png");
}

#[test]
fn the_page_reconnects_when_its_webrtc_direct_node_goes_away() {
    if !common::in_private_network() {
        return;
    }
    // The browser's WebRTC does not report the node's end: the page finds out by pinging it.
    page_reconnects(true, "browser-generation-reconnect-webrtc.png");
}

/// The page knows two kwaai nodes and connects to the first (over WebRTC-direct if `webrtc`, else
/// WebSocket), which leaves; the page reconnects to the second (WebSocket) and generates.
fn page_reconnects(webrtc: bool, shot: &str) {
    let tools = tools();
    let dir = tempfile::tempdir().expect("a temp dir");
    let model_dir = dir.path().join(PREFIX);
    demo_model::write_demo_model(&model_dir).expect("the demo model is written");
    let (first, tcp, first_ws) = if webrtc { webrtc_node() } else { websocket_node(Vec::new()) };
    let (second, second_tcp, second_ws) = websocket_node(vec![tcp.clone()]);
    let peers = vec![tcp.clone(), second_tcp.clone()];
    let servers = [(0, 2), (2, 4)].map(|(start, end)| rust_server(peers.clone(), &model_dir, PREFIX, start, end));
    let (native_ids, native_text) = native_greedy(PROMPT, vec![second_tcp.clone()], &model_dir, PREFIX, NEW_TOKENS, 0);
    let bootstrap = format!("{first_ws},{second_ws}");
    let setup = PageSetup {
        driver: &tools.driver,
        chromium: &tools.chromium,
        package: &tools.package,
        site: &workspace().join("examples/browser"),
        model: &model_dir,
        bootstrap: &bootstrap,
        prefix: PREFIX,
        prompt: PROMPT,
        new_tokens: NEW_TOKENS,
        min_new_tokens: 0,
        screenshot: &workspace().join("target/artifacts").join(shot),
    };
    let before = |browser: &web::Browser| {
        assert_eq!(browser.events(), ["connected"]);
        let first_peer = web::short_peer(&first.peer_id().to_base58());
        let status = browser.text("status");
        assert!(status.contains(&format!("connected to {first_peer}")), "the page uses the first node: {status}");
        first.shutdown();
        let deadline = Instant::now() + Duration::from_secs(60);
        while browser.events() != ["connected", "disconnected", "connected"] {
            let events = browser.events();
            assert!(
                Instant::now() < deadline && events.iter().filter(|e| *e == "connected").count() < 3,
                "the page did not reconnect: events {events:?}, status {}",
                browser.text("status")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let second = web::short_peer(&second.peer_id().to_base58());
        assert!(browser.text("status").contains(&second), "the status names {second}: {}", browser.text("status"));
    };
    let page = PageRun::generate_around(&setup, before, |_| {});
    assert_eq!(page.ids, native_ids, "the tokens through the second node are the native client's");
    assert_eq!(page.output, format!("{PROMPT}{native_text}"));
    for (host, mut server) in servers {
        server.shutdown();
        host.shutdown();
    }
    second.shutdown();
}
