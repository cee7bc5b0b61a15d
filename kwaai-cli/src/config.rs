//! `config.yaml`: the node's settings, read with file:line errors and validated key by key.

use std::path::{Path, PathBuf};

use kwaai_core::server::Span;
use kwaai_core::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::failure::Failure;

/// Where a node listens unless told otherwise: every interface, an OS-chosen port (as Petals) for
/// TCP, and others for WebSockets and WebRTC-direct (UDP), which browsers can dial (such a node
/// forwards their calls). The WebRTC-direct address's `/certhash/...` changes on every start.
pub const DEFAULT_HOST_MADDRS: [&str; 3] =
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/tcp/0/ws", "/ip4/0.0.0.0/udp/0/webrtc-direct"];

/// Every setting of `config.yaml`. Keys are the `kwaainet start` flags in snake_case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Peers to join the swarm through (multiaddrs ending in `/p2p/<peer id>`); none starts a new swarm.
    pub initial_peers: Vec<String>,
    /// Multiaddrs to listen on.
    pub host_maddrs: Vec<String>,
    /// The node's private key file (hivemind's format), created if missing; none: a new peer ID each start.
    pub identity_path: Option<PathBuf>,
    /// Ask the DHT without serving it (for nodes that peers cannot reach).
    pub client_mode: bool,
    /// A model directory to serve blocks of.
    pub model: Option<PathBuf>,
    /// How many blocks to serve (chosen automatically when neither this nor `block_indices` is set).
    pub num_blocks: Option<usize>,
    /// The blocks to serve, `start:end` (end exclusive).
    pub block_indices: Option<String>,
    /// The DHT prefix of the model's records (derived from the model name when unset).
    pub dht_prefix: Option<String>,
    /// The throughput to announce, in tokens/s (measured when unset).
    pub throughput: Option<f64>,
    /// The dtype blocks are served in: `float32` or `bfloat16` (unset: the checkpoint's, float32
    /// becoming bfloat16, as Petals' `auto`).
    pub torch_dtype: Option<String>,
    /// Log filter: error, warn, info, debug, trace (or a tracing filter such as `kwaai_core=debug`).
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            initial_peers: Vec::new(),
            host_maddrs: DEFAULT_HOST_MADDRS.map(str::to_owned).to_vec(),
            identity_path: None,
            client_mode: false,
            model: None,
            num_blocks: None,
            block_indices: None,
            dht_prefix: None,
            throughput: None,
            torch_dtype: None,
            log_level: "info".to_owned(),
        }
    }
}

/// The keys of `config.yaml`, in file order.
pub const KEYS: [&str; 11] = [
    "initial_peers",
    "host_maddrs",
    "identity_path",
    "client_mode",
    "model",
    "num_blocks",
    "block_indices",
    "dht_prefix",
    "throughput",
    "torch_dtype",
    "log_level",
];

/// A block range `start:end`, end exclusive (Petals' `--block_indices`).
pub fn parse_block_indices(text: &str) -> Result<Span, String> {
    Span::parse(text).map_err(|e| e.message().to_owned())
}

fn check_maddr(text: &str, what: &str) -> Result<Multiaddr, String> {
    text.parse::<Multiaddr>().map_err(|e| format!("{what} {text:?} is not a multiaddr: {e}"))
}

/// Whether `addr` names a peer (`.../p2p/<peer id>`).
fn has_peer_id(addr: &Multiaddr) -> bool {
    addr.to_string().contains("/p2p/")
}

impl Config {
    /// Checks every setting; the error names the key it is about.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for peer in &self.initial_peers {
            let addr = check_maddr(peer, "initial peer").map_err(|e| ("initial_peers", e))?;
            if !has_peer_id(&addr) {
                return Err(("initial_peers", format!("initial peer {peer:?} must end in /p2p/<peer id>")));
            }
        }
        if self.host_maddrs.is_empty() {
            return Err(("host_maddrs", "at least one listen address is needed".to_owned()));
        }
        for addr in &self.host_maddrs {
            let parsed = check_maddr(addr, "host maddr").map_err(|e| ("host_maddrs", e))?;
            if has_peer_id(&parsed) {
                return Err(("host_maddrs", format!("host maddr {addr:?} must not contain /p2p/")));
            }
        }
        if self.num_blocks == Some(0) {
            return Err(("num_blocks", "num_blocks must be at least 1".to_owned()));
        }
        if let Some(indices) = &self.block_indices {
            parse_block_indices(indices).map_err(|e| ("block_indices", e))?;
            if self.num_blocks.is_some() {
                return Err(("block_indices", "set num_blocks or block_indices, not both".to_owned()));
            }
        }
        if let Some(prefix) = &self.dht_prefix {
            if prefix.is_empty() || prefix.contains('.') {
                return Err(("dht_prefix", format!("dht prefix {prefix:?} must be non-empty and without '.'")));
            }
        }
        if let Some(dtype) = &self.torch_dtype {
            if !matches!(dtype.as_str(), "float32" | "bfloat16") {
                return Err(("torch_dtype", format!("torch dtype {dtype:?} must be float32 or bfloat16")));
            }
        }
        if let Some(t) = self.throughput {
            if !(t.is_finite() && t > 0.0) {
                return Err(("throughput", format!("throughput {t} must be a positive number")));
            }
        }
        if self.log_level.trim().is_empty() || self.log_level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(("log_level", format!("log level {:?} is not a valid filter", self.log_level)));
        }
        Ok(())
    }

    /// Reads and validates `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, Failure> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Failure::usage(format!("{}: cannot read: {e}", path.display()))),
        }
    }

    /// Parses and validates the text of `path`; errors read `FILE:LINE: what is wrong`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Failure> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let line = e.location().map_or(1, |l| l.line());
                let message = e.to_string();
                // serde_yaml appends " at line L column C"; the prefix already says where.
                let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
                Failure::usage(format!("{}:{line}: {message}", path.display()))
            })?
        };
        config.validate().map_err(|(key, message)| {
            Failure::usage(format!("{}:{}: {message}", path.display(), line_of_key(text, key)))
        })?;
        Ok(config)
    }

    /// Writes the configuration to `path` (creating its directory).
    pub fn save(&self, path: &Path) -> Result<(), Failure> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Failure::io(format!("creating {}", dir.display()), e))?;
        }
        let body = serde_yaml::to_string(self).map_err(|e| Failure::new(format!("encoding the configuration: {e}")))?;
        let text = format!("# kwaainet configuration (see `kwaainet config --help`)\n{body}");
        std::fs::write(path, text).map_err(|e| Failure::io(format!("writing {}", path.display()), e))
    }

    /// The value of `key` as YAML text (`null` when unset).
    pub fn get(&self, key: &str) -> Result<String, Failure> {
        let key = normalize_key(key)?;
        let value = serde_yaml::to_value(self).map_err(|e| Failure::new(format!("encoding the configuration: {e}")))?;
        let field = value.get(key).cloned().unwrap_or(serde_yaml::Value::Null);
        Ok(match field {
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .map(|v| serde_yaml::to_string(v).unwrap_or_default().trim_end().to_owned())
                .collect::<Vec<_>>()
                .join("\n"),
            other => serde_yaml::to_string(&other).unwrap_or_default().trim_end().to_owned(),
        })
    }

    /// Sets `key` from its command-line text and validates the result. Lists take comma- or
    /// space-separated items; `none` (or an empty value) unsets an optional key.
    pub fn set(&mut self, key: &str, text: &str) -> Result<(), Failure> {
        let key = normalize_key(key)?;
        let text = text.trim();
        let unset = text.is_empty() || text.eq_ignore_ascii_case("none") || text.eq_ignore_ascii_case("null");
        let bad = |what: &str| Failure::usage(format!("{key}: {text:?} is not {what}"));
        let mut next = self.clone();
        match key {
            "initial_peers" | "host_maddrs" => {
                let items: Vec<String> = if unset {
                    Vec::new()
                } else {
                    text.split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                };
                if key == "initial_peers" {
                    next.initial_peers = items;
                } else {
                    next.host_maddrs = items;
                }
            }
            "identity_path" => next.identity_path = (!unset).then(|| PathBuf::from(text)),
            "model" => next.model = (!unset).then(|| PathBuf::from(text)),
            "client_mode" => {
                next.client_mode = match text.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "num_blocks" => {
                next.num_blocks = if unset { None } else { Some(text.parse().map_err(|_| bad("a whole number"))?) }
            }
            "block_indices" => next.block_indices = (!unset).then(|| text.to_owned()),
            "dht_prefix" => next.dht_prefix = (!unset).then(|| text.to_owned()),
            "throughput" => {
                next.throughput = if unset { None } else { Some(text.parse().map_err(|_| bad("a number"))?) }
            }
            "torch_dtype" => next.torch_dtype = (!unset).then(|| text.to_owned()),
            "log_level" => next.log_level = if unset { "info".to_owned() } else { text.to_owned() },
            _ => unreachable!("normalize_key returns known keys"),
        }
        next.validate().map_err(|(_, message)| Failure::usage(message))?;
        *self = next;
        Ok(())
    }
}

/// The snake_case key for `key` (kebab-case accepted); an unknown key is a usage error.
pub fn normalize_key(key: &str) -> Result<&'static str, Failure> {
    let wanted = key.replace('-', "_");
    KEYS.iter()
        .find(|k| **k == wanted)
        .copied()
        .ok_or_else(|| Failure::usage(format!("unknown key {key:?}; the keys are: {}", KEYS.join(", "))))
}

/// The 1-based line where `key` is set in `text` (1 when it is not there: the defaults are at fault).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':')))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "/ip4/127.0.0.1/tcp/4000/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq";

    #[test]
    fn defaults_round_trip_through_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let mut config = Config::default();
        config.set("initial-peers", PEER).unwrap();
        config.set("num_blocks", "3").unwrap();
        config.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), config);
        assert_eq!(config.get("num_blocks").unwrap(), "3");
        assert_eq!(config.get("initial_peers").unwrap(), PEER);
        assert_eq!(config.get("model").unwrap(), "null");
    }

    #[test]
    fn syntax_and_type_errors_name_the_line() {
        let path = Path::new("/x/config.yaml");
        let err = Config::parse("client_mode: false\nnum_blocks: lots\n", path).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(err.message.starts_with("/x/config.yaml:2: "), "{}", err.message);
        let err = Config::parse("log_level: info\nhost_maddrs: [\n", path).unwrap_err();
        assert!(err.message.starts_with("/x/config.yaml:"), "{}", err.message);
        let err = Config::parse("colour: blue\n", path).unwrap_err();
        assert!(err.message.starts_with("/x/config.yaml:1: unknown field `colour`"), "{}", err.message);
    }

    #[test]
    fn invalid_values_name_the_line_of_their_key() {
        let path = Path::new("/x/config.yaml");
        let text = "log_level: info\nhost_maddrs:\n  - /ip4/127.0.0.1/tcp/0\ninitial_peers:\n  - /ip4/1.2.3.4/tcp/5\n";
        let err = Config::parse(text, path).unwrap_err();
        assert_eq!(err.message, "/x/config.yaml:4: initial peer \"/ip4/1.2.3.4/tcp/5\" must end in /p2p/<peer id>");
        let err = Config::parse("num_blocks: 2\nblock_indices: '3:1'\n", path).unwrap_err();
        assert!(err.message.starts_with("/x/config.yaml:2: "), "{}", err.message);
    }

    #[test]
    fn set_refuses_bad_values_and_unknown_keys() {
        let mut config = Config::default();
        assert_eq!(config.set("num_blocks", "0").unwrap_err().code, 2);
        assert_eq!(config.set("throughput", "-1").unwrap_err().code, 2);
        assert_eq!(config.set("client_mode", "maybe").unwrap_err().code, 2);
        assert_eq!(config.set("host_maddrs", "not-an-addr").unwrap_err().code, 2);
        assert_eq!(config.set("colour", "blue").unwrap_err().code, 2);
        assert_eq!(config, Config::default(), "a refused value changes nothing");
        config.set("block_indices", "0:2").unwrap();
        assert!(config.set("num_blocks", "2").is_err(), "num_blocks and block_indices exclude each other");
        config.set("block_indices", "none").unwrap();
        assert_eq!(config.block_indices, None);
    }

    #[test]
    fn block_indices_parse() {
        assert_eq!(parse_block_indices("2:5"), Ok(Span::new(2, 5).unwrap()));
        assert!(parse_block_indices("5:2").is_err());
        assert!(parse_block_indices("5").is_err());
    }
}
