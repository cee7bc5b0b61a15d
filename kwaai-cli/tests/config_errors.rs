//! Bad configuration and bad start-up conditions: one line on stderr each, and the exit code.

mod support;

use support::TestHome;

fn write_config(home: &TestHome, text: &str) -> String {
    std::fs::create_dir_all(home.kwaainet_dir()).unwrap();
    let path = home.kwaainet_dir().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_bad_config_file_names_its_line_and_exits_with_2() {
    let home = TestHome::new();
    let cases = [
        ("log_level: info\nnum_blocks: many\n", 2, "num_blocks: invalid type"),
        ("host_maddrs:\n  - /ip4/127.0.0.1/tcp/0\ncolour: blue\n", 3, "unknown field `colour`"),
        ("client_mode: false\ninitial_peers: [/ip4/127.0.0.1/tcp/1]\n", 2, "must end in /p2p/<peer id>"),
        ("throughput: -4\n", 1, "throughput -4 must be a positive number"),
        ("host_maddrs: [\n", 2, ""),
    ];
    for (text, line, what) in cases {
        let path = write_config(&home, text);
        for args in [&["start"][..], &["start", "--daemon"][..], &["config", "get", "model"][..]] {
            let run = home.run(args);
            assert_eq!(run.code, 2, "{args:?} with {text:?}: {}", run.stderr);
            assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
            let prefix = format!("kwaainet: {path}:{line}: ");
            assert!(run.stderr.starts_with(&prefix), "{args:?} with {text:?}: {}", run.stderr);
            assert!(run.stderr.contains(what), "{}", run.stderr);
        }
    }
    assert!(!home.kwaainet_dir().join("kwaainet.lock").exists(), "nothing was started");
}

#[test]
fn config_set_validates_before_writing() {
    let home = TestHome::new();
    home.run(&["setup", "--yes", "--host-maddrs", "/ip4/127.0.0.1/tcp/0"]).ok();
    let path = home.kwaainet_dir().join("config.yaml");
    let before = std::fs::read_to_string(&path).unwrap();
    for (key, value) in [("num_blocks", "0"), ("host-maddrs", "nonsense"), ("client_mode", "perhaps"), ("colour", "x")]
    {
        let run = home.run(&["config", "set", key, value]);
        assert_eq!(run.code, 2, "{key}={value}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "refused values are not written");
    home.run(&["config", "set", "num-blocks", "3"]).ok();
    home.run(&["config", "set", "dht_prefix", "demo-hf"]).ok();
    assert_eq!(home.run(&["config", "get", "num_blocks"]).ok().stdout.trim(), "3");
    assert_eq!(home.run(&["config", "get", "dht-prefix"]).ok().stdout.trim(), "demo-hf");
    assert_eq!(home.run(&["config", "path"]).ok().stdout.trim(), path.display().to_string());
}

#[test]
fn serving_flags_are_checked_against_the_model() {
    let home = TestHome::new();
    let model = home.path().join("model");
    home.run(&["demo", "--make-model", model.to_str().unwrap()]).ok();
    let model = model.to_str().unwrap();
    let loopback = ["--host-maddrs", "/ip4/127.0.0.1/tcp/0"];
    let cases: [(&[&str], &str); 4] = [
        (&["--model", model, "--block-indices", "2:9"], "goes past the model's 4 blocks"),
        (&["--model", model, "--num-blocks", "5"], "exceeds the model's 4 blocks"),
        (&["--model", "/nonexistent/model"], "does not exist"),
        (&["--num-blocks", "2"], "need --model"),
    ];
    for (flags, what) in cases {
        let run = home.run(&[&["start"][..], &loopback[..], flags].concat());
        assert_eq!(run.code, 2, "{flags:?}: {}", run.stderr);
        assert!(run.stderr.contains(what), "{flags:?}: {}", run.stderr);
    }
    let flags = ["--model", model, "--block-indices", "0:2", "--throughput=-1"];
    let run = home.run(&[&["start"][..], &loopback[..], &flags[..]].concat());
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("throughput -1 must be a positive number"), "{}", run.stderr);
    assert!(!home.kwaainet_dir().join("kwaainet.lock").exists(), "the lock is released");
}

#[test]
fn a_port_in_use_is_one_line() {
    let home = TestHome::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let maddr = format!("/ip4/127.0.0.1/tcp/{port}");
    for args in [&["start", "--host-maddrs", &maddr][..], &["start", "--daemon", "--host-maddrs", &maddr][..]] {
        let run = home.run(args);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_eq!(run.stderr.trim(), format!("kwaainet: port {port} of {maddr} is already in use"));
    }
    // The same for a WebRTC-direct (UDP) port.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let maddr = format!("/ip4/127.0.0.1/udp/{port}/webrtc-direct");
    let run = home.run(&["start", "--host-maddrs", "/ip4/127.0.0.1/tcp/0", &maddr]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stderr.trim(), format!("kwaainet: port {port} of {maddr} is already in use"));
}

#[test]
fn an_unreachable_initial_peer_is_one_line() {
    let home = TestHome::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let peer = format!("/ip4/127.0.0.1/tcp/{closed}/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq");
    let run = home.run(&["start", "--daemon", "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--initial-peers", &peer]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("kwaainet: cannot reach the swarm: "), "{}", run.stderr);
    assert!(run.stderr.contains(&peer), "{}", run.stderr);
    assert!(!home.kwaainet_dir().join("kwaainet.lock").exists(), "the failed node left no lock");
}
