//! kwaainet: start and manage kwaai nodes from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kwaai_core::dht::DhtConfig;
use kwaai_core::{Node, NodeConfig};

#[derive(Parser)]
#[command(name = "kwaainet", version, about = "kwaai node manager")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node, print its multiaddrs and run until interrupted (Ctrl-C).
    Start {
        /// Multiaddr to listen on (repeatable).
        #[arg(long = "listen", default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: Vec<String>,
        /// Identity file (hivemind's format); created if missing.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// A peer to join the swarm through, `/ip4/.../tcp/.../p2p/<peer id>` (repeatable).
        #[arg(long = "initial-peer")]
        initial_peers: Vec<String>,
        /// Run the DHT in client mode: ask, but do not serve.
        #[arg(long)]
        client: bool,
    },
    /// Run the local demo swarm on 127.0.0.1 until interrupted.
    Demo,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start { listen, identity, initial_peers, client } => run_node(NodeConfig {
            listen_addrs: listen,
            identity_path: identity,
            initial_peers,
            dht: DhtConfig { client_mode: client, ..DhtConfig::default() },
            ..NodeConfig::default()
        }),
        Command::Demo => {
            run_node(NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], ..NodeConfig::default() })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kwaainet: {} error: {}", e.kind(), e.message());
            ExitCode::FAILURE
        }
    }
}

/// Starts a node, prints its peer ID and multiaddrs on stdout, and waits for Ctrl-C.
fn run_node(config: NodeConfig) -> kwaai_core::Result<()> {
    let node = Node::start(config)?;
    println!("peer id: {}", node.peer_id());
    for addr in node.listen_addrs() {
        println!("listening on: {addr}");
    }
    println!("press Ctrl-C to stop");
    // Let a parent that reads our output see it at once.
    std::io::Write::flush(&mut std::io::stdout())
        .map_err(|e| kwaai_core::Error::with_source(kwaai_core::ErrorKind::Io, "writing to stdout", e))?;
    wait_for_interrupt()?;
    node.shutdown();
    println!("stopped");
    Ok(())
}

fn wait_for_interrupt() -> kwaai_core::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| kwaai_core::Error::with_source(kwaai_core::ErrorKind::Io, "starting the signal runtime", e))?;
    runtime
        .block_on(tokio::signal::ctrl_c())
        .map_err(|e| kwaai_core::Error::with_source(kwaai_core::ErrorKind::Io, "waiting for Ctrl-C", e))
}
