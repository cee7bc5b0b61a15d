//! Tokens per second of the browser client (the example page in headless Chromium, the release web
//! package) against the native Rust client, on the same local swarm in the same run: a kwaai node
//! on TCP, WebSocket and WebRTC-direct and two Rust servers (blocks 0:2 and 2:4) of the demo model.
//! Each client generates the same greedy tokens `ROUNDS` times after one warm-up; the figure is the
//! median of tokens / seconds from the call to the last token (the page measures it the same way).
//! The page runs twice: reaching the node over WebSocket, then over WebRTC-direct. Also prints the
//! web package's size, gzipped.
//!
//! `cargo bench -p kwaai-wasm --bench browser_vs_native` (runs itself in a private network namespace,
//! like the WebRTC tests; needs the release web package in
//! `target/browser-pkg`, chromedriver and chromium, as the browser test does).

#[cfg(not(target_arch = "wasm32"))]
#[path = "../../kwaai-core/tests/common/mod.rs"]
mod common;
#[cfg(not(target_arch = "wasm32"))]
#[path = "../../kwaai-cli/src/demo_model.rs"]
#[allow(dead_code, unused_imports)]
mod demo_model;
#[cfg(not(target_arch = "wasm32"))]
#[path = "../../kwaai-cli/src/failure.rs"]
#[allow(dead_code)]
mod failure;
#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/web/mod.rs"]
#[allow(dead_code)]
mod web;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    // WebRTC opens sockets on every interface: the bench runs in a network namespace of its own.
    if common::in_private_namespace() {
        return native::run();
    }
    let bench = std::env::current_exe().expect("the bench binary's path");
    let status = common::in_new_network_namespace(&bench)
        .args(std::env::args_os().skip(1))
        .status()
        .unwrap_or_else(|e| panic!("starting `unshare` (util-linux) for a network namespace: {e}"));
    std::process::exit(status.code().unwrap_or(1));
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kwaai_core::client::ClientConfig;
    use kwaai_core::model::{ClientModel, GenerationConfig, ModelConfig, TextTokenizer};
    use kwaai_core::server::{Server, ServerConfig, Span};
    use kwaai_core::tensor::DType;
    use kwaai_core::{Client, Node, NodeConfig};

    use crate::web::{self, Browser, StaticServer};

    const PREFIX: &str = "browser-demo";
    const PROMPT: &str = "the old river and the quiet stone";
    const NEW_TOKENS: usize = 64;
    const ROUNDS: usize = 5;

    fn node(listen: &[&str], initial_peers: Vec<String>) -> Node {
        let listen_addrs = listen.iter().map(|a| a.to_string()).collect();
        Node::start(NodeConfig { listen_addrs, initial_peers, ..NodeConfig::default() }).expect("a node starts")
    }

    fn median(mut xs: Vec<f64>) -> f64 {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    }

    fn gzipped_len(path: &Path) -> usize {
        let mut gzip = std::process::Command::new("gzip")
            .args(["-9", "-c"])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip runs");
        let mut out = Vec::new();
        std::io::Read::read_to_end(gzip.stdout.as_mut().expect("stdout"), &mut out).expect("gzip output");
        gzip.wait().expect("gzip ends");
        out.len()
    }

    /// The page's median tokens/s, reaching the swarm through `bootstrap`; checks its tokens.
    fn page_speed(browser: &Browser, site: &str, bootstrap: &str, native_ids: &[u32]) -> f64 {
        let query =
            format!("bootstrap={}&model=/model/&prefix={PREFIX}&tokens={NEW_TOKENS}", web::query_escape(bootstrap));
        browser.navigate(&format!("{site}/index.html?{query}"));
        assert_eq!(browser.wait_for_state(&["ready", "error"], Duration::from_secs(120)), "ready");
        browser.set_value("prompt", PROMPT);
        let mut page = Vec::new();
        for round in 0..=ROUNDS {
            browser.click("generate");
            let state = browser.wait_for_state(&["done", "error"], Duration::from_secs(300));
            assert_eq!(state, "done", "{}", browser.text("status"));
            let ids: Vec<u32> = serde_json::from_str(&browser.text("tokens")).expect("ids");
            assert_eq!(ids, native_ids, "the page generates the native tokens");
            // "N tokens in S s: R tokens/s"
            let speed = browser.text("speed");
            let seconds: f64 = speed
                .split(" in ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .expect("seconds");
            if round > 0 {
                page.push(ids.len() as f64 / seconds);
            }
        }
        median(page)
    }

    pub fn run() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
        let package: PathBuf = std::env::var_os("KWAAI_BROWSER_PKG")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/browser-pkg"));
        let wasm = package.join("kwaai_wasm_bg.wasm");
        assert!(wasm.is_file(), "no web package at {}: build it first (see the browser test)", package.display());
        let driver = web::chromedriver().expect("chromedriver");
        let chromium = web::chromium().expect("chromium");

        let dir = tempfile::tempdir().expect("a temp dir");
        let model_dir = dir.path().join(PREFIX);
        crate::demo_model::write_demo_model(&model_dir).expect("the demo model");
        let relay = node(
            &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws", "/ip4/127.0.0.1/udp/0/webrtc-direct"],
            Vec::new(),
        );
        let addrs: Vec<String> = relay.listen_addrs().iter().map(ToString::to_string).collect();
        let tcp = addrs.iter().find(|a| a.contains("/tcp/") && !a.contains("/ws")).expect("a TCP address").clone();
        let ws = addrs.iter().find(|a| a.contains("/ws/")).expect("a /ws address").clone();
        let webrtc = addrs.iter().find(|a| a.contains("/webrtc-direct/")).expect("a /webrtc-direct address").clone();
        let servers: Vec<(Node, Server)> = [(0, 2), (2, 4)]
            .into_iter()
            .map(|(start, end)| {
                let host = node(&["/ip4/127.0.0.1/tcp/0"], vec![tcp.clone()]);
                let config = ServerConfig {
                    model_dir: model_dir.clone(),
                    block_indices: Some(Span::new(start, end).expect("a span")),
                    dht_prefix: Some(PREFIX.into()),
                    throughput: Some(1.0),
                    torch_dtype: Some(DType::F32),
                    ..ServerConfig::default()
                };
                let server = Server::start(&host, config).expect("a server");
                (host, server)
            })
            .collect();

        // Native.
        let client_node = node(&["/ip4/127.0.0.1/tcp/0"], vec![tcp.clone()]);
        let config = ModelConfig::from_dir(&model_dir).expect("config");
        let eos: Vec<u32> = config.eos_token_id.into_iter().collect();
        let client = Client::new(&client_node, ClientConfig::new(PREFIX, config.num_layers as u32)).expect("client");
        let model = Arc::new(ClientModel::load(&model_dir).expect("model"));
        let tokenizer = Arc::new(TextTokenizer::from_dir(&model_dir).expect("tokenizer"));
        let prompt = tokenizer.encode(PROMPT, true).expect("prompt");
        let greedy = GenerationConfig { max_new_tokens: NEW_TOKENS, stop_tokens: eos, ..GenerationConfig::default() };
        let mut native = Vec::new();
        let mut native_ids = Vec::new();
        for round in 0..=ROUNDS {
            let start = Instant::now();
            let ids: Vec<u32> = client
                .generate(Arc::clone(&model), Some(Arc::clone(&tokenizer)), &prompt, greedy.clone())
                .expect("generate")
                .map(|t| t.map(|t| t.id))
                .collect::<Result<_, _>>()
                .expect("tokens");
            if round > 0 {
                native.push(ids.len() as f64 / start.elapsed().as_secs_f64());
            }
            native_ids = ids;
        }

        // Browser.
        let site = StaticServer::start(vec![
            ("/pkg/".into(), package.clone()),
            ("/model/".into(), model_dir.clone()),
            ("/".into(), workspace.join("examples/browser")),
        ]);
        let browser = Browser::start(&driver, &chromium);
        let page_ws = page_speed(&browser, &site.url(), &ws, &native_ids);
        let page_webrtc = page_speed(&browser, &site.url(), &webrtc, &native_ids);
        drop(browser);
        let native = median(native);
        let raw = std::fs::metadata(&wasm).expect("the wasm").len();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tokens per run: {}", native_ids.len());
        let _ = writeln!(out, "native client: {native:.1} tokens/s (median of {ROUNDS})");
        for (how, page) in [("WebSocket", page_ws), ("WebRTC-direct", page_webrtc)] {
            let _ = writeln!(out, "browser client over {how}: {page:.1} tokens/s (median of {ROUNDS})");
            let _ = writeln!(out, "browser over {how} / native: {:.2}", page / native);
        }
        let _ = writeln!(out, "web package: {raw} bytes of wasm, {} gzipped (-9)", gzipped_len(&wasm));
        for (host, mut server) in servers {
            server.shutdown();
            host.shutdown();
        }
        client_node.shutdown();
        relay.shutdown();
    }
}
