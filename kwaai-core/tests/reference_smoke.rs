//! Smoke interop with the Python reference: a real `hivemind.DHT` (with its Go p2pd) starts on
//! 127.0.0.1, we read its visible multiaddrs, and a kwaai node connects to it over
//! TCP + Noise + yamux and reads its identify record.

mod common;

use std::time::Duration;

use common::loopback_node;

#[test]
fn kwaai_connects_to_a_python_hivemind_dht_and_identifies_p2pd() {
    let mut python = common::ReferenceProcess::start("dht_node.py", &[]);
    let ready = python.read_json();
    let peer_id = ready["peer_id"].as_str().expect("peer_id").to_owned();
    let maddrs: Vec<String> =
        ready["maddrs"].as_array().expect("maddrs").iter().map(|m| m.as_str().unwrap().to_owned()).collect();
    assert!(!maddrs.is_empty(), "hivemind reported no visible multiaddrs");
    for maddr in &maddrs {
        maddr.parse::<kwaai_core::Multiaddr>().unwrap_or_else(|e| panic!("{maddr}: {e}"));
        assert!(maddr.starts_with("/ip4/127.0.0.1/tcp/"), "{maddr}");
        assert!(maddr.ends_with(&format!("/p2p/{peer_id}")), "{maddr}");
    }

    let node = loopback_node(&[]);
    let info = node.connect(&maddrs[0], Duration::from_secs(20)).expect("kwaai connects to p2pd");
    assert_eq!(info.peer_id.to_base58(), peer_id);
    assert_eq!(info.agent_version, "p2pd/0.1", "{info:?}");
    assert_eq!(info.protocol_version, "ipfs/0.1.0");
    assert!(info.protocols.iter().any(|p| p == "/ipfs/kad/1.0.0"), "p2pd serves kad: {:?}", info.protocols);
}
