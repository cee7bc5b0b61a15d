//! Start a node, print its peer ID and multiaddrs, stop it: `cargo run --example start_node`.

use kwaai_core::{Node, NodeConfig};

fn main() -> kwaai_core::Result<()> {
    let node = Node::start(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() })?;
    println!("peer id: {}", node.peer_id());
    for addr in node.listen_addrs() {
        println!("listening on: {addr}");
    }
    node.shutdown();
    Ok(())
}
