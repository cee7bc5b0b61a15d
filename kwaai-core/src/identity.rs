//! Node identities: libp2p key pairs stored in hivemind's identity-file format.
//!
//! The file holds a protobuf `PrivateKey { key_type, data }` exactly as libp2p (and so p2pd and
//! hivemind) encodes it. Ed25519 and RSA files load; new files are Ed25519.

use std::fs;
use std::io::{ErrorKind as IoErrorKind, Write};
use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::error::{Error, ErrorKind, Result};

/// A node's key pair, which determines its peer ID.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id()).finish()
    }
}

impl Identity {
    /// A fresh random Ed25519 identity.
    pub fn generate() -> Self {
        Identity { keypair: Keypair::generate_ed25519() }
    }

    /// Decodes a protobuf-encoded libp2p private key (the content of an identity file).
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self> {
        Keypair::from_protobuf_encoding(bytes)
            .map(|keypair| Identity { keypair })
            .map_err(|e| Error::with_source(ErrorKind::Identity, "not a libp2p private key", e))
    }

    /// The protobuf encoding of the private key, as written to identity files.
    pub fn to_protobuf(&self) -> Result<Vec<u8>> {
        self.keypair
            .to_protobuf_encoding()
            .map_err(|e| Error::with_source(ErrorKind::Identity, "cannot encode this key type", e))
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
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o400);
        let mut file = match options.open(path) {
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
    fn protobuf_round_trip_keeps_the_peer_id() {
        let id = Identity::generate();
        let again = Identity::from_protobuf(&id.to_protobuf().unwrap()).unwrap();
        assert_eq!(id.peer_id(), again.peer_id());
        assert!(id.peer_id().to_base58().starts_with("12D3KooW"));
    }
}
