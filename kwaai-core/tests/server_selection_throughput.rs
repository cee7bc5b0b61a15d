//! The throughput a server announces (and block selection sums), measured on the loaded blocks of
//! a tiny Llama: positive, finite figures, combined as Petals combines them, cached under Petals'
//! key so that the next start reads them instead of measuring, and measured again when forced.

mod common;

use std::path::PathBuf;
use std::process::Command;

use kwaai_core::model::{BlockSpan, LoadOptions};
use kwaai_core::server::{
    read_throughput_cache, server_throughput, write_throughput_cache, MeasureOptions, ThroughputConfig, ThroughputInfo,
    THROUGHPUT_CACHE_FILE,
};

#[test]
fn throughput_is_measured_on_loaded_blocks_cached_and_reused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("KWAAI_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../shared"));
    let out = Command::new(common::reference_python())
        .arg(shared.join("reference/make_tiny_model.py"))
        .arg(&model)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let span = BlockSpan::load(&model, 1, 3, LoadOptions::default()).expect("blocks load");

    let cache_dir = dir.path().join("cache");
    let config = ThroughputConfig {
        cache_dir: cache_dir.clone(),
        measure: MeasureOptions { inference_steps: 4, forward_tokens: 16, forward_steps: 2 },
        ..ThroughputConfig::new("tiny-llama", "float32", 2)
    };
    let measured = server_throughput(&span, &config).expect("measures");
    let info = measured.info;
    for rate in [info.inference_rps, info.forward_rps, info.network_rps, measured.throughput] {
        assert!(rate.is_finite() && rate > 0.0, "{measured:?}");
    }
    // 100 Mbit/s by default, 16 bits for each of 64 hidden values per token.
    assert_eq!(info.network_rps, 100e6 / (64.0 * 16.0));
    assert_eq!(measured.throughput, info.server_throughput(2, false, 0.2));
    assert_eq!(measured.throughput, (info.forward_rps / 1.5).min(info.network_rps));

    let key = "model_tiny-llama_device_CPU_dtype_float32";
    assert_eq!(read_throughput_cache(&cache_dir).get(key), Some(&info));
    assert!(cache_dir.join(THROUGHPUT_CACHE_FILE).exists());

    // A restart reads the cache (here: figures planted under the same key) instead of measuring.
    let planted = ThroughputInfo { inference_rps: 7.0, forward_rps: 1e-9, network_rps: 5.0 };
    write_throughput_cache(&cache_dir, key, planted).expect("plants");
    let restarted = server_throughput(&span, &ThroughputConfig { num_blocks: 3, using_relay: true, ..config.clone() })
        .expect("reads the cache");
    assert_eq!(restarted.info, planted);
    assert_eq!(restarted.throughput, (1e-9f64 / 2.0).min(5.0 * 0.2));

    // Forcing a measurement replaces the cached figures.
    let forced = server_throughput(&span, &ThroughputConfig { force_eval: true, ..config }).expect("measures");
    assert_ne!(forced.info, planted);
    assert_eq!(read_throughput_cache(&cache_dir).get(key), Some(&forced.info));
}
