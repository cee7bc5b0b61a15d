//! The node's life in a temporary HOME: setup, start --daemon, status, logs, restart, stop.

#[path = "../../kwaai-core/tests/common/mod.rs"]
mod common;
mod support;

use support::{process_exists, TestHome};

const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

/// Starts a first node (the swarm's entry point) in its own HOME; returns it and its address.
fn bootstrap_node() -> (TestHome, String) {
    let home = TestHome::new();
    let run = home.run(&["start", "--daemon", "--host-maddrs", LOOPBACK]).ok();
    let addr = run.line("listening on: ").expect("the node prints its address");
    (home, addr)
}

#[test]
fn setup_start_status_restart_stop_in_a_temp_home() {
    let (_first, first_addr) = bootstrap_node();
    let home = TestHome::new();
    home.run(&["setup", "--initial-peers", &first_addr, "--host-maddrs", LOOPBACK]).ok();
    let config = std::fs::read_to_string(home.kwaainet_dir().join("config.yaml")).unwrap();
    assert!(config.contains(&first_addr), "{config}");
    assert_eq!(home.run(&["config", "get", "initial_peers"]).ok().stdout.trim(), first_addr);

    let started = home.run(&["start", "--daemon"]).ok();
    let peer_id = started.line("peer id: ").expect("peer id printed");
    for file in ["kwaainet.pid", "kwaainet.lock", "status.json"] {
        assert!(home.kwaainet_dir().join(file).exists(), "{file} written");
    }
    let pid: u32 = std::fs::read_to_string(home.kwaainet_dir().join("kwaainet.pid")).unwrap().trim().parse().unwrap();
    assert!(process_exists(pid));

    // A second node cannot start from the same home.
    let again = home.run(&["start", "--daemon"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already running"), "{}", again.stderr);

    // The status names the node and finds it through the first node's DHT.
    let status = home.run(&["status"]).ok();
    assert_eq!(status.line("peer id: ").as_deref(), Some(peer_id.as_str()));
    assert_eq!(status.line("state: ").as_deref(), Some(format!("running (pid {pid})").as_str()));
    assert_eq!(status.line("served blocks: ").as_deref(), Some("none"));
    let swarm = status.line("swarm: ").expect("a swarm line");
    assert!(swarm.starts_with("ONLINE (a DHT lookup through "), "{swarm}");
    assert!(swarm.contains(&first_addr), "{swarm}");

    let json: serde_json::Value = serde_json::from_str(&home.run(&["status", "--json"]).ok().stdout).unwrap();
    assert_eq!(json["swarm"]["state"], "ONLINE");
    assert_eq!(json["config"]["initial_peers"][0], first_addr.as_str());
    assert_eq!(json["pid"], pid);

    let health = home.run(&["health"]);
    assert_eq!(health.code, 0, "{}{}", health.stdout, health.stderr);

    let logs = home.run(&["logs", "-n", "200"]).ok();
    assert!(logs.stdout.contains(&format!("peer id: {peer_id}")), "{}", logs.stdout);
    let tail = home.run(&["logs", "-n", "1"]).ok();
    assert_eq!(tail.stdout.lines().count(), 1, "{}", tail.stdout);

    // Restart: a new process, with the same flags and identity.
    let restarted = home.run(&["restart"]).ok();
    assert!(restarted.stdout.contains(&peer_id), "{}", restarted.stdout);
    let new_pid: u32 =
        std::fs::read_to_string(home.kwaainet_dir().join("kwaainet.pid")).unwrap().trim().parse().unwrap();
    assert_ne!(new_pid, pid);
    assert!(!process_exists(pid), "the old process is gone");
    let status = home.run(&["status"]).ok();
    assert!(status.line("swarm: ").unwrap().starts_with("ONLINE"), "{}", status.stdout);

    let stopped = home.run(&["stop"]).ok();
    assert_eq!(stopped.stdout.trim(), format!("stopped (pid {new_pid})"));
    assert!(!process_exists(new_pid), "no process left");
    for file in ["kwaainet.pid", "kwaainet.lock", "status.json"] {
        assert!(!home.kwaainet_dir().join(file).exists(), "{file} removed");
    }
    let status = home.run(&["status"]);
    assert_eq!(status.code, 3, "{}", status.stdout);
    assert!(status.stdout.starts_with("state: stopped"), "{}", status.stdout);
    assert_eq!(home.run(&["stop"]).ok().stdout.trim(), "no node is running");
}

#[test]
fn a_node_that_left_the_swarm_is_not_visible() {
    let (first, first_addr) = bootstrap_node();
    let home = TestHome::new();
    home.run(&["start", "--daemon", "--host-maddrs", LOOPBACK, "--initial-peers", &first_addr]).ok();
    first.run(&["stop"]).ok();
    // Its only entry point is gone: the check cannot even join the swarm.
    let status = home.run(&["status", "--timeout", "5"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(status.line("swarm: ").unwrap().starts_with("UNREACHABLE"), "{}", status.stdout);
    let health = home.run(&["health", "--timeout", "5"]);
    assert_eq!(health.code, 1);
    assert!(health.stdout.starts_with("UNREACHABLE: "), "{}", health.stdout);
}

#[test]
fn stale_pid_and_lock_files_are_cleaned_up() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.kwaainet_dir()).unwrap();
    // A process that no longer runs left its files behind (nobody holds the lock).
    std::fs::write(home.kwaainet_dir().join("kwaainet.pid"), "999999\n").unwrap();
    std::fs::write(home.kwaainet_dir().join("kwaainet.lock"), "").unwrap();
    assert_eq!(home.run(&["status", "--no-check"]).code, 3);
    assert_eq!(home.run(&["stop"]).ok().stdout.trim(), "no node is running");
    assert!(!home.kwaainet_dir().join("kwaainet.pid").exists());
    assert!(!home.kwaainet_dir().join("kwaainet.lock").exists());
    // And a node starts despite them.
    std::fs::write(home.kwaainet_dir().join("kwaainet.lock"), "").unwrap();
    home.run(&["start", "--daemon", "--host-maddrs", LOOPBACK]).ok();
    home.run(&["stop"]).ok();
}

#[test]
fn health_watch_backs_off_exponentially_and_logs_each_attempt() {
    let home = TestHome::new();
    let output = home
        .command(&["health", "--watch", "--max-attempts", "3", "--max-backoff", "60", "--timeout", "2"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = String::from_utf8_lossy(&output.stderr);
    let attempts: Vec<&str> = log.lines().filter(|l| l.contains("unhealthy: UNREACHABLE")).collect();
    assert_eq!(attempts.len(), 3, "{log}");
    for (i, line) in attempts.iter().enumerate() {
        assert!(line.contains(&format!("attempt={}", i + 1)), "{line}");
    }
    let waits: Vec<&str> = log.lines().filter_map(|l| l.split("reconnecting in ").nth(1)).collect();
    assert_eq!(waits, vec!["1.0s", "2.0s"], "{log}");
    assert!(log.trim_end().ends_with("kwaainet: not visible after 3 attempts in a row"), "{log}");
}

#[test]
fn stop_kills_a_node_that_ignores_sigterm() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.kwaainet_dir()).unwrap();
    // A stand-in node: holds the lock, writes its PID, ignores SIGTERM.
    let script = "import fcntl, os, signal, sys, time\n\
                  lock = open(sys.argv[1] + '/kwaainet.lock', 'a+')\n\
                  fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
                  signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                  open(sys.argv[1] + '/kwaainet.pid', 'w').write(f'{os.getpid()}\\n')\n\
                  print('ready', flush=True)\n\
                  time.sleep(120)\n";
    let mut child = std::process::Command::new(common::reference_python())
        .args(["-c", script, home.kwaainet_dir().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    assert_eq!(home.run(&["status", "--no-check"]).code, 1, "running, but it wrote no status file");

    let run = home.run(&["stop", "--timeout", "0.5"]).ok();
    assert_eq!(run.stdout.trim(), format!("killed (pid {}) after 0.5s without stopping", child.id()));
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "SIGKILL ended it");
    assert!(!home.kwaainet_dir().join("kwaainet.lock").exists());
    assert!(!home.kwaainet_dir().join("kwaainet.pid").exists());
}

/// `start --daemon --model`: the node serves its blocks, `status` shows them and the swarm sees them
/// ONLINE; `stop` takes them offline and leaves nothing behind.
#[test]
fn a_serving_node_is_online_with_its_blocks() {
    let (_first, first_addr) = bootstrap_node();
    let home = TestHome::new();
    let model = home.path().join("model");
    home.run(&["demo", "--make-model", model.to_str().unwrap()]).ok();
    let flags = ["--initial-peers", &first_addr, "--host-maddrs", LOOPBACK, "--model", model.to_str().unwrap()];
    let serve = ["--block-indices", "1:3", "--dht-prefix", "cli-test", "--throughput", "2.5"];
    let started = home.run(&[&["start", "--daemon"][..], &flags[..], &serve[..]].concat()).ok();
    assert!(started.line("peer id: ").is_some(), "{}", started.stdout);

    let status = home.run(&["status"]).ok();
    assert_eq!(status.line("served blocks: ").as_deref(), Some("1:3 under cli-test"), "{}", status.stdout);
    let swarm = status.line("swarm: ").expect("a swarm line");
    assert!(swarm.starts_with("ONLINE"), "{swarm}");
    let json: serde_json::Value = serde_json::from_str(&home.run(&["status", "--json"]).ok().stdout).unwrap();
    assert_eq!(json["active_sessions"], 0);

    let pid: u32 = std::fs::read_to_string(home.kwaainet_dir().join("kwaainet.pid")).unwrap().trim().parse().unwrap();
    home.run(&["stop"]).ok();
    assert!(!process_exists(pid), "no process left");
    assert!(!home.kwaainet_dir().join("kwaainet.lock").exists());
}

#[test]
fn a_node_listens_on_websockets_and_webrtc_for_browsers_and_forwards_their_calls() {
    let home = TestHome::new();
    let webrtc_listen = "/ip4/127.0.0.1/udp/0/webrtc-direct";
    let run =
        home.run(&["start", "--daemon", "--host-maddrs", LOOPBACK, "/ip4/127.0.0.1/tcp/0/ws", webrtc_listen]).ok();
    let addrs: Vec<&str> = run.stdout.lines().filter_map(|l| l.strip_prefix("listening on: ")).collect();
    let ws = addrs.iter().find(|a| a.contains("/ws/p2p/")).unwrap_or_else(|| panic!("no /ws address in {addrs:?}"));
    let relay: kwaai_core::PeerId = ws.rsplit('/').next().unwrap().parse().unwrap();
    // The WebRTC-direct address is shown whole, as a browser dials it: port, certificate hash, peer ID.
    let webrtc = addrs
        .iter()
        .find(|a| a.contains("/webrtc-direct/certhash/") && a.ends_with(&format!("/p2p/{relay}")))
        .unwrap_or_else(|| panic!("no webrtc-direct address in {addrs:?}"));
    assert!(!webrtc.contains("/udp/0/"), "{webrtc}");
    let status = home.run(&["status"]).ok();
    assert!(status.stdout.lines().any(|l| l == format!("address: {webrtc}")), "{}", status.stdout);

    // A peer that only the daemon knows serves a handler; a caller that reaches the daemon only over
    // WebSockets calls it through the daemon.
    let start = || {
        kwaai_core::Node::start(kwaai_core::NodeConfig { listen_addrs: vec![LOOPBACK.into()], ..Default::default() })
            .unwrap()
    };
    let (target, caller) = (start(), start());
    target
        .add_unary_handler("Test.echo", |peer, request: Vec<u8>| async move { Ok([peer.to_bytes(), request].concat()) })
        .unwrap();
    let timeout = std::time::Duration::from_secs(15);
    let tcp = addrs.iter().find(|a| !a.contains("/ws/")).unwrap();
    target.connect(tcp, timeout).unwrap();
    assert_eq!(caller.connect(ws, timeout).unwrap().peer_id, relay);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rpc = caller.rpc().unwrap();
    let reply = runtime.block_on(rpc.call_unary_via(relay, target.peer_id(), "Test.echo", b"hi".to_vec(), timeout));
    assert_eq!(reply.unwrap(), [relay.to_bytes(), b"hi".to_vec()].concat());
    home.run(&["stop"]).ok();
}
