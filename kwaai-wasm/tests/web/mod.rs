//! What the browser test needs around the page: a static file server on 127.0.0.1 and a headless
//! Chromium driven through chromedriver's WebDriver HTTP API (std sockets and serde_json).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The path of `name` from `$var` or the `PATH`.
fn find_program(var: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!("none of {names:?} is on the PATH (or set ${var})"))
}

/// chromedriver (`$CHROMEDRIVER` or the `PATH`).
pub fn chromedriver() -> Result<PathBuf, String> {
    find_program("CHROMEDRIVER", &["chromedriver"])
}

/// Chromium (`$CHROME` or the `PATH`).
pub fn chromium() -> Result<PathBuf, String> {
    find_program("CHROME", &["chromium", "chromium-browser", "google-chrome"])
}

/// `text` for a URL's query string.
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

/// Serves directories under URL prefixes on 127.0.0.1, one thread per connection, until dropped
/// with the test process.
pub struct StaticServer {
    port: u16,
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn respond(mut stream: TcpStream, mounts: &[(String, PathBuf)]) {
    let mut reader = BufReader::new(stream.try_clone().expect("a socket clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let file = mounts.iter().find_map(|(prefix, dir)| {
        let rest = path.strip_prefix(prefix.as_str())?;
        let rest = if rest.is_empty() { "index.html" } else { rest };
        (!rest.split('/').any(|part| part == "..")).then(|| dir.join(rest))
    });
    let (status, kind, body) = match file.as_ref().and_then(|f| std::fs::read(f).ok().map(|b| (f, b))) {
        Some((file, body)) => ("200 OK", content_type(file), body),
        None => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: \
         close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
}

impl StaticServer {
    /// Serves each `(prefix, dir)`: `prefix` must start and end with `/`; the first match wins.
    pub fn start(mounts: Vec<(String, PathBuf)>) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the HTTP server binds 127.0.0.1");
        let port = listener.local_addr().expect("its address").port();
        let mounts = std::sync::Arc::new(mounts);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mounts = std::sync::Arc::clone(&mounts);
                std::thread::spawn(move || respond(stream, &mounts));
            }
        });
        StaticServer { port }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One WebDriver request to chromedriver on `port`.
fn webdriver(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connecting to chromedriver: {e}"))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: \
         {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| format!("writing to chromedriver: {e}"))?;
    // chromedriver does not close the connection after its answer: read the body by its length.
    let mut reader = BufReader::new(stream);
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("reading from chromedriver: {e}"))?;
        if line.is_empty() || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.ok_or("chromedriver answered without a Content-Length")?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| format!("reading from chromedriver: {e}"))?;
    let json = String::from_utf8_lossy(&body);
    let value: Value = serde_json::from_str(&json).map_err(|e| format!("chromedriver's answer {json:?}: {e}"))?;
    if value["value"].get("error").is_some() {
        return Err(format!("WebDriver {method} {path}: {}", value["value"]));
    }
    Ok(value["value"].clone())
}

/// A headless Chromium session; chromedriver is killed on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a free 127.0.0.1 port and a headless Chromium session.
    pub fn start(driver: &Path, chromium: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let mut browser = Browser { driver: child, port, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while webdriver(port, "GET", "/status", None).map(|v| v["ready"] != true).unwrap_or(true) {
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                // Chromium's WebRTC leaves the loopback interface out of its ICE candidates unless
                // this flag allows it, and the page dials nodes' /webrtc-direct addresses on 127.0.0.1.
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1100,900", "--allow-loopback-in-peer-connection"],
            },
        }}});
        let session = webdriver(port, "POST", "/session", Some(&capabilities)).expect("a Chromium session starts");
        browser.session = session["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        webdriver(self.port, method, &path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `script` in the page with `args` and returns its value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(&json!({"script": script, "args": args})))
    }

    /// Opens `url`.
    pub fn navigate(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The kinds of the client's events so far (the page's `events` element).
    pub fn events(&self) -> Vec<String> {
        serde_json::from_str(&self.text("events")).expect("the page's events")
    }

    /// Waits until `document.body.dataset.state` is one of `states`, and returns it.
    pub fn wait_for_state(&self, states: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.execute("return document.body.dataset.state || ''", json!([]));
            let state = state.as_str().unwrap_or_default().to_owned();
            if states.contains(&state.as_str()) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "the page stayed in state {state:?} (waiting for {states:?}); status: {}",
                self.text("status")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The text of the element with id `id`.
    pub fn text(&self, id: &str) -> String {
        let value = self
            .execute("const e = document.getElementById(arguments[0]); return e ? e.textContent : null", json!([id]));
        value.as_str().unwrap_or_else(|| panic!("the page has no #{id}")).to_owned()
    }

    /// Sets the value of the input with id `id`.
    pub fn set_value(&self, id: &str, value: &str) {
        self.execute("document.getElementById(arguments[0]).value = arguments[1]", json!([id, value]));
    }

    /// Clicks the element with id `id` as a user would.
    pub fn click(&self, id: &str) {
        let element = self.call("POST", "/element", Some(&json!({"using": "css selector", "value": format!("#{id}")})));
        let handle = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element");
        self.call("POST", &format!("/element/{handle}/click"), Some(&json!({})));
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub fn screenshot(&self, path: &Path) {
        let data = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().expect("base64")).expect("a PNG");
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("the artifacts directory");
        std::fs::write(path, png).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = webdriver(self.port, "DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page's way of shortening a peer ID (examples/browser/app.js).
pub fn short_peer(peer: &str) -> String {
    format!("{}…{}", &peer[..6], &peer[peer.len() - 4..])
}

/// What one generation in the example page needs.
pub struct PageSetup<'a> {
    /// chromedriver.
    pub driver: &'a Path,
    /// Chromium.
    pub chromium: &'a Path,
    /// The wasm-bindgen web package, served under `/pkg/`.
    pub package: &'a Path,
    /// The example page's directory, served under `/`.
    pub site: &'a Path,
    /// The model directory, served under `/model/`.
    pub model: &'a Path,
    /// The kwaai node's `/ws` or `/webrtc-direct/certhash/...` multiaddr with its peer ID.
    pub bootstrap: &'a str,
    /// The model's DHT prefix.
    pub prefix: &'a str,
    /// The prompt typed into the page.
    pub prompt: &'a str,
    /// Tokens to generate.
    pub new_tokens: usize,
    /// Tokens generated before the end-of-sequence token may end the generation.
    pub min_new_tokens: usize,
    /// Where the screenshot of the page after the generation goes.
    pub screenshot: &'a Path,
}

/// What the page showed after one generation.
pub struct PageRun {
    /// The generated token ids.
    pub ids: Vec<u32>,
    /// The output box: the prompt and the generated text.
    pub output: String,
    /// The route line.
    pub route: String,
    /// The speed line.
    pub speed: String,
    /// The kinds of the client's events, in order.
    pub events: Vec<String>,
}

impl PageRun {
    /// Serves the page, opens it in headless Chromium, waits until it is connected, types the
    /// prompt, clicks Generate and waits until the generation is done; saves a screenshot.
    pub fn generate(setup: &PageSetup<'_>) -> PageRun {
        Self::generate_with(setup, |_| {})
    }

    /// [`PageRun::generate`], calling `during` with the browser right after the click.
    pub fn generate_with(setup: &PageSetup<'_>, during: impl FnOnce(&Browser)) -> PageRun {
        Self::generate_around(setup, |_| {}, during)
    }

    /// [`PageRun::generate`], calling `before` once the page is ready and `during` right after the
    /// click.
    pub fn generate_around(
        setup: &PageSetup<'_>,
        before: impl FnOnce(&Browser),
        during: impl FnOnce(&Browser),
    ) -> PageRun {
        let site = StaticServer::start(vec![
            ("/pkg/".into(), setup.package.to_path_buf()),
            ("/model/".into(), setup.model.to_path_buf()),
            ("/".into(), setup.site.to_path_buf()),
        ]);
        let browser = Browser::start(setup.driver, setup.chromium);
        let query = format!(
            "bootstrap={}&model=/model/&prefix={}&tokens={}&min={}",
            query_escape(setup.bootstrap),
            query_escape(setup.prefix),
            setup.new_tokens,
            setup.min_new_tokens
        );
        browser.navigate(&format!("{}/index.html?{query}", site.url()));
        let state = browser.wait_for_state(&["ready", "error"], Duration::from_secs(120));
        assert_eq!(state, "ready", "the page did not connect: {}", browser.text("status"));
        before(&browser);
        browser.set_value("prompt", setup.prompt);
        browser.click("generate");
        during(&browser);
        let state = browser.wait_for_state(&["done", "error"], Duration::from_secs(300));
        browser.screenshot(setup.screenshot);
        assert_eq!(state, "done", "the generation failed: {}", browser.text("status"));
        let size = std::fs::metadata(setup.screenshot).expect("the screenshot").len();
        assert!(size > 1000, "the screenshot has {size} bytes");
        PageRun {
            ids: serde_json::from_str(&browser.text("tokens")).expect("the page's token ids"),
            output: browser.text("output"),
            route: browser.text("route"),
            speed: browser.text("speed"),
            events: browser.events(),
        }
    }
}
