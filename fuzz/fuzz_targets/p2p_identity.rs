//! An identity file: a libp2p `PrivateKey` protobuf (Ed25519 or RSA PKCS#1).
#![no_main]

use kwaai_core::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = Identity::from_protobuf(data) {
        let bytes = identity.to_protobuf().expect("a loaded key encodes");
        assert_eq!(Identity::from_protobuf(&bytes).unwrap().peer_id(), identity.peer_id());
    }
});
