//! Hivemind RPC on loopback, Rust <-> Rust, measured like `../shared/reference/bench/rpc.py`
//! measures Python <-> Python (hivemind over p2pd), so that the two can be compared.
//!
//! Run: `cargo bench -p kwaai-core --bench rpc` (a release build). The server node runs in a child
//! process (this binary re-run with `KWAAI_RPC_BENCH_SERVER=1`) and registers:
//!   `echo`   unary, returns the request unchanged (payload travels both ways);
//!   `sink`   streaming input, replies once with the number of bytes received;
//!   `source` one request "COUNT,SIZE", replies with COUNT messages of SIZE bytes.
//! Measured on the client: the machine's loopback floor (`tcp_floor_64B`: 64 B echoed over a plain
//! TCP socket between the same two processes), unary echo p50/p99 for 64 B (2000 calls after 200 warm-up) and 1 MiB
//! (100 after 10), and streaming throughput for 64 MiB in 1 MiB messages each way (one 8 MiB
//! warm-up, then 5 runs: best and median). MB/s = 1e6 bytes/s of payload. Prints one JSON line.
//! A filter argument (`cargo bench -p kwaai-core --bench rpc -- unary_64B`) runs only the parts
//! whose name contains it; `KWAAI_RPC_BENCH_WORKERS=N` gives both nodes N runtime worker threads;
//! `KWAAI_RPC_BENCH_SECURITY=tls` or `noise` picks the connection's security (by default, the
//! client proposes `Security::default_order()`: TLS first where the CPU has AES instructions) and
//! `KWAAI_RPC_BENCH_LISTEN=/ip4/127.0.0.1/udp/0/quic-v1` the server's listener (TCP by default).

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kwaai_core::p2p::Rpc;
use kwaai_core::{Node, NodeConfig, PeerId, Security};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(60);
const SERVER_ENV: &str = "KWAAI_RPC_BENCH_SERVER";
/// Worker threads of both nodes' runtimes (the default is `NodeConfig`'s).
const WORKERS_ENV: &str = "KWAAI_RPC_BENCH_WORKERS";
/// The security protocol both nodes speak: `noise` or `tls`.
const SECURITY_ENV: &str = "KWAAI_RPC_BENCH_SECURITY";
/// The server's listen address.
const LISTEN_ENV: &str = "KWAAI_RPC_BENCH_LISTEN";

fn start_node() -> Node {
    let worker_threads = std::env::var(WORKERS_ENV).ok().map(|w| w.parse().expect("a number of worker threads"));
    let security = match std::env::var(SECURITY_ENV).as_deref() {
        Ok("tls") => vec![Security::Tls],
        Ok("noise") => vec![Security::Noise],
        Err(_) => Security::default_order(),
        Ok(other) => panic!("{SECURITY_ENV} is `noise` or `tls`, not {other:?}"),
    };
    let listen = std::env::var(LISTEN_ENV).unwrap_or_else(|_| "/ip4/127.0.0.1/tcp/0".into());
    Node::start(NodeConfig { listen_addrs: vec![listen], worker_threads, security, ..NodeConfig::default() })
        .expect("node starts")
}

fn serve() {
    let node = start_node();
    node.add_unary_handler("echo", |_, request| async move { Ok(request) }).unwrap();
    node.add_stream_handler("sink", |_, requests| {
        futures::stream::once(async move {
            let mut total = 0usize;
            let mut requests = requests;
            while let Some(request) = requests.next().await {
                total += request?.len();
            }
            Ok(total.to_string().into_bytes())
        })
    })
    .unwrap();
    node.add_stream_handler("source", |_, mut requests| {
        async_stream(async move {
            let request = requests.next().await.ok_or_else(|| kwaai_core::Error::invalid_argument("no request"))??;
            let text = String::from_utf8_lossy(&request).into_owned();
            let (count, size) = text
                .split_once(',')
                .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
                .ok_or_else(|| kwaai_core::Error::invalid_argument("want COUNT,SIZE"))?;
            Ok((count, vec![0x5a; size]))
        })
    })
    .unwrap();
    let floor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{} {}", node.listen_addrs()[0], floor.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    std::thread::spawn(move || serve_tcp_echo(floor));
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line); // until the client closes our stdin
}

/// Yields `count` copies of the payload the setup future returns.
fn async_stream(
    setup: impl std::future::Future<Output = kwaai_core::Result<(usize, Vec<u8>)>> + Send + 'static,
) -> futures::stream::BoxStream<'static, kwaai_core::Result<Vec<u8>>> {
    futures::stream::once(setup)
        .flat_map(|setup| match setup {
            Ok((count, payload)) => futures::stream::iter((0..count).map(move |_| Ok(payload.clone()))).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        })
        .boxed()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

/// Echoes whatever its one client sends, over plain TCP with blocking I/O: the round-trip floor.
fn serve_tcp_echo(listener: std::net::TcpListener) {
    let Ok((mut socket, _)) = listener.accept() else { return };
    socket.set_nodelay(true).unwrap();
    let mut buffer = vec![0u8; 1 << 16];
    while let Ok(n @ 1..) = socket.read(&mut buffer) {
        if socket.write_all(&buffer[..n]).is_err() {
            return;
        }
    }
}

/// The loopback round-trip floor of this machine: `size` bytes each way over a plain TCP socket
/// with blocking I/O between the same two processes (no encryption, muxing or runtime).
fn tcp_floor(addr: &str, size: usize, calls: usize, warmup: usize) -> serde_json::Value {
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_nodelay(true).unwrap();
    let request = vec![0x5au8; size];
    let mut reply = vec![0u8; size];
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let start = Instant::now();
        socket.write_all(&request).unwrap();
        socket.read_exact(&mut reply).unwrap();
        if i >= warmup {
            latencies.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    serde_json::json!({ "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99), "calls": calls })
}

/// Runs `work` as a task on the client node's runtime, as `rpc.py` runs its calls in its event
/// loop, and waits for its result.
fn on_client<T: Send + 'static, F: Future<Output = T> + Send + 'static>(node: &Node, work: impl FnOnce(Rpc) -> F) -> T {
    let runtime = node.runtime().unwrap();
    runtime.block_on(runtime.spawn(work(node.rpc().unwrap()))).unwrap()
}

/// Unary echo calls made one after another.
fn unary(node: &Node, peer: PeerId, size: usize, calls: usize, warmup: usize) -> serde_json::Value {
    let request: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut latencies = on_client(node, |rpc| async move {
        let mut latencies = Vec::with_capacity(calls);
        for i in 0..warmup + calls {
            let start = Instant::now();
            let reply = rpc.call_unary(peer, "echo", request.clone(), T).await.unwrap();
            if i >= warmup {
                latencies.push(start.elapsed().as_secs_f64() * 1e3);
            }
            assert_eq!(reply.len(), size);
        }
        latencies
    });
    let mean = latencies.iter().sum::<f64>() / calls as f64;
    latencies.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99), "mean_ms": mean, "calls": calls,
    })
}

/// Streams `messages` MiB to `sink`.
fn upload(node: &Node, peer: PeerId, messages: usize) -> f64 {
    let requests = vec![vec![0xa5u8; MIB]; messages];
    let (elapsed, replies) = on_client(node, |rpc| async move {
        let start = Instant::now();
        let mut replies = rpc.call_stream(peer, "sink", futures::stream::iter(requests), T).await.unwrap();
        let mut got = Vec::new();
        while let Some(reply) = replies.next().await {
            got.push(reply.unwrap());
        }
        (start.elapsed().as_secs_f64(), got)
    });
    assert_eq!(replies, vec![(messages * MIB).to_string().into_bytes()]);
    elapsed
}

/// Receives `messages` MiB from `source`, counting each message and letting it go, as `rpc.py`
/// does.
fn download(node: &Node, peer: PeerId, messages: usize) -> f64 {
    let (elapsed, total) = on_client(node, |rpc| async move {
        let start = Instant::now();
        let request = futures::stream::iter([format!("{messages},{MIB}").into_bytes()]);
        let mut replies = rpc.call_stream(peer, "source", request, T).await.unwrap();
        let mut total = 0;
        while let Some(reply) = replies.next().await {
            total += reply.unwrap().len();
        }
        (start.elapsed().as_secs_f64(), total)
    });
    assert_eq!(total, messages * MIB);
    elapsed
}

fn throughput(mut run: impl FnMut(usize) -> f64, mib: usize, repeats: usize) -> serde_json::Value {
    run(8);
    let mut seconds: Vec<f64> = (0..repeats).map(|_| run(mib)).collect();
    seconds.sort_by(f64::total_cmp);
    let mb = (mib * MIB) as f64 / 1e6;
    serde_json::json!({
        "mib": mib, "msg_bytes": MIB, "seconds": seconds,
        "best_MBps": mb / seconds[0], "median_MBps": mb / seconds[seconds.len() / 2],
    })
}

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        return serve();
    }
    // `cargo bench` passes `--bench`; a filter argument (e.g. `unary_64B`, to profile one part)
    // runs only the parts whose name contains it.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_default();
    let wanted = |part: &str| part.contains(filter.as_str());
    let exe = std::env::current_exe().unwrap();
    let mut server = Command::new(exe)
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let (addr, floor_addr) = line.trim().split_once(' ').expect("the server's two addresses");
    let client = start_node();
    let info = client.connect(addr, T).expect("client connects");
    let peer = info.peer_id;
    let started = Instant::now();
    let mut result = serde_json::json!({ "bench": "rpc_rust", "mode": "separate_processes" });
    let parts: [(&str, &dyn Fn() -> serde_json::Value); 5] = [
        ("tcp_floor_64B", &|| tcp_floor(floor_addr, 64, 2000, 200)),
        ("unary_64B", &|| unary(&client, peer, 64, 2000, 200)),
        ("unary_1MiB", &|| unary(&client, peer, MIB, 100, 10)),
        ("stream_upload", &|| throughput(|n| upload(&client, peer, n), 64, 5)),
        ("stream_download", &|| throughput(|n| download(&client, peer, n), 64, 5)),
    ];
    for (name, run) in parts.into_iter().filter(|(name, _)| wanted(name)) {
        let figures = run();
        eprintln!("{name}: {figures}");
        result[name] = figures;
    }
    result["total_seconds"] = started.elapsed().as_secs_f64().into();
    println!("{result}");
    drop(server.stdin.take());
    let _ = server.wait();
}
