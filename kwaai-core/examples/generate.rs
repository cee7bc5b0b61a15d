//! Start a node, join a swarm, stream a generation:
//! `cargo run --example generate -- MODEL_DIR INITIAL_PEER` (a multiaddr ending in `/p2p/<peer id>` of
//! a swarm serving MODEL_DIR; `examples/with_swarm.sh` runs one on 127.0.0.1).

use std::io::Write;

use kwaai_core::client::DistributedModel;
use kwaai_core::dht::DhtConfig;
use kwaai_core::model::GenerationConfig;
use kwaai_core::{Node, NodeConfig};

fn main() -> kwaai_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, initial_peer] = args.as_slice() else {
        eprintln!("usage: generate MODEL_DIR INITIAL_PEER");
        std::process::exit(2);
    };
    let node = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![initial_peer.clone()],
        dht: DhtConfig { client_mode: true, ..DhtConfig::default() },
        ..NodeConfig::default()
    })?;
    // The model's embeddings and head load here; its blocks are found on the swarm.
    let model = DistributedModel::load(&node, model_dir.as_ref(), None, |_| {})?;
    print!("the old river ");
    let mut tokens = 0;
    for token in model.generate_text("the old river", GenerationConfig { max_new_tokens: 12, ..Default::default() })? {
        print!("{}", token?.text);
        std::io::stdout().flush().ok();
        tokens += 1;
    }
    println!("\n{tokens} tokens streamed");
    node.shutdown();
    Ok(())
}
