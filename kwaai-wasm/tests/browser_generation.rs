//! The browser client end to end: a local swarm on 127.0.0.1 (a Rust DHT node listening on TCP
//! and WebSocket, two Rust servers of two blocks each), the example page served with the web
//! package and the model, headless Chromium driven through chromedriver's WebDriver API. The page
//! generates 16 tokens; they and their text must equal the native Rust client's greedy generation
//! on the same swarm. A screenshot of the page is saved to `target/artifacts/browser-generation.png`.
//!
//! Needs the web package (`target/browser-pkg`, or `$KWAAI_BROWSER_PKG`), chromedriver and
//! chromium; it fails, naming the make target that provides them, when one is missing.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../../kwaai-cli/src/demo_model.rs"]
#[allow(dead_code)]
mod demo_model;
#[path = "../../kwaai-cli/src/failure.rs"]
#[allow(dead_code)]
mod failure;
mod web;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kwaai_core::client::ClientConfig;
use kwaai_core::dht::DhtConfig;
use kwaai_core::model::{ClientModel, GenerationConfig, ModelConfig, TextTokenizer};
use kwaai_core::server::{Server, ServerConfig, Span};
use kwaai_core::tensor::DType;
use kwaai_core::{Client, Node, NodeConfig};
use web::{Browser, StaticServer};

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

#[test]
fn the_browser_page_generates_the_native_clients_greedy_tokens() {
    let package = browser_package();
    let driver = web::chromedriver().unwrap_or_else(|e| panic!("{e}: install it with `{MAKE_TARGET}`"));
    let chromium = web::chromium().unwrap_or_else(|e| panic!("{e}: install it with `{MAKE_TARGET}`"));

    let dir = tempfile::tempdir().expect("a temp dir");
    let model_dir = dir.path().join(PREFIX);
    demo_model::write_demo_model(&model_dir).expect("the demo model is written");

    // The swarm: a DHT node on TCP and WebSocket, and two servers joined to it over TCP.
    let bootstrap = node(&["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"], Vec::new(), false);
    let with_peer = |addr: &kwaai_core::Multiaddr| match addr.to_string() {
        text if text.contains("/p2p/") => text,
        text => format!("{text}/p2p/{}", bootstrap.peer_id()),
    };
    let addrs = bootstrap.listen_addrs();
    let tcp = addrs.iter().find(|a| !a.to_string().contains("/ws")).map(with_peer).expect("a TCP address");
    let ws = addrs.iter().find(|a| a.to_string().contains("/ws")).map(with_peer);
    let ws = ws.unwrap_or_else(|| panic!("no /ws address among {addrs:?}"));
    let mut servers = Vec::new();
    for (start, end) in [(0, 2), (2, 4)] {
        let host = node(&["/ip4/127.0.0.1/tcp/0"], vec![tcp.clone()], false);
        let config = ServerConfig {
            model_dir: model_dir.clone(),
            block_indices: Some(Span::new(start, end).expect("a span")),
            dht_prefix: Some(PREFIX.into()),
            throughput: Some(1.0),
            torch_dtype: Some(DType::F32),
            ..ServerConfig::default()
        };
        let server = Server::start(&host, config).expect("a Rust server starts");
        servers.push((host, server));
    }

    eprintln!("swarm up; bootstrap {ws}");
    // The native client's greedy generation, as the page's default options make it.
    let client_node = node(&["/ip4/127.0.0.1/tcp/0"], vec![tcp.clone()], true);
    let model_config = ModelConfig::from_dir(&model_dir).expect("config.json");
    let eos: Vec<u32> = model_config.eos_token_id.into_iter().collect();
    let client = Client::new(&client_node, ClientConfig::new(PREFIX, model_config.num_layers as u32)).expect("client");
    let model = Arc::new(ClientModel::load(&model_dir).expect("the client model"));
    let tokenizer = Arc::new(TextTokenizer::from_dir(&model_dir).expect("the tokenizer"));
    let prompt = tokenizer.encode(PROMPT, true).expect("the prompt encodes");
    let greedy = GenerationConfig { max_new_tokens: NEW_TOKENS, stop_tokens: eos, ..GenerationConfig::default() };
    let native: Vec<(u32, String)> = client
        .generate(Arc::clone(&model), Some(Arc::clone(&tokenizer)), &prompt, greedy)
        .expect("the native generation starts")
        .map(|t| t.map(|t| (t.id, t.text)))
        .collect::<Result<_, _>>()
        .expect("the native generation");
    assert_eq!(native.len(), NEW_TOKENS, "the demo model does not stop early on this prompt");
    let native_ids: Vec<u32> = native.iter().map(|(id, _)| *id).collect();
    let native_text: String = native.iter().map(|(_, text)| text.as_str()).collect();

    eprintln!("native tokens {native_ids:?}");
    // The page, served with the package and the model, in headless Chromium.
    let site = StaticServer::start(vec![
        ("/pkg/".into(), package),
        ("/model/".into(), model_dir.clone()),
        ("/".into(), workspace().join("examples/browser")),
    ]);
    let browser = Browser::start(&driver, &chromium);
    let query = format!("bootstrap={}&model=/model/&prefix={PREFIX}&tokens={NEW_TOKENS}", web::query_escape(&ws));
    browser.navigate(&format!("{}/index.html?{query}", site.url()));
    let state = browser.wait_for_state(&["ready", "error"], Duration::from_secs(120));
    eprintln!("page state {state}: {}", browser.text("status"));
    assert_eq!(state, "ready", "the page did not connect: {}", browser.text("status"));
    assert!(!browser.text("status").is_empty());
    browser.set_value("prompt", PROMPT);
    browser.click("generate");
    let state = browser.wait_for_state(&["done", "error"], Duration::from_secs(300));
    let screenshot = workspace().join("target/artifacts/browser-generation.png");
    browser.screenshot(&screenshot);
    assert_eq!(state, "done", "the generation failed: {}", browser.text("status"));

    let ids: Vec<u32> = serde_json::from_str(&browser.text("tokens")).expect("the page's token ids");
    assert_eq!(ids, native_ids, "the browser's greedy tokens are the native client's");
    let output = browser.text("output");
    assert_eq!(output, format!("{PROMPT}{native_text}"), "the page shows the prompt and the generated text");
    let route = browser.text("route");
    for (host, _) in &servers {
        let peer = host.peer_id().to_base58();
        assert!(route.contains(&peer[..6]), "the route {route:?} shows {peer}");
    }
    assert!(browser.text("speed").contains("tokens/s"), "the speed is shown");
    let size = std::fs::metadata(&screenshot).expect("the screenshot").len();
    assert!(size > 1000, "the screenshot has {size} bytes");

    drop(browser);
    for (host, mut server) in servers {
        server.shutdown();
        host.shutdown();
    }
    client_node.shutdown();
    bootstrap.shutdown();
}
