//! The status file the running node writes, and `kwaainet status`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::args::StatusArgs;
use crate::config::Config;
use crate::daemon;
use crate::failure::Failure;
use crate::paths::Home;
use crate::serve::ServedSpan;
use crate::visibility::{check_visibility, Visibility};

/// Exit code of `kwaainet status` when no node is running (as LSB init scripts use).
pub const EXIT_NOT_RUNNING: u8 = 3;

/// What the running node says about itself; rewritten while it runs, removed when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// The node's process ID.
    pub pid: u32,
    /// kwaainet's version.
    pub version: String,
    /// The node's peer ID.
    pub peer_id: String,
    /// The node's DHT ID for this run, `0x` + 40 hex digits.
    pub dht_node_id: String,
    /// Where the node listens, each ending in /p2p/<peer id>.
    pub listen_addrs: Vec<String>,
    /// Unix time the node started.
    pub started_at: u64,
    /// Unix time of the last update.
    pub updated_at: u64,
    /// Nodes in the DHT routing table at the last update.
    pub dht_peers: usize,
    /// The blocks served, if any.
    pub served_blocks: Option<ServedSpan>,
    /// Inference sessions open now (servers only).
    pub active_sessions: Option<u64>,
    /// The arguments the node was started with (for `kwaainet restart`).
    pub args: Vec<String>,
    /// The effective configuration: the file overridden by the flags.
    pub config: Config,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl StatusFile {
    /// Reads the status file of `home`.
    pub fn read(home: &Home) -> Result<StatusFile, Failure> {
        let path = home.status_file();
        let text = std::fs::read_to_string(&path).map_err(|e| Failure::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| Failure::new(format!("{}: {e}", path.display())))
    }

    /// Writes the status file atomically (a reader never sees half of it).
    pub fn write(&self, home: &Home) -> Result<(), Failure> {
        let path = home.status_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| Failure::new(format!("encoding the status: {e}")))?;
        std::fs::write(&tmp, text).map_err(|e| Failure::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Failure::io(format!("writing {}", path.display()), e))
    }
}

/// `kwaainet status`: prints the running node's status and checks that the swarm sees it.
pub fn run(home: &Home, args: &StatusArgs) -> Result<u8, Failure> {
    if !daemon::is_running(home) {
        if args.json {
            println!("{}", serde_json::json!({ "state": "stopped" }));
        } else {
            println!("state: stopped (no node running from {})", home.root().display());
        }
        return Ok(EXIT_NOT_RUNNING);
    }
    let status = StatusFile::read(home)?;
    let visibility = if args.no_check {
        None
    } else {
        Some(check_visibility(&status, Duration::from_secs_f64(args.timeout.max(0.1))))
    };
    if args.json {
        let mut value = serde_json::to_value(&status).map_err(|e| Failure::new(e.to_string()))?;
        value["state"] = "running".into();
        if let Some(v) = &visibility {
            value["swarm"] = serde_json::json!({ "state": v.label(), "detail": v.detail() });
        }
        println!("{value}");
        return Ok(0);
    }
    println!("state: running (pid {})", status.pid);
    println!("peer id: {}", status.peer_id);
    for addr in &status.listen_addrs {
        println!("address: {addr}");
    }
    println!("dht node id: {}", status.dht_node_id);
    println!("dht peers known: {}", status.dht_peers);
    println!("uptime: {}s", unix_now().saturating_sub(status.started_at));
    match &status.served_blocks {
        Some(span) => println!("served blocks: {}:{} under {}", span.start, span.end, span.dht_prefix),
        None => println!("served blocks: none"),
    }
    match status.active_sessions {
        Some(n) => println!("active sessions: {n}"),
        None => println!("active sessions: none (not serving)"),
    }
    if let Some(v) = visibility {
        println!("swarm: {} ({})", v.label(), v.detail());
        if !matches!(v, Visibility::Online(_)) {
            return Ok(1);
        }
    }
    Ok(0)
}
