//! Support for tests that run the Python reference peer (../shared/reference installed into a venv).
//!
//! An interop test that cannot start the reference fails with a message saying how to install it;
//! it never skips.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The reference venv's Python: `$KWAAI_REFERENCE_PYTHON`, else `~/.cache/kwaai/reference-venv/bin/python`.
pub fn reference_python() -> PathBuf {
    let path = std::env::var_os("KWAAI_REFERENCE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/kwaai/reference-venv/bin/python")
    });
    assert!(
        path.exists(),
        "the reference peer is not installed at {}: run `make reference` (or set KWAAI_REFERENCE_PYTHON)",
        path.display()
    );
    path
}

/// A Python script from `tests/reference/`, run by the reference venv. It must print one JSON
/// line when ready and exit when its stdin closes; dropping this closes stdin, waits, then kills.
pub struct ReferenceProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The script's stdout lines, read by a thread so that a wait for one can be bounded.
    lines: mpsc::Receiver<String>,
}

impl ReferenceProcess {
    /// Starts `tests/reference/<script>` with `args`.
    pub fn start(script: &str, args: &[&str]) -> Self {
        let path = repo_root().join("tests/reference").join(script);
        let mut child = Command::new(reference_python())
            .arg(&path)
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so that the daemons and worker processes it starts stop with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the reference peer {}: {e}", path.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        ReferenceProcess { child, stdin, lines }
    }

    /// Reads the next JSON line the script prints (panics if it exits first).
    pub fn read_json(&mut self) -> serde_json::Value {
        let line = self.lines.recv().unwrap_or_else(|_| {
            panic!("the reference peer exited before printing its JSON line (see its stderr above)")
        });
        parse_json_line(&line)
    }

    /// [`read_json`](Self::read_json), panicking if no line comes within `limit`.
    pub fn read_json_within(&mut self, limit: Duration) -> serde_json::Value {
        match self.lines.recv_timeout(limit) {
            Ok(line) => parse_json_line(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Scripts that register faulthandler for SIGUSR1 print every thread's stack.
                self.signal_group("USR1");
                std::thread::sleep(Duration::from_secs(1));
                panic!("the reference peer printed nothing within {limit:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the reference peer exited before printing its JSON line (see its stderr above)")
            }
        }
    }

    /// Sends `signal` (a name such as `KILL`) to the script and every process it started.
    fn signal_group(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-s", signal, "--", &group]).stderr(Stdio::null()).status();
    }

    /// Sends one line to the script's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("writing to the reference peer");
    }
}

impl Drop for ReferenceProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever the script left running (or the script itself, if it did not exit) stops now.
        self.signal_group("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_json_line(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON from the reference peer: {e}: {line}"))
}

/// Runs `tests/reference/<script>` to completion with `stdin` as input and returns its stdout;
/// panics with its stderr if it fails.
pub fn run_reference_script(script: &str, args: &[&str], stdin: &str) -> String {
    let path = repo_root().join("tests/reference").join(script);
    let mut child = Command::new(reference_python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    let output = child.wait_with_output().expect("waiting for the reference script");
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The network of a private namespace: loopback, and a pair of virtual Ethernet interfaces
/// joined only to each other, one with the documentation address 192.0.2.1, since WebRTC stacks
/// offer no candidate on a loopback interface.
const PRIVATE_NETWORK_SETUP: &str = "ip link set lo up && ip link add kwaai-priv0 type veth peer name kwaai-priv1 \
     && ip addr add 192.0.2.1/24 dev kwaai-priv0 && ip link set kwaai-priv0 up && ip link set kwaai-priv1 up";

/// Whether this process's network namespace is one that [`PRIVATE_NETWORK_SETUP`] made: its
/// interfaces, none of which reaches outside the namespace, and no other.
pub fn in_private_namespace() -> bool {
    let devices = std::fs::read_to_string("/proc/self/net/dev").expect("reading /proc/self/net/dev");
    let names: Vec<&str> = devices.lines().skip(2).filter_map(|line| line.split(':').next()).map(str::trim).collect();
    names.contains(&"kwaai-priv0") && names.iter().all(|name| *name == "lo" || name.starts_with("kwaai-priv"))
}

/// A command that runs `program` in a new network namespace (`unshare --net --map-root-user`)
/// set up by [`PRIVATE_NETWORK_SETUP`].
pub fn in_new_network_namespace(program: &std::path::Path) -> Command {
    let script = format!("{PRIVATE_NETWORK_SETUP} && exec \"$0\" \"$@\"");
    let mut command = Command::new("unshare");
    command.args(["--net", "--map-root-user", "sh", "-c", &script]).arg(program);
    command
}

/// A test that makes WebRTC connections calls this first, and goes on only if it returns true.
///
/// WebRTC opens sockets on every interface of the machine (ICE gathers a candidate on each;
/// webrtc-rs's ICE agents and Chromium listen for mDNS on 0.0.0.0:5353), and tests bind only to
/// loopback. So outside a [private namespace](in_private_namespace) this runs the calling test
/// again in a child process inside a new one, prints the child's output, panics if it failed, and
/// returns false; inside, it returns true.
pub fn in_private_network() -> bool {
    if in_private_namespace() {
        return true;
    }
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().expect("the test's thread has the test's name").to_owned();
    let output = in_new_network_namespace(&std::env::current_exe().expect("the test binary's path"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting `unshare` (util-linux) for a network namespace: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "`{test}` failed ({}) in a network namespace of its own (unshare --net --map-root-user, then \
         `{PRIVATE_NETWORK_SETUP}`: both must be allowed)",
        output.status
    );
    assert!(stdout.contains("test result: ok. 1 passed"), "`{test}` did not run in its network namespace");
    false
}

/// Registers a unary handler `name` on `node` that never answers; the receiver gets a message
/// when the handler's call is dropped (cancelled or timed out).
pub fn add_stalling_handler(node: &kwaai_core::Node, name: &str) -> std::sync::mpsc::Receiver<()> {
    struct NotifyOnDrop(std::sync::mpsc::Sender<()>);
    impl Drop for NotifyOnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (dropped_tx, dropped) = std::sync::mpsc::channel::<()>();
    let dropped_tx = std::sync::Mutex::new(dropped_tx);
    node.add_unary_handler(name, move |_, _| {
        let guard = NotifyOnDrop(dropped_tx.lock().expect("sender lock").clone());
        async move {
            let _guard = guard;
            futures::future::pending::<()>().await;
            Ok(Vec::new())
        }
    })
    .expect("registering the stalling handler");
    dropped
}

/// The config of a node listening on a free 127.0.0.1 port that joins `initial_peers`.
pub fn loopback_config(initial_peers: &[String]) -> kwaai_core::NodeConfig {
    kwaai_core::NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: initial_peers.to_vec(),
        ..kwaai_core::NodeConfig::default()
    }
}

/// A node started with [`loopback_config`].
pub fn loopback_node(initial_peers: &[String]) -> kwaai_core::Node {
    kwaai_core::Node::start(loopback_config(initial_peers)).expect("a loopback node starts")
}

/// `n` loopback nodes, every one after the first joined to the first.
pub fn loopback_swarm(n: usize) -> Vec<kwaai_core::Node> {
    let first = loopback_node(&[]);
    let bootstrap = vec![first.listen_addrs()[0].to_string()];
    let mut nodes = vec![first];
    nodes.extend((1..n).map(|_| loopback_node(&bootstrap)));
    nodes
}

/// Sets a tensor handler on `node` that forwards every tensor it receives to the returned channel.
pub fn collect_tensors(
    node: &kwaai_core::Node,
    limits: kwaai_core::tensor::DecodeLimits,
) -> mpsc::Receiver<kwaai_core::ReceivedTensor> {
    let (tx, rx) = mpsc::channel();
    node.set_tensor_handler(limits, move |received| {
        tx.send(received).map_err(|_| kwaai_core::Error::new(kwaai_core::ErrorKind::Closed, "test receiver gone"))
    })
    .expect("the tensor handler is set");
    rx
}
