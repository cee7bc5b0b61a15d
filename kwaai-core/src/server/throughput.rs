//! The throughput a server announces, measured and combined as petals/server/throughput.py does.
//!
//! Compute is measured on a loaded block: tokens per second of one block for inference (one token
//! per step over a growing cache) and for forward passes (1024-token batches), each after one
//! warm-up step. The network figure is an estimate: Petals runs an Internet speed test and falls
//! back to 100 Mbit/s when it fails; we never reach the Internet, so it comes from a configured
//! bandwidth, by default that same 100 Mbit/s. The three figures are cached in a JSON file under
//! keys built as Petals builds them (model, device, dtype), so a restart does not measure again.
//! The announced throughput is `min(forward_rps / ((num_blocks + 1) / 2), network_rps)`, the network
//! part scaled by 0.2 for a server reachable only through a relay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor as CTensor};
use serde_json::{Map, Value as Json};

use super::info::ServerInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{BlockSpan, LayerCache};

/// The link speed assumed when none is configured: Petals' fallback when its speed test fails.
pub const DEFAULT_NETWORK_BITS_PER_SECOND: f64 = 100e6;
/// The factor applied to the network throughput of a server reachable only through a relay.
pub const DEFAULT_RELAY_PENALTY: f64 = 0.2;
/// The cache file name inside the cache directory (Petals' name for the same format).
pub const THROUGHPUT_CACHE_FILE: &str = "throughput_v5.json";

/// A host's measured figures, in tokens per second (one block for the compute figures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputInfo {
    /// One block, one token per step, with a growing attention cache.
    pub inference_rps: f64,
    /// One block, forward passes over long batches.
    pub forward_rps: f64,
    /// Tokens per second the link carries (16-bit hidden states each way).
    pub network_rps: f64,
}

impl ThroughputInfo {
    /// The throughput a server of `num_blocks` blocks announces: the forward rate divided by the
    /// average number of its blocks a request uses (`(num_blocks + 1) / 2`, requests starting
    /// anywhere in the span), capped by the network rate (times `relay_penalty` behind a relay).
    pub fn server_throughput(&self, num_blocks: usize, using_relay: bool, relay_penalty: f64) -> f64 {
        let average_blocks_used = (num_blocks as f64 + 1.0) / 2.0;
        let compute = self.forward_rps / average_blocks_used;
        let network = self.network_rps * if using_relay { relay_penalty } else { 1.0 };
        compute.min(network)
    }

    /// Sets `info`'s throughput and measured figures as a Petals server announces them.
    pub fn apply_to(&self, info: &mut ServerInfo, throughput: f64) {
        info.throughput = throughput;
        info.inference_rps = Some(self.inference_rps);
        info.forward_rps = Some(self.forward_rps);
        info.network_rps = Some(self.network_rps);
    }

    fn to_json(self) -> Json {
        serde_json::json!({
            "inference_rps": self.inference_rps,
            "forward_rps": self.forward_rps,
            "network_rps": self.network_rps,
        })
    }

    fn from_json(value: &Json) -> Option<Self> {
        let rate = |key: &str| value.get(key)?.as_f64().filter(|x| x.is_finite() && *x > 0.0);
        Some(ThroughputInfo {
            inference_rps: rate("inference_rps")?,
            forward_rps: rate("forward_rps")?,
            network_rps: rate("network_rps")?,
        })
    }
}

/// Tokens per second a link of `bits_per_second` carries for a model of `hidden_size`: a token is
/// `hidden_size` 16-bit values (petals/server/throughput.py `measure_network_rps`).
pub fn network_rps(hidden_size: usize, bits_per_second: f64) -> Result<f64> {
    if hidden_size == 0 || !bits_per_second.is_finite() || bits_per_second <= 0.0 {
        return Err(Error::invalid_argument(format!(
            "network speed {bits_per_second} bit/s for hidden size {hidden_size} gives no throughput"
        )));
    }
    Ok(bits_per_second / (hidden_size as f64 * 16.0))
}

/// How long the compute measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOptions {
    /// Steps of one token each for the inference figure (Petals: 100).
    pub inference_steps: usize,
    /// Tokens per forward batch (Petals: 1024).
    pub forward_tokens: usize,
    /// Forward batches timed (Petals: 10).
    pub forward_steps: usize,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions { inference_steps: 100, forward_tokens: 1024, forward_steps: 10 }
    }
}

/// Tokens per second through the first block of `span`: `steps` steps of `tokens` tokens each, after
/// one warm-up step; with `inference`, each step extends the same cache as a generation does.
pub fn measure_compute_rps(span: &BlockSpan, tokens: usize, steps: usize, inference: bool) -> Result<f64> {
    let block = span.blocks().first().ok_or_else(|| Error::invalid_argument("the span has no block"))?;
    if tokens == 0 || steps == 0 {
        return Err(Error::invalid_argument("a measurement needs at least one token and one step"));
    }
    let candle = |e: candle_core::Error| Error::with_source(ErrorKind::Internal, "measuring compute throughput", e);
    let input = CTensor::randn(0f32, 1f32, (1, tokens, span.config().hidden_size), &Device::Cpu).map_err(candle)?;
    let mut cache = LayerCache::default();
    block.forward(&input, &mut cache)?;
    let started = Instant::now();
    for _ in 0..steps {
        if !inference {
            cache = LayerCache::default();
        }
        block.forward(&input, &mut cache)?;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let rps = (steps * tokens) as f64 / elapsed;
    tracing::info!(
        mode = if inference { "inference" } else { "forward" },
        tokens,
        rps = format_args!("{rps:.1}"),
        "compute throughput of one block"
    );
    Ok(rps)
}

/// Measures the host's figures on the first block of `span`; the network rate comes from
/// `network_bits_per_second`.
pub fn measure_throughput_info(
    span: &BlockSpan,
    options: &MeasureOptions,
    network_bits_per_second: f64,
) -> Result<ThroughputInfo> {
    tracing::info!("measuring compute throughput; the result is cached for later runs");
    Ok(ThroughputInfo {
        inference_rps: measure_compute_rps(span, 1, options.inference_steps, true)?,
        forward_rps: measure_compute_rps(span, options.forward_tokens, options.forward_steps, false)?,
        network_rps: network_rps(span.config().hidden_size, network_bits_per_second)?,
    })
}

/// The cache key Petals uses: `model_{name}_device_{device}_dtype_{dtype}`, the quantization
/// appended to the dtype (`float32, quantized to int8`); spaces in the device name become `_`.
pub fn throughput_cache_key(model_name: &str, device: &str, dtype: &str, quant_type: Option<&str>) -> String {
    let mut dtype = dtype.to_owned();
    if let Some(quant) = quant_type.filter(|q| *q != "none") {
        dtype.push_str(&format!(", quantized to {quant}"));
    }
    format!("model_{model_name}_device_{}_dtype_{dtype}", device.replace(' ', "_"))
}

/// The figures cached in `dir`, by key; a missing or unreadable file is an empty cache.
pub fn read_throughput_cache(dir: &Path) -> BTreeMap<String, ThroughputInfo> {
    let path = dir.join(THROUGHPUT_CACHE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the throughput cache");
            return BTreeMap::new();
        }
    };
    match serde_json::from_str::<Map<String, Json>>(&text) {
        Ok(map) => map.iter().filter_map(|(k, v)| Some((k.clone(), ThroughputInfo::from_json(v)?))).collect(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a malformed throughput cache");
            BTreeMap::new()
        }
    }
}

/// Records `info` under `key` in `dir`'s cache, keeping the other keys; the file is replaced
/// atomically, so a reader never sees half of it.
pub fn write_throughput_cache(dir: &Path, key: &str, info: ThroughputInfo) -> Result<()> {
    let io =
        |what: &str, e: std::io::Error| Error::with_source(ErrorKind::Io, format!("{what} the throughput cache"), e);
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    let path = dir.join(THROUGHPUT_CACHE_FILE);
    let mut map: Map<String, Json> =
        std::fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default();
    map.insert(key.to_owned(), info.to_json());
    let temp = dir.join(format!("{THROUGHPUT_CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&temp, Json::Object(map).to_string()).map_err(|e| io("writing", e))?;
    std::fs::rename(&temp, &path).map_err(|e| io("replacing", e))
}

/// `$KWAAI_CACHE`, else `~/.cache/kwaai`: where the throughput cache lives by default.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KWAAI_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("kwaai")
}

/// What [`server_throughput`] needs besides the loaded blocks.
#[derive(Debug, Clone)]
pub struct ThroughputConfig {
    /// The model's name as the cache key shows it (Petals uses the repository or path).
    pub model_name: String,
    /// The dtype the blocks serve in, as torch names it (`float32`, `bfloat16`, ...).
    pub dtype: String,
    /// The weight quantization (`none`, `int8`), if any.
    pub quant_type: Option<String>,
    /// The blocks this server serves.
    pub num_blocks: usize,
    /// Whether the server is reachable only through a relay.
    pub using_relay: bool,
    /// The factor for the network rate behind a relay.
    pub relay_penalty: f64,
    /// The link speed in bits per second (None: [`DEFAULT_NETWORK_BITS_PER_SECOND`]).
    pub network_bits_per_second: Option<f64>,
    /// Measure even if the cache has figures (Petals' `--throughput eval`).
    pub force_eval: bool,
    /// Where the cache file lives.
    pub cache_dir: PathBuf,
    /// How long to measure.
    pub measure: MeasureOptions,
}

impl ThroughputConfig {
    /// A configuration with Petals' defaults for `model_name` serving `num_blocks` blocks in `dtype`.
    pub fn new(model_name: impl Into<String>, dtype: impl Into<String>, num_blocks: usize) -> Self {
        ThroughputConfig {
            model_name: model_name.into(),
            dtype: dtype.into(),
            quant_type: None,
            num_blocks,
            using_relay: false,
            relay_penalty: DEFAULT_RELAY_PENALTY,
            network_bits_per_second: None,
            force_eval: false,
            cache_dir: default_cache_dir(),
            measure: MeasureOptions::default(),
        }
    }
}

/// The figures a server announces: the host's (from the cache, or measured on `span` and cached)
/// and the throughput they combine to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerThroughput {
    /// What clients and block selection read.
    pub throughput: f64,
    /// The figures it was computed from.
    pub info: ThroughputInfo,
}

/// Petals' `get_server_throughput` on our CPU blocks: cached figures for this model, device and
/// dtype when there are any (unless `force_eval`), else a measurement on `span`, then combined.
pub fn server_throughput(span: &BlockSpan, config: &ThroughputConfig) -> Result<ServerThroughput> {
    let key = throughput_cache_key(&config.model_name, "CPU", &config.dtype, config.quant_type.as_deref());
    let cached = if config.force_eval { None } else { read_throughput_cache(&config.cache_dir).remove(&key) };
    let info = match cached {
        Some(info) => info,
        None => {
            let bits = config.network_bits_per_second.unwrap_or(DEFAULT_NETWORK_BITS_PER_SECOND);
            let info = measure_throughput_info(span, &config.measure, bits)?;
            if let Err(e) = write_throughput_cache(&config.cache_dir, &key, info) {
                tracing::warn!(error = %e, "cannot save the throughput measurement");
            }
            info
        }
    };
    let throughput = info.server_throughput(config.num_blocks, config.using_relay, config.relay_penalty);
    tracing::info!(
        throughput = format_args!("{throughput:.1}"),
        num_blocks = config.num_blocks,
        "reporting throughput in tokens/s"
    );
    Ok(ServerThroughput { throughput, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: ThroughputInfo = ThroughputInfo { inference_rps: 300.0, forward_rps: 1000.0, network_rps: 400.0 };

    #[test]
    fn compute_is_shared_by_the_average_blocks_a_request_uses_and_capped_by_the_network() {
        // 1 block: all of the forward rate, capped by the network.
        assert_eq!(INFO.server_throughput(1, false, DEFAULT_RELAY_PENALTY), 400.0);
        // 3 blocks: a request uses 2 on average.
        assert_eq!(INFO.server_throughput(3, false, DEFAULT_RELAY_PENALTY), 400.0);
        assert_eq!(INFO.server_throughput(4, false, DEFAULT_RELAY_PENALTY), 400.0);
        assert_eq!(INFO.server_throughput(9, false, DEFAULT_RELAY_PENALTY), 200.0);
        // Behind a relay the network counts for a fifth.
        assert_eq!(INFO.server_throughput(1, true, DEFAULT_RELAY_PENALTY), 80.0);
        assert_eq!(INFO.server_throughput(24, true, 1.0), 80.0);
    }

    #[test]
    fn network_rate_counts_sixteen_bits_per_hidden_value() {
        assert_eq!(network_rps(8192, DEFAULT_NETWORK_BITS_PER_SECOND).unwrap(), 100e6 / (8192.0 * 16.0));
        assert!(network_rps(0, 1.0).is_err());
        assert!(network_rps(64, 0.0).is_err());
        assert!(network_rps(64, f64::NAN).is_err());
    }

    #[test]
    fn cache_keys_follow_petals() {
        assert_eq!(
            throughput_cache_key("meta-llama/Llama-2-7b-hf", "CPU", "float32", None),
            "model_meta-llama/Llama-2-7b-hf_device_CPU_dtype_float32"
        );
        assert_eq!(
            throughput_cache_key("m", "NVIDIA H100 GPU", "bfloat16", Some("int8")),
            "model_m_device_NVIDIA_H100_GPU_dtype_bfloat16, quantized to int8"
        );
        assert_eq!(throughput_cache_key("m", "CPU", "float16", Some("none")), "model_m_device_CPU_dtype_float16");
    }

    #[test]
    fn the_cache_keeps_other_keys_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_throughput_cache(dir.path()).is_empty());
        write_throughput_cache(dir.path(), "a", INFO).unwrap();
        let other = ThroughputInfo { forward_rps: 5.0, ..INFO };
        write_throughput_cache(dir.path(), "b", other).unwrap();
        let cache = read_throughput_cache(dir.path());
        assert_eq!(cache.get("a"), Some(&INFO));
        assert_eq!(cache.get("b"), Some(&other));
        let text = std::fs::read_to_string(dir.path().join(THROUGHPUT_CACHE_FILE)).unwrap();
        let json: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(json["a"]["forward_rps"], 1000.0);

        std::fs::write(dir.path().join(THROUGHPUT_CACHE_FILE), "not json").unwrap();
        assert!(read_throughput_cache(dir.path()).is_empty());
        write_throughput_cache(dir.path(), "c", INFO).unwrap();
        assert_eq!(read_throughput_cache(dir.path()).keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn applied_figures_are_what_petals_announces() {
        let mut info = ServerInfo::new(super::super::ServerState::Joining, 0.0);
        INFO.apply_to(&mut info, 123.0);
        assert_eq!(info.throughput, 123.0);
        assert_eq!((info.inference_rps, info.forward_rps, info.network_rps), (Some(300.0), Some(1000.0), Some(400.0)));
    }
}
