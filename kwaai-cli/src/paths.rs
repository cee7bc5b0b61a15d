//! Where kwaainet keeps its files: `$KWAAINET_HOME`, else `~/.kwaainet`.

use std::path::{Path, PathBuf};

use crate::failure::Failure;

/// The environment variable that moves kwaainet's home directory.
pub const HOME_ENV: &str = "KWAAINET_HOME";

/// The files under kwaainet's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$KWAAINET_HOME`, else `$HOME/.kwaainet`.
    pub fn from_env() -> Result<Home, Failure> {
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|d| !d.is_empty()) {
            return Ok(Home { root: PathBuf::from(dir) });
        }
        let home = user_home()?;
        Ok(Home { root: home.join(".kwaainet") })
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.yaml`, written by `kwaainet setup` and `kwaainet config set`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    /// The node's default identity key (a stable peer ID across restarts).
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// Holds the running node's process ID.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("kwaainet.pid")
    }

    /// Locked (flock) by the running node for its whole life.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("kwaainet.lock")
    }

    /// What the running node reports about itself (JSON), for `kwaainet status`.
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The daemon's log file.
    pub fn log_file(&self) -> PathBuf {
        self.log_dir().join("kwaainet.log")
    }

    /// Creates the home and log directories if missing.
    pub fn create(&self) -> Result<(), Failure> {
        std::fs::create_dir_all(self.log_dir())
            .map_err(|e| Failure::io(format!("creating {}", self.log_dir().display()), e))
    }
}

/// The user's home directory (`$HOME`).
pub fn user_home() -> Result<PathBuf, Failure> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| Failure::usage(format!("neither {HOME_ENV} nor HOME is set")))
}
