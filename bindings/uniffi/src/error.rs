//! `KwaaiError`: one variant per `kwaai_core::ErrorKind`, each with its message.

use kwaai_core::{Error, ErrorKind};

/// Every kwaai error; the variant is the stable kind. Flat: each language sees the message as
/// its exception message.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum KwaaiError {
    /// A bad argument (malformed address, ...).
    #[error("{message}")]
    InvalidArgument { message: String },
    /// A local I/O operation failed.
    #[error("{message}")]
    Io { message: String },
    /// An identity file is missing, unreadable or unsupported.
    #[error("{message}")]
    Identity { message: String },
    /// A network operation failed.
    #[error("{message}")]
    Network { message: String },
    /// A peer broke the protocol.
    #[error("{message}")]
    Protocol { message: String },
    /// An operation did not finish in time.
    #[error("{message}")]
    Timeout { message: String },
    /// The node is shut down, or the call was cancelled.
    #[error("{message}")]
    Closed { message: String },
    /// A bug in kwaai.
    #[error("{message}")]
    Internal { message: String },
}

impl From<Error> for KwaaiError {
    fn from(error: Error) -> Self {
        let message = error.message().to_owned();
        match error.kind() {
            ErrorKind::InvalidArgument => KwaaiError::InvalidArgument { message },
            ErrorKind::Io => KwaaiError::Io { message },
            ErrorKind::Identity => KwaaiError::Identity { message },
            ErrorKind::Network => KwaaiError::Network { message },
            ErrorKind::Protocol => KwaaiError::Protocol { message },
            ErrorKind::Timeout => KwaaiError::Timeout { message },
            ErrorKind::Closed => KwaaiError::Closed { message },
            ErrorKind::Internal => KwaaiError::Internal { message },
            _ => KwaaiError::Internal { message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_kind_maps_to_its_own_variant() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let mapped = KwaaiError::from(Error::new(kind, "m"));
            let variant = format!("{mapped:?}");
            let name = variant.split_whitespace().next().unwrap().to_owned();
            assert!(seen.insert(name.clone()), "{kind} shares variant {name}");
            if kind != ErrorKind::Internal {
                assert!(!matches!(mapped, KwaaiError::Internal { .. }), "{kind} fell through to Internal");
            }
            assert_eq!(mapped.to_string(), "m");
        }
    }
}
