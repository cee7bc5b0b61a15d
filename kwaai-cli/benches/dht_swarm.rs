//! DHT swarm benchmark on loopback, the Rust twin of ../shared/reference/bench/dht.py:
//! `--nodes` server nodes, each a `kwaainet start` process, all bootstrapping from node 0, and
//! one client-mode node in this process that issues every operation.
//!
//! Measures: start-up of each server (spawn to listening and joined) and of the client (to its
//! first successful get of a key stored before it joined); concurrent store/get ops/s (batches
//! of `--batch`, fresh random keys, 16-byte values, 1 h expiration); sequential store/get
//! p50/p99; resident memory (VmRSS) of every server process.
//!
//! Run: `cargo bench -p kwaai-cli --bench dht_swarm -- [--nodes 10] [--ops 1000] [--batch 100] [--seq-ops 1000]`
//! Last stdout line: one JSON object.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kwaai_core::dht::{dht_time, DhtConfig, StoreItem};
use kwaai_core::{Node, NodeConfig};
use rmpv::Value;

struct Server {
    child: Child,
    addr: String,
    startup: Duration,
    /// The server's own KWAAINET_HOME (each node holds the lock of its home).
    _home: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(initial_peer: Option<&str>) -> Server {
    let started = Instant::now();
    let home = tempfile::tempdir().expect("a temporary KWAAINET_HOME");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kwaainet"));
    command
        .args(["start", "--host-maddrs", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "warn")
        .env("KWAAINET_HOME", home.path());
    if let Some(peer) = initial_peer {
        command.args(["--initial-peers", peer]);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn kwaainet");
    let stdout = child.stdout.take().expect("stdout");
    let mut addr = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("kwaainet output");
        if let Some(a) = line.strip_prefix("listening on: ") {
            addr = Some(a.to_owned());
        }
        if line.starts_with("press Ctrl-C") {
            break;
        }
    }
    let addr = addr.expect("kwaainet printed its address");
    Server { child, addr, startup: started.elapsed(), _home: home }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

fn random_key() -> Value {
    Value::Binary((0..16).map(|_| rand::random::<u8>()).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (nodes, ops, batch, seq_ops) = (
        arg(&args, "--nodes", 10),
        arg(&args, "--ops", 1000),
        arg(&args, "--batch", 100),
        arg(&args, "--seq-ops", 1000),
    );

    let first = spawn_server(None);
    let bootstrap = first.addr.clone();
    let mut servers = vec![first];
    for _ in 1..nodes {
        servers.push(spawn_server(Some(&bootstrap)));
    }
    let startups: Vec<f64> = servers.iter().map(|s| s.startup.as_secs_f64()).collect();

    // A value stored before the client joins, for its time to first successful get.
    let writer = Node::start(NodeConfig { initial_peers: vec![bootstrap.clone()], ..NodeConfig::default() }).unwrap();
    let expiration = dht_time() + 3600.0;
    assert!(writer.dht_store(Value::from("warm-up"), None, Value::from(1), expiration).unwrap());
    writer.shutdown();

    let client_started = Instant::now();
    let client = Node::start(NodeConfig {
        initial_peers: vec![bootstrap.clone()],
        // As the Python script's client: no local cache, so every get is a network lookup.
        dht: DhtConfig { client_mode: true, cache_locally: false, cache_on_store: false, ..DhtConfig::default() },
        ..NodeConfig::default()
    })
    .unwrap();
    let client_start = client_started.elapsed().as_secs_f64();
    while client.dht_get(Value::from("warm-up"), false).unwrap().is_none() {}
    let client_first_get = client_started.elapsed().as_secs_f64();

    let dht = client.dht().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let value = || Value::Binary((0..16).map(|_| rand::random::<u8>()).collect());

    let keys: Vec<Value> = (0..ops).map(|_| random_key()).collect();
    let t = Instant::now();
    for chunk in keys.chunks(batch) {
        let items =
            chunk.iter().map(|k| StoreItem { key: k.clone(), subkey: None, value: value(), expiration }).collect();
        let ok = runtime.block_on(dht.store_many(items)).unwrap();
        assert!(ok.iter().all(|o| *o), "every store succeeds");
    }
    let store_ops = ops as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in keys.chunks(batch) {
        let found = runtime.block_on(dht.get_many(chunk.to_vec(), false)).unwrap();
        assert!(found.iter().all(Option::is_some), "every get finds its key");
    }
    let get_ops = ops as f64 / t.elapsed().as_secs_f64();

    let seq_keys: Vec<Value> = (0..seq_ops).map(|_| random_key()).collect();
    let mut store_ms = Vec::new();
    for key in &seq_keys {
        let t = Instant::now();
        assert!(client.dht_store(key.clone(), None, value(), expiration).unwrap());
        store_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut get_ms = Vec::new();
    for key in &seq_keys {
        let t = Instant::now();
        assert!(client.dht_get(key.clone(), false).unwrap().is_some());
        get_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    store_ms.sort_by(f64::total_cmp);
    get_ms.sort_by(f64::total_cmp);
    let rss: Vec<f64> = servers.iter().map(|s| rss_mib(s.child.id())).collect();

    let result = serde_json::json!({
        "nodes": nodes,
        "server_startup_s": {"mean": startups.iter().sum::<f64>() / startups.len() as f64, "max": startups.iter().cloned().fold(0.0, f64::max)},
        "client_startup_s": client_start,
        "client_first_get_s": client_first_get,
        "concurrent_ops_per_s": {"store": store_ops, "get": get_ops, "batch": batch, "ops": ops},
        "sequential_ms": {
            "store_p50": percentile(&store_ms, 0.5), "store_p99": percentile(&store_ms, 0.99),
            "get_p50": percentile(&get_ms, 0.5), "get_p99": percentile(&get_ms, 0.99),
        },
        "server_rss_mib": {"mean": rss.iter().sum::<f64>() / rss.len() as f64, "max": rss.iter().cloned().fold(0.0, f64::max)},
    });
    eprintln!("{}", serde_json::to_string_pretty(&result).unwrap());
    println!("{result}");
    client.shutdown();
}
