//! The command line: `kwaainet <command> [flags]`. Node flags are named after Petals'
//! `run_server` flags, in kebab-case.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::serve::ServeArgs;

/// kwaainet: run and manage a kwaai node of the Petals / hivemind swarm.
#[derive(Debug, Parser)]
#[command(name = "kwaainet", version, about = "kwaai node manager")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the configuration file (~/.kwaainet/config.yaml) from flags, or by asking on a terminal.
    Setup(SetupArgs),
    /// Start the node: in the foreground until Ctrl-C, or in the background with --daemon.
    Start(StartArgs),
    /// Stop the background node: SIGTERM, then SIGKILL after --timeout seconds.
    Stop(StopArgs),
    /// Stop the background node and start it again with the same flags.
    Restart(StopArgs),
    /// Show the running node: peer ID, addresses, served blocks, sessions, and whether the swarm sees it.
    Status(StatusArgs),
    /// Print the node's log (~/.kwaainet/logs/kwaainet.log).
    Logs(LogsArgs),
    /// Read or change one setting of the configuration file.
    Config {
        /// get, set, show or path.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Install or remove a user service (systemd on Linux, launchd on macOS) that runs the node.
    Service {
        /// install or uninstall.
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Check that the swarm sees the node; with --watch, keep checking and reconnect with backoff.
    Health(HealthArgs),
    /// Measure memory per block and tokens/s of a model, and recommend --num-blocks.
    Calibrate(CalibrateArgs),
    /// The local demo: a small model made on the spot, generating on this machine.
    Demo(DemoArgs),
}

/// Flags that say how the node joins the swarm (Petals' names).
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// Peers to join the swarm through: multiaddrs ending in /p2p/<peer id>.
    #[arg(long = "initial-peers", alias = "initial-peer", value_name = "MADDR", num_args = 1..)]
    pub initial_peers: Vec<String>,
    /// Multiaddrs to listen on, e.g. /ip4/0.0.0.0/tcp/31337 (and .../tcp/31338/ws or
    /// .../udp/31339/webrtc-direct for browsers).
    #[arg(long = "host-maddrs", alias = "listen", value_name = "MADDR", num_args = 1..)]
    pub host_maddrs: Vec<String>,
    /// The node's private key file (hivemind's format), created if missing.
    #[arg(long = "identity-path", alias = "identity", value_name = "FILE")]
    pub identity_path: Option<PathBuf>,
    /// Ask the DHT without serving it (for a node that peers cannot reach).
    #[arg(long = "client-mode", alias = "client")]
    pub client_mode: bool,
}

impl NodeArgs {
    /// Overrides `config` with every flag given.
    pub fn apply_to(&self, config: &mut Config) {
        if !self.initial_peers.is_empty() {
            config.initial_peers = self.initial_peers.clone();
        }
        if !self.host_maddrs.is_empty() {
            config.host_maddrs = self.host_maddrs.clone();
        }
        if let Some(path) = &self.identity_path {
            config.identity_path = Some(path.clone());
        }
        if self.client_mode {
            config.client_mode = true;
        }
    }
}

/// `kwaainet setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Node flags to write.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Serving flags to write.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log filter to write (error, warn, info, debug, trace).
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Never ask; take the flags and defaults (also the case when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `kwaainet start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// How the node joins the swarm.
    #[command(flatten)]
    pub node: NodeArgs,
    /// What the node serves.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Run in the background: PID and lock files under ~/.kwaainet/, log in ~/.kwaainet/logs/kwaainet.log.
    #[arg(long)]
    pub daemon: bool,
    /// Set by `--daemon` on the background process it starts.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

/// `kwaainet stop` and `kwaainet restart`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// `kwaainet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Skip the live check of the node's visibility in the DHT.
    #[arg(long)]
    pub no_check: bool,
    /// Seconds the live check may take.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// `kwaainet logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Lines to print from the end of the log.
    #[arg(short = 'n', long = "lines", default_value_t = 50)]
    pub lines: usize,
    /// Keep printing lines as they are written (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
}

/// `kwaainet config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print one setting.
    Get {
        /// The setting, e.g. initial_peers.
        key: String,
    },
    /// Change one setting (validated before it is written). Lists take comma-separated items;
    /// `none` unsets an optional setting.
    Set {
        /// The setting, e.g. num_blocks.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Print the whole effective configuration.
    Show,
    /// Print the configuration file's path.
    Path,
}

/// Which service manager a unit is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceKind {
    /// A systemd user unit in ~/.config/systemd/user/.
    Systemd,
    /// A launchd agent in ~/Library/LaunchAgents/.
    Launchd,
}

/// `kwaainet service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write the service file (it runs `kwaainet start` in the foreground).
    Install {
        /// The service manager (default: launchd on macOS, systemd elsewhere).
        #[arg(long)]
        kind: Option<ServiceKind>,
    },
    /// Remove the service file.
    Uninstall {
        /// The service manager (default: launchd on macOS, systemd elsewhere).
        #[arg(long)]
        kind: Option<ServiceKind>,
    },
}

/// `kwaainet health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Keep checking; on failure retry with exponential backoff.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between checks while the node is visible (with --watch).
    #[arg(long, default_value_t = 30.0)]
    pub interval: f64,
    /// Longest wait between failed attempts, in seconds (with --watch).
    #[arg(long, default_value_t = 300.0)]
    pub max_backoff: f64,
    /// Give up watching after this many failed attempts in a row (0: never).
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u32,
    /// Seconds one check may take.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// `kwaainet calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The model directory (config.json + safetensors).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Memory to fill, in GiB (default: the memory available now).
    #[arg(long, value_name = "GIB")]
    pub memory: Option<f64>,
    /// Blocks to load for the measurement.
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Tokens generated one by one to measure the speed.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Attention cache to plan for, in tokens per block.
    #[arg(long, default_value_t = 8192)]
    pub cache_tokens: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `kwaainet demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Only write the demo model to DIR and exit.
    #[arg(long, value_name = "DIR")]
    pub make_model: Option<PathBuf>,
    /// The prompt.
    #[arg(long, default_value = "the old river")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
}
