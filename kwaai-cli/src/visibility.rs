//! Does the swarm see the node? A fresh client-mode node joins through the node's initial peers
//! and looks for it: a plain DHT node must be found by a DHT lookup of its node ID; a server must
//! be announced ONLINE under every block it serves.

use std::time::{Duration, Instant};

use kwaai_core::dht::{DhtConfig, DhtId, DhtValue};
use kwaai_core::server::{block_uid, ServerInfo, ServerState};
use kwaai_core::{Node, NodeConfig};

use crate::status::StatusFile;

/// The pause between two lookups of one check.
const LOOKUP_RETRY: Duration = Duration::from_millis(250);

/// The answer of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Visibility {
    /// The swarm sees the node; how it was seen.
    Online(String),
    /// The swarm was reached but does not see the node; what was missing.
    NotVisible(String),
    /// No entry point into the swarm answered.
    Unreachable(String),
    /// A client-mode node is never listed in the DHT, by design.
    ClientMode,
}

impl Visibility {
    /// One word for the state: ONLINE, NOT_VISIBLE, UNREACHABLE or CLIENT_MODE.
    pub fn label(&self) -> &'static str {
        match self {
            Visibility::Online(_) => "ONLINE",
            Visibility::NotVisible(_) => "NOT_VISIBLE",
            Visibility::Unreachable(_) => "UNREACHABLE",
            Visibility::ClientMode => "CLIENT_MODE",
        }
    }

    /// The details, one line.
    pub fn detail(&self) -> String {
        match self {
            Visibility::Online(d) | Visibility::NotVisible(d) | Visibility::Unreachable(d) => d.clone(),
            Visibility::ClientMode => "a client-mode node asks the DHT but is not listed in it".to_owned(),
        }
    }
}

/// Where the check enters the swarm: the node's initial peers, or, for the first node of a swarm,
/// the node itself (an unspecified listen address is reached through loopback; its WebRTC-direct
/// addresses, which only browsers dial, are left out).
pub fn entry_points(status: &StatusFile) -> Vec<String> {
    if !status.config.initial_peers.is_empty() {
        return status.config.initial_peers.clone();
    }
    status
        .listen_addrs
        .iter()
        .filter(|a| !a.contains("/webrtc-direct"))
        .map(|a| a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/").replace("/ip6/::/", "/ip6/::1/"))
        .collect()
}

fn parse_dht_id(text: &str) -> Option<DhtId> {
    let hex = text.strip_prefix("0x")?;
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    DhtId::from_slice(&bytes?).ok()
}

/// Checks, within about `timeout`, whether the swarm sees the node that wrote `status`.
pub fn check_visibility(status: &StatusFile, timeout: Duration) -> Visibility {
    if status.config.client_mode {
        return Visibility::ClientMode;
    }
    let entry = entry_points(status);
    let config = NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: entry.clone(),
        dht: DhtConfig { client_mode: true, ..DhtConfig::default() },
        worker_threads: Some(1),
        start_timeout: timeout,
        ..NodeConfig::default()
    };
    let checker = match Node::start(config) {
        Ok(node) => node,
        Err(e) => {
            return Visibility::Unreachable(format!("no entry point answered ({}): {}", entry.join(", "), e.message()))
        }
    };
    let through = format!("through {}", entry.join(", "));
    let result = match &status.served_blocks {
        Some(span) => {
            // The checker's routing table fills in the background: a missing record is read again
            // until the deadline; a record in another state is a definite answer.
            let deadline = Instant::now() + timeout;
            loop {
                let seen = check_server(&checker, status, span.start..span.end, &span.dht_prefix, &through);
                let missing =
                    matches!(&seen, Visibility::NotVisible(why) if why.ends_with("is not announced by this node"));
                if !missing || Instant::now() + LOOKUP_RETRY >= deadline {
                    break seen;
                }
                std::thread::sleep(LOOKUP_RETRY);
            }
        }
        None => check_dht_node(&checker, status, timeout, &through),
    };
    checker.shutdown();
    result
}

fn check_dht_node(checker: &Node, status: &StatusFile, timeout: Duration, through: &str) -> Visibility {
    let Some(target) = parse_dht_id(&status.dht_node_id) else {
        return Visibility::NotVisible(format!("bad DHT node id {:?} in the status file", status.dht_node_id));
    };
    let dht = match checker.dht() {
        Ok(dht) => dht,
        Err(e) => return Visibility::Unreachable(e.message().to_owned()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Visibility::Unreachable(format!("starting the check's runtime: {e}")),
    };
    // The routing table fills in the background after joining: look again until the deadline.
    let deadline = Instant::now() + timeout;
    let mut lookups = 0;
    let mut answered = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let found = runtime.block_on(async { tokio::time::timeout(left, dht.find_nearest_nodes(target, 20)).await });
        lookups += 1;
        match found {
            Ok(nodes) if nodes.iter().any(|(id, peer)| *id == target && peer.to_string() == status.peer_id) => {
                return Visibility::Online(format!("a DHT lookup {through} found node {}", status.dht_node_id));
            }
            Ok(nodes) => answered = answered.max(nodes.len()),
            Err(_) => {}
        }
        if Instant::now() + LOOKUP_RETRY >= deadline {
            return Visibility::NotVisible(format!(
                "{lookups} DHT lookups {through} did not find node {} (at most {answered} other nodes answered)",
                status.dht_node_id
            ));
        }
        std::thread::sleep(LOOKUP_RETRY);
    }
}

fn check_server(
    checker: &Node,
    status: &StatusFile,
    blocks: std::ops::Range<u32>,
    prefix: &str,
    through: &str,
) -> Visibility {
    let keys: Vec<rmpv::Value> = blocks.clone().map(|b| rmpv::Value::from(block_uid(prefix, b))).collect();
    let found = match checker.dht_get_many(keys, true) {
        Ok(found) => found,
        Err(e) => return Visibility::Unreachable(format!("reading the block records {through}: {}", e.message())),
    };
    for (block, value) in blocks.clone().zip(found) {
        let state = match value {
            Some(DhtValue::Dictionary { entries, .. }) => entries
                .iter()
                .find(|e| e.subkey.as_str() == Some(status.peer_id.as_str()))
                .and_then(|e| ServerInfo::from_value(&e.value).ok())
                .map(|info| info.state),
            _ => None,
        };
        match state {
            Some(ServerState::Online) => {}
            Some(other) => {
                return Visibility::NotVisible(format!("block {} is announced {other:?}", block_uid(prefix, block)))
            }
            None => {
                return Visibility::NotVisible(format!(
                    "block {} is not announced by this node",
                    block_uid(prefix, block)
                ))
            }
        }
    }
    Visibility::Online(format!("blocks {prefix}.{}..{} announced ONLINE, read {through}", blocks.start, blocks.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::serve::ServedSpan;
    use kwaai_core::server::{Announcement, Announcer, Span};

    fn loopback_node(initial_peers: Vec<String>) -> Node {
        Node::start(NodeConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
            initial_peers,
            ..NodeConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_first_node_is_entered_through_its_tcp_and_websocket_addresses() {
        let node = loopback_node(Vec::new());
        let mut status = status_of(&node, Vec::new(), None);
        let peer = node.peer_id();
        status.listen_addrs = vec![
            format!("/ip4/0.0.0.0/tcp/4001/p2p/{peer}"),
            format!("/ip4/0.0.0.0/tcp/4002/ws/p2p/{peer}"),
            format!("/ip4/0.0.0.0/udp/4003/webrtc-direct/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g/p2p/{peer}"),
        ];
        let expected =
            [format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}"), format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{peer}")];
        assert_eq!(entry_points(&status), expected);
    }

    fn status_of(node: &Node, initial_peers: Vec<String>, served: Option<ServedSpan>) -> StatusFile {
        StatusFile {
            pid: std::process::id(),
            version: kwaai_core::VERSION.to_owned(),
            peer_id: node.peer_id().to_string(),
            dht_node_id: node.dht().unwrap().node_id().to_string(),
            listen_addrs: node.listen_addrs().iter().map(ToString::to_string).collect(),
            started_at: 0,
            updated_at: 0,
            dht_peers: 0,
            served_blocks: served,
            active_sessions: Some(0),
            args: Vec::new(),
            config: Config { initial_peers, ..Config::default() },
        }
    }

    #[test]
    fn a_server_is_online_while_each_served_block_is_announced_online() {
        let first = loopback_node(Vec::new());
        let entry = vec![first.listen_addrs()[0].to_string()];
        let server = loopback_node(entry.clone());
        let announcement = Announcement {
            dht_prefix: "kwaainet-check".into(),
            span: Span::new(0, 2).unwrap(),
            num_blocks: 4,
            info: ServerInfo::new(ServerState::Online, 10.0),
            update_period: Duration::from_secs(60),
            lifetime: None,
        };
        let announcer = Announcer::start(server.dht().unwrap(), server.peer_id(), announcement).unwrap();
        let span = |end| Some(ServedSpan { start: 0, end, dht_prefix: "kwaainet-check".into() });
        let timeout = Duration::from_secs(10);

        let online = check_visibility(&status_of(&server, entry.clone(), span(2)), timeout);
        assert_eq!(online.label(), "ONLINE", "{online:?}");
        let missing = check_visibility(&status_of(&server, entry.clone(), span(3)), timeout);
        assert_eq!(missing, Visibility::NotVisible("block kwaainet-check.2 is not announced by this node".into()));
        announcer.set_state(ServerState::Joining).unwrap();
        let joining = check_visibility(&status_of(&server, entry.clone(), span(2)), timeout);
        assert_eq!(joining, Visibility::NotVisible("block kwaainet-check.0 is announced Joining".into()));
        announcer.shutdown().unwrap();
    }

    #[test]
    fn dht_ids_parse_from_their_display_form() {
        let id = DhtId::random();
        assert_eq!(parse_dht_id(&id.to_string()), Some(id));
        assert_eq!(parse_dht_id("0x12"), None);
        assert_eq!(parse_dht_id("12"), None);
    }
}
