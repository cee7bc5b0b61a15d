//! Shared by the client tests: a tiny Llama, a loopback Petals swarm with one process per server
//! (tests/reference/client_swarm.py), transformers' greedy reference, and a client node.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use kwaai_core::client::{ClientConfig, ClientEvent};
use kwaai_core::dht::DhtConfig;
use kwaai_core::server::RPC_INFO;
use kwaai_core::wire::msgpack;
use kwaai_core::wire::runtime::{ExpertInfo, ExpertUid};
use kwaai_core::{Node, NodeConfig, PeerId};
use prost::Message;

use crate::common::{self, ReferenceProcess};

/// The DHT prefix the test swarms announce under.
pub const PREFIX: &str = "tiny-llama-hf";
/// Blocks of the tiny model.
pub const NUM_BLOCKS: u32 = 4;

fn shared_dir() -> PathBuf {
    std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| common::repo_root().join("../shared"))
}

/// Writes the tiny random Llama (4 blocks, hidden 64) into `dir`.
pub fn make_tiny_llama(dir: &Path) {
    let out = Command::new(common::reference_python())
        .arg(shared_dir().join("reference/make_tiny_model.py"))
        .arg(dir)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// transformers' greedy continuation of `prompt`: (prompt ids, `n` new tokens, EOS id).
pub fn local_greedy(dir: &Path, prompt: &str, n: usize) -> (Vec<u32>, Vec<u32>, u32) {
    let out = common::run_reference_script("client_greedy.py", &[&dir.to_string_lossy(), prompt, &n.to_string()], "");
    let json: serde_json::Value = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    let ids = |key: &str| -> Vec<u32> {
        json[key].as_array().expect("ids").iter().map(|v| v.as_u64().expect("an id") as u32).collect()
    };
    (ids("prompt_ids"), ids("tokens"), json["eos_token_id"].as_u64().expect("eos") as u32)
}

/// One server of a [`Swarm`].
#[derive(Debug, Clone)]
pub struct Server {
    /// Its peer ID.
    pub peer: PeerId,
    /// Its blocks.
    pub blocks: (u32, u32),
}

/// Python Petals servers on 127.0.0.1, each in its own process group; stopped on drop.
pub struct Swarm {
    process: ReferenceProcess,
    /// Multiaddrs of the bootstrap node.
    pub initial_peers: Vec<String>,
    /// The servers, in the order of their spans.
    pub servers: Vec<Server>,
}

impl Swarm {
    /// Starts a bootstrap node and one server per span (`"a:b"`), with working files in `workdir`.
    pub fn start(model: &Path, workdir: &Path, spans: &[&str]) -> Swarm {
        let swarm_py = shared_dir().join("reference/swarm.py");
        let (model, workdir) = (model.to_string_lossy().into_owned(), workdir.to_string_lossy().into_owned());
        let mut args = vec![swarm_py.to_str().expect("UTF-8 path"), &model, &workdir, PREFIX];
        args.extend(spans);
        let mut process = ReferenceProcess::start("client_swarm.py", &args);
        let ready = process.read_json();
        let initial_peers = ready["initial_peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p.as_str().expect("addr").into())
            .collect();
        let servers = ready["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .map(|s| Server {
                peer: s["peer_id"].as_str().expect("peer id").parse().expect("a peer ID"),
                blocks: (s["blocks"][0].as_u64().expect("start") as u32, s["blocks"][1].as_u64().expect("end") as u32),
            })
            .collect();
        Swarm { process, initial_peers, servers }
    }

    /// Kills `peer`'s server abruptly (SIGKILL to its process group) and waits until it is dead.
    pub fn kill(&mut self, peer: &PeerId) {
        self.process.send_line(&serde_json::json!({ "kill": peer.to_base58() }).to_string());
        let reply = self.process.read_json();
        assert_eq!(reply["killed"], peer.to_base58());
    }
}

/// A client node on 127.0.0.1 in DHT client mode (as Petals clients run), joined to `swarm`.
pub fn client_node(swarm: &Swarm) -> Node {
    Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: swarm.initial_peers.clone(),
        dht: DhtConfig { client_mode: true, ..DhtConfig::default() },
        ..NodeConfig::default()
    })
    .expect("the client node starts")
}

/// A client config for the tiny model that records every event into the returned list.
pub fn recording_config() -> (ClientConfig, Arc<Mutex<Vec<ClientEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let mut config = ClientConfig::new(PREFIX, NUM_BLOCKS);
    config.max_retries = Some(6);
    config.events = Some(Arc::new(move |e: &ClientEvent| sink.lock().expect("events").push(e.clone())));
    (config, events)
}

/// `cache_tokens_available` in `peer`'s `rpc_info`: falls while sessions hold attention caches.
pub fn cache_tokens_available(node: &Node, peer: PeerId) -> u64 {
    let request = ExpertUid { uid: String::new() }.encode_to_vec();
    let reply = node.call_unary(peer, RPC_INFO, &request, std::time::Duration::from_secs(10)).expect("rpc_info");
    let info = ExpertInfo::decode(reply.as_slice()).expect("ExpertInfo");
    let map = msgpack::unpack(&info.serialized_info).expect("msgpack");
    let entries = map.as_map().expect("a map");
    let (_, value) = entries.iter().find(|(k, _)| k.as_str() == Some("cache_tokens_available")).expect("the field");
    value.as_u64().expect("an integer")
}
