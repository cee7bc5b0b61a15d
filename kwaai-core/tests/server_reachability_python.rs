//! Petals' reachability check (`ReachabilityProtocol.rpc_check`) answered by a kwaai node: a
//! reachable Python peer is reported reachable after a dial back from a separate probe host, the
//! node itself is reachable, and a peer nobody holds is not.

mod common;

use common::loopback_node;
use kwaai_core::server::serve_reachability;
use serde_json::json;

#[test]
fn petals_reachability_checks_are_answered_by_dialing_back() {
    let node = loopback_node(&[]);
    let reachability = serve_reachability(&node).expect("rpc_check served");
    let maddr = node.listen_addrs()[0].to_string();
    let peer = node.peer_id().to_base58();
    let out = common::run_reference_script("server_reachability.py", &[&maddr, &peer], "");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(result, json!({"python": true, "kwaai": true, "nobody": false}));
    drop(reachability);
    node.shutdown();
}
