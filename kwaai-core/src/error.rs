//! The one error type of the library and its stable kinds.

use std::fmt;

/// A coarse, stable classification of errors.
///
/// Each kind has a fixed numeric code that the C ABI returns and every binding maps to its own
/// exception or error type. Codes are never reused or renumbered; new kinds get new codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed a bad value: a malformed address, a null pointer, invalid UTF-8, ...
    InvalidArgument,
    /// A local I/O operation failed (files, sockets).
    Io,
    /// An identity (key) file is missing, unreadable or holds an unsupported key.
    Identity,
    /// A network operation failed: listen, dial, connection lost.
    Network,
    /// A peer broke the protocol: bad framing, bad message, oversized data.
    Protocol,
    /// An operation did not finish in time.
    Timeout,
    /// The node was shut down, or the operation was cancelled.
    Closed,
    /// A bug in this library; the message says where.
    Internal,
}

impl ErrorKind {
    /// Every kind, in code order; bindings test that they map each one.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::InvalidArgument,
        ErrorKind::Io,
        ErrorKind::Identity,
        ErrorKind::Network,
        ErrorKind::Protocol,
        ErrorKind::Timeout,
        ErrorKind::Closed,
        ErrorKind::Internal,
    ];

    /// The stable numeric code (0 is reserved for success in the C ABI).
    pub fn code(self) -> u32 {
        match self {
            ErrorKind::InvalidArgument => 1,
            ErrorKind::Io => 2,
            ErrorKind::Identity => 3,
            ErrorKind::Network => 4,
            ErrorKind::Protocol => 5,
            ErrorKind::Timeout => 6,
            ErrorKind::Closed => 7,
            ErrorKind::Internal => 8,
        }
    }

    /// The stable snake_case name, used as the `kind`/`code` attribute in bindings.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Io => "io",
            ErrorKind::Identity => "identity",
            ErrorKind::Network => "network",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind with this code, if any.
    pub fn from_code(code: u32) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error type of every fallible call in kwaai.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }

    /// An error of `kind` that wraps its cause; the cause's text is appended to the message.
    pub fn with_source(
        kind: ErrorKind,
        context: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error { kind, message: format!("{context}: {source}"), source: Some(Box::new(source)) }
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let codes: HashSet<u32> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        let names: HashSet<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert!(!codes.contains(&0), "0 is reserved for success");
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code(0), None);
    }

    #[test]
    fn with_source_keeps_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Error::with_source(ErrorKind::Io, "reading key.bin", io);
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(err.to_string(), "reading key.bin: no such file");
        assert!(std::error::Error::source(&err).is_some());
    }
}
