//! `kwaainet start`: the node itself, in the foreground or as the background process.

use std::io::Write;
use std::time::Duration;

use kwaai_core::dht::DhtConfig;
use kwaai_core::{Node, NodeConfig};

use crate::args::StartArgs;
use crate::config::Config;
use crate::daemon::{self, Lock};
use crate::failure::Failure;
use crate::paths::Home;
use crate::serve::{serve_model, ServeArgs};
use crate::status::{unix_now, StatusFile};

/// How often the running node refreshes its status file.
const STATUS_PERIOD: Duration = Duration::from_secs(10);

/// The configuration file overridden by the flags of `args`, validated.
pub fn effective_config(home: &Home, args: &StartArgs) -> Result<Config, Failure> {
    let mut config = Config::load(&home.config_file())?;
    args.node.apply_to(&mut config);
    args.serve.apply_to(&mut config);
    config.validate().map_err(|(_, message)| Failure::usage(message))?;
    if let Some(serve) = ServeArgs::from_config(&config) {
        serve.check_model()?;
    } else if args.serve != ServeArgs::default() {
        return Err(Failure::usage("--num-blocks, --block-indices, --dht-prefix and --throughput need --model"));
    }
    Ok(config)
}

/// Fails with one line if a fixed TCP or UDP port of `host_maddrs` is taken. (The node's listeners share
/// ports with each other, so a port held by another program would otherwise go unnoticed.)
pub fn check_ports_free(host_maddrs: &[String]) -> Result<(), Failure> {
    for maddr in host_maddrs {
        let parts: Vec<&str> = maddr.split('/').collect();
        let (ip, protocol, port) = match parts.as_slice() {
            ["", "ip4" | "ip6", ip, protocol @ ("tcp" | "udp"), port, ..] => (*ip, *protocol, *port),
            _ => continue,
        };
        let (Ok(ip), Ok(port)) = (ip.parse::<std::net::IpAddr>(), port.parse::<u16>()) else { continue };
        if port == 0 {
            continue;
        }
        let bound = match protocol {
            "tcp" => std::net::TcpListener::bind((ip, port)).map(drop),
            _ => std::net::UdpSocket::bind((ip, port)).map(drop),
        };
        if let Err(e) = bound {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(Failure::new(format!("port {port} of {maddr} is already in use")));
            }
            return Err(Failure::new(format!("cannot listen on {maddr}: {e}")));
        }
    }
    Ok(())
}

/// The node settings of an effective configuration.
pub fn node_config(config: &Config) -> NodeConfig {
    NodeConfig {
        listen_addrs: config.host_maddrs.clone(),
        identity_path: config.identity_path.clone(),
        initial_peers: config.initial_peers.clone(),
        dht: DhtConfig { client_mode: config.client_mode, ..DhtConfig::default() },
        ..NodeConfig::default()
    }
}

/// The arguments to run the same node again (without --daemon), for the background process and restart.
pub fn rerun_args(argv: &[String]) -> Vec<String> {
    argv.iter().skip(1).filter(|a| *a != "--daemon" && *a != "--daemon-child").cloned().collect()
}

/// `kwaainet start --daemon`: starts the background node and reports it.
pub fn start_daemon(home: &Home, args: &StartArgs, argv: &[String]) -> Result<(), Failure> {
    effective_config(home, args)?;
    let status = daemon::spawn(home, &rerun_args(argv))?;
    print_started(&status);
    println!("running in the background (pid {}); log: {}", status.pid, home.log_file().display());
    Ok(())
}

fn print_started(status: &StatusFile) {
    println!("peer id: {}", status.peer_id);
    for addr in &status.listen_addrs {
        println!("listening on: {addr}");
    }
}

/// Runs the node until SIGINT or SIGTERM, holding the lock and keeping the status file fresh.
pub fn run_foreground(home: &Home, args: &StartArgs, argv: &[String]) -> Result<(), Failure> {
    let config = effective_config(home, args)?;
    let _lock = Lock::acquire(home)?;
    check_ports_free(&config.host_maddrs)?;
    let node = Node::start(node_config(&config))?;
    let dht = node.dht()?;
    let mut server = match ServeArgs::from_config(&config) {
        Some(serve) => Some(serve_model(&node, &serve)?),
        None => None,
    };
    let served = server.as_ref().map(|(_, span)| span.clone());
    let started_at = unix_now();
    let mut status = StatusFile {
        pid: std::process::id(),
        version: kwaai_core::VERSION.to_owned(),
        peer_id: node.peer_id().to_string(),
        dht_node_id: dht.node_id().to_string(),
        listen_addrs: node.listen_addrs().iter().map(ToString::to_string).collect(),
        started_at,
        updated_at: started_at,
        dht_peers: dht.routing_table_len(),
        served_blocks: served,
        active_sessions: server.as_ref().map(|(s, _)| s.active_sessions() as u64),
        args: rerun_args(argv),
        config,
    };
    status.write(home)?;
    tracing::info!(peer_id = %status.peer_id, addrs = ?status.listen_addrs, "node running");
    print_started(&status);
    println!("press Ctrl-C to stop");
    std::io::stdout().flush().map_err(|e| Failure::io("writing to stdout", e))?;
    let signal = wait_for_stop(|| {
        status.updated_at = unix_now();
        status.dht_peers = dht.routing_table_len();
        status.active_sessions = server.as_ref().map(|(s, _)| s.active_sessions() as u64);
        if let Err(e) = status.write(home) {
            tracing::warn!("{e}");
        }
    })?;
    tracing::info!(signal, "stopping");
    if let Some((mut server, _)) = server.take() {
        server.shutdown();
    }
    node.shutdown();
    println!("stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM, calling `tick` every [`STATUS_PERIOD`]; returns the signal's name.
fn wait_for_stop(mut tick: impl FnMut()) -> Result<&'static str, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::io("starting the signal runtime", e))?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::io("waiting for SIGTERM", e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::io("waiting for SIGINT", e))?;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + STATUS_PERIOD, STATUS_PERIOD);
        loop {
            tokio::select! {
                _ = term.recv() => return Ok("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = ticks.tick() => tick(),
            }
        }
    })
}
