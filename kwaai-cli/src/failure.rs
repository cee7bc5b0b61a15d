//! Why a command failed, and the exit code that says so.

use std::fmt;

/// Exit code of a bad configuration file or bad arguments.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of every other failure.
pub const EXIT_FAILURE: u8 = 1;

/// A failed command: one line for the operator and the process exit code.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// One line saying what went wrong.
    pub message: String,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Failure { code: EXIT_FAILURE, message: message.into() }
    }

    /// Bad configuration or arguments: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure { code: EXIT_CONFIG, message: message.into() }
    }

    /// A local I/O error, with what was being done.
    pub fn io(context: impl fmt::Display, error: std::io::Error) -> Self {
        Failure::new(format!("{context}: {error}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<kwaai_core::Error> for Failure {
    fn from(e: kwaai_core::Error) -> Self {
        let message = e.message();
        if message.contains("Address already in use") || message.contains("AddrInUse") {
            return Failure::new(format!("a listen address is already in use: {}", first_line(message)));
        }
        if message.starts_with("DHT bootstrap failed") {
            return Failure::new(format!("cannot reach the swarm: {}", first_line(message)));
        }
        let code = if e.kind() == kwaai_core::ErrorKind::InvalidArgument { EXIT_CONFIG } else { EXIT_FAILURE };
        Failure { code, message: format!("{} error: {}", e.kind(), first_line(message)) }
    }
}

/// The first line of `text`, so that every failure prints as one line.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
