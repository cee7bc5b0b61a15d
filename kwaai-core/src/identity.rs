//! Node identities: libp2p key pairs stored in hivemind's identity-file format.
//!
//! The file holds a protobuf `PrivateKey { key_type, data }` exactly as libp2p (and so p2pd and
//! hivemind) encodes it. Ed25519 and RSA files load; new files are Ed25519 unless an RSA identity
//! is generated explicitly ([`Identity::generate_rsa`], as hivemind does: RSA-2048, e = 65537,
//! written as unencrypted PKCS#1 DER). libp2p can read RSA keys but not encode them, so RSA
//! identities keep their PKCS#1 bytes and we write the protobuf ourselves.

use std::fs;
use std::io::{ErrorKind as IoErrorKind, Write};
use std::path::Path;

use libp2p::identity::{KeyType, Keypair};
use libp2p::PeerId;
use prost::Message;
use rsa::pkcs1::EncodeRsaPrivateKey;

use crate::error::{Error, ErrorKind, Result};

/// Bits of a generated RSA key (hivemind's choice, and go-libp2p's minimum).
const RSA_BITS: usize = 2048;
/// `KeyType.RSA` in libp2p's `crypto.proto`.
const KEY_TYPE_RSA: i32 = 0;

/// libp2p's `crypto.proto` `PrivateKey` (proto2: both fields `required`).
#[derive(Clone, PartialEq, Message)]
struct PrivateKeyProto {
    #[prost(int32, required, tag = "1")]
    key_type: i32,
    #[prost(bytes = "vec", required, tag = "2")]
    data: Vec<u8>,
}

/// A node's key pair, which determines its peer ID.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    /// The PKCS#1 DER of an RSA key (libp2p cannot re-encode RSA keys).
    rsa_pkcs1: Option<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id()).finish()
    }
}

impl Identity {
    /// A fresh random Ed25519 identity.
    pub fn generate() -> Self {
        Identity { keypair: Keypair::generate_ed25519(), rsa_pkcs1: None }
    }

    /// A fresh random RSA-2048 identity, like the ones hivemind writes (`Qm…` peer IDs).
    pub fn generate_rsa() -> Result<Self> {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), RSA_BITS)
            .map_err(|e| Error::with_source(ErrorKind::Internal, "generating an RSA key", e))?;
        let der = key.to_pkcs1_der().map_err(|e| Error::with_source(ErrorKind::Internal, "encoding an RSA key", e))?;
        let proto = PrivateKeyProto { key_type: KEY_TYPE_RSA, data: der.as_bytes().to_vec() };
        Self::from_protobuf(&proto.encode_to_vec())
    }

    /// Decodes a protobuf-encoded libp2p private key (the content of an identity file).
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self> {
        let keypair = Keypair::from_protobuf_encoding(bytes)
            .map_err(|e| Error::with_source(ErrorKind::Identity, "not a libp2p private key", e))?;
        let rsa_pkcs1 = match keypair.key_type() {
            KeyType::RSA => {
                let proto = PrivateKeyProto::decode(bytes)
                    .map_err(|e| Error::with_source(ErrorKind::Identity, "not a libp2p private key", e))?;
                Some(proto.data)
            }
            _ => None,
        };
        Ok(Identity { keypair, rsa_pkcs1 })
    }

    /// The protobuf encoding of the private key, as written to identity files.
    pub fn to_protobuf(&self) -> Result<Vec<u8>> {
        if let Some(der) = &self.rsa_pkcs1 {
            return Ok(PrivateKeyProto { key_type: KEY_TYPE_RSA, data: der.clone() }.encode_to_vec());
        }
        self.keypair
            .to_protobuf_encoding()
            .map_err(|e| Error::with_source(ErrorKind::Identity, "cannot encode this key type", e))
    }

    /// Whether this is an RSA key (hivemind's default) rather than Ed25519.
    pub fn is_rsa(&self) -> bool {
        self.rsa_pkcs1.is_some()
    }

    /// Writes this identity to a new file at `path` (mode 0400); an existing file is an error.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_protobuf()?;
        let io_err = |e| Error::with_source(ErrorKind::Io, format!("writing identity file {}", path.display()), e);
        let mut file = Self::create_file(path).map_err(io_err)?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io_err)
    }

    fn create_file(path: &Path) -> std::io::Result<fs::File> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o400);
        options.open(path)
    }

    /// Reads an identity file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| {
            let kind = if e.kind() == IoErrorKind::NotFound { ErrorKind::Identity } else { ErrorKind::Io };
            Error::with_source(kind, format!("reading identity file {}", path.display()), e)
        })?;
        Self::from_protobuf(&bytes)
            .map_err(|e| Error::new(e.kind(), format!("identity file {}: {}", path.display(), e.message())))
    }

    /// Reads an identity file, or creates it with a fresh Ed25519 key (mode 0400) if it is missing.
    /// An existing file is never overwritten.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Self::load(path);
        }
        let identity = Self::generate();
        let bytes = identity.to_protobuf()?;
        let io_err = |e| Error::with_source(ErrorKind::Io, format!("writing identity file {}", path.display()), e);
        let mut file = match Self::create_file(path) {
            Ok(file) => file,
            // Another process created it first: use theirs.
            Err(e) if e.kind() == IoErrorKind::AlreadyExists => return Self::load(path),
            Err(e) => return Err(io_err(e)),
        };
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io_err)?;
        Ok(identity)
    }

    /// The peer ID derived from the public key.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_file_reloads_with_the_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let created = Identity::load_or_create(&path).unwrap();
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(created.peer_id(), loaded.peer_id());
        assert_eq!(Identity::load_or_create(&path).unwrap().peer_id(), created.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        }
    }

    #[test]
    fn garbage_file_is_an_identity_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, b"not a key").unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Identity);
        assert!(err.message().contains("bad.key"), "{err}");
    }

    #[test]
    fn missing_file_is_an_identity_error() {
        let err = Identity::load(Path::new("/nonexistent/kwaai/id.key")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Identity);
    }

    #[test]
    fn rsa_identity_round_trips_through_our_writer() {
        let id = Identity::generate_rsa().unwrap();
        assert!(id.is_rsa());
        assert!(id.peer_id().to_base58().starts_with("Qm"), "{}", id.peer_id());
        let bytes = id.to_protobuf().unwrap();
        assert_eq!(&bytes[..2], &[0x08, 0x00], "key_type RSA is encoded although it is 0 (proto2 required)");
        let again = Identity::from_protobuf(&bytes).unwrap();
        assert_eq!(again.peer_id(), id.peer_id());
        assert_eq!(again.to_protobuf().unwrap(), bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsa.key");
        id.save(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().peer_id(), id.peer_id());
        assert_eq!(id.save(&path).unwrap_err().kind(), ErrorKind::Io, "never overwrites");
    }

    #[test]
    fn protobuf_round_trip_keeps_the_peer_id() {
        let id = Identity::generate();
        let again = Identity::from_protobuf(&id.to_protobuf().unwrap()).unwrap();
        assert_eq!(id.peer_id(), again.peer_id());
        assert!(id.peer_id().to_base58().starts_with("12D3KooW"));
    }
}
