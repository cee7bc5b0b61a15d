//! `push_tensor` throughput between two kwaai nodes on loopback against a raw TCP copy of the
//! same bytes on loopback, measured in the same run.
//!
//! Run: `cargo bench -p kwaai-core --bench tensor_exchange` (a release build). Both nodes live in
//! this process; each push of a 256 MiB float32 tensor (NONE codec, streamed in 4 MiB parts)
//! counts from the call until the receiver's handler has the decoded tensor and the sender has
//! the reply. The TCP copy writes the same 256 MiB through a loopback socket to a thread that
//! reads it into one buffer. One warm-up each, then 3 runs; the best run of each is reported.
//! MB/s = 1e6 bytes/s. Prints one JSON line with both figures and their ratio.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kwaai_core::tensor::{DType, DecodeLimits, Tensor};
use kwaai_core::{Compression, Node, NodeConfig};

const BYTES: usize = 256 << 20;
const RUNS: usize = 3;
const T: Duration = Duration::from_secs(300);

fn start_node() -> Node {
    Node::start(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() })
        .expect("node starts")
}

fn push_seconds(tensor: &Tensor) -> f64 {
    let (a, b) = (start_node(), start_node());
    let (tx, rx) = mpsc::channel();
    b.set_tensor_handler(DecodeLimits::default(), move |received| {
        let _ = tx.send(received.tensor.numel());
        Ok(())
    })
    .expect("handler");
    a.connect(&b.listen_addrs()[0].to_string(), T).expect("connect");
    let mut best = f64::INFINITY;
    for run in 0..=RUNS {
        let start = Instant::now();
        a.push_tensor(b.peer_id(), "bench", tensor, Compression::default(), T).expect("push");
        assert_eq!(rx.recv_timeout(T).expect("received"), tensor.numel());
        if run > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    best
}

fn tcp_seconds(bytes: &[u8]) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let len = bytes.len();
    let reader = std::thread::spawn(move || {
        for _ in 0..=RUNS {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut buffer = vec![0u8; len];
            socket.read_exact(&mut buffer).expect("read");
            socket.write_all(&[1]).expect("ack");
        }
    });
    let mut best = f64::INFINITY;
    for run in 0..=RUNS {
        let start = Instant::now();
        let mut socket = TcpStream::connect(addr).expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        socket.write_all(bytes).expect("write");
        let mut ack = [0u8; 1];
        socket.read_exact(&mut ack).expect("ack");
        if run > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    reader.join().expect("reader");
    best
}

fn main() {
    let numel = (BYTES / 4) as u32;
    let bytes: Vec<u8> = (0..numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let tensor = Tensor::from_bytes(DType::F32, vec![BYTES / 4], &bytes).expect("tensor");
    let push = push_seconds(&tensor);
    let tcp = tcp_seconds(&bytes);
    let mbps = |s: f64| BYTES as f64 / s / 1e6;
    println!(
        "{{\"bench\": \"tensor_exchange\", \"bytes\": {BYTES}, \"push_tensor_mb_s\": {:.1}, \"raw_tcp_mb_s\": {:.1}, \
         \"push_over_tcp\": {:.3}}}",
        mbps(push),
        mbps(tcp),
        tcp / push
    );
}
