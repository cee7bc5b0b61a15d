//! Identity files round-trip between hivemind (p2pd) and kwaai: a key file written by either side
//! gives the same peer ID on the other, for RSA (hivemind's default) and Ed25519 keys.

mod common;

use kwaai_core::{Identity, Node, NodeConfig};

#[test]
fn identity_files_give_the_same_peer_id_in_hivemind_and_kwaai() {
    let dir = tempfile::tempdir().unwrap();
    let by_hivemind = dir.path().join("hivemind-rsa.key");
    let our_rsa = dir.path().join("kwaai-rsa.key");
    let our_ed25519 = dir.path().join("kwaai-ed25519.key");
    let rsa = Identity::generate_rsa().unwrap();
    rsa.save(&our_rsa).unwrap();
    let ed25519 = Identity::load_or_create(&our_ed25519).unwrap();
    assert!(!ed25519.is_rsa());

    let paths: Vec<&str> = [&by_hivemind, &our_rsa, &our_ed25519].iter().map(|p| p.to_str().unwrap()).collect();
    let mut python = common::ReferenceProcess::start("p2p_identity.py", &paths);
    let ready = python.read_json();
    let seen: Vec<&str> = ready["peer_ids"].as_array().expect("peer_ids").iter().map(|p| p.as_str().unwrap()).collect();

    // hivemind's own file (RSA, PKCS#1 in a PrivateKey protobuf) loads here with its peer ID.
    let theirs = Identity::load(&by_hivemind).expect("kwaai reads hivemind's identity file");
    assert!(theirs.is_rsa());
    assert_eq!(theirs.peer_id().to_base58(), seen[0]);
    assert!(seen[0].starts_with("Qm"), "{}", seen[0]);
    // Re-encoding it gives back hivemind's exact bytes.
    assert_eq!(theirs.to_protobuf().unwrap(), std::fs::read(&by_hivemind).unwrap());
    // Ours load in hivemind with our peer IDs.
    assert_eq!(seen[1], rsa.peer_id().to_base58());
    assert_eq!(seen[2], ed25519.peer_id().to_base58());
    assert!(seen[2].starts_with("12D3KooW"), "{}", seen[2]);

    // A node started from hivemind's file has that peer ID.
    let node = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        identity_path: Some(by_hivemind.clone()),
        ..NodeConfig::default()
    })
    .unwrap();
    assert_eq!(node.peer_id().to_base58(), seen[0]);
}
