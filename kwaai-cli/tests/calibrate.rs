//! `kwaainet calibrate` on the demo model: real loads and timings, a recommendation that follows
//! from what it measured.

mod support;

use support::TestHome;

#[test]
fn calibrate_measures_the_demo_model_and_recommends_blocks() {
    let home = TestHome::new();
    let dir = home.path().join("demo-model");
    let dir = dir.to_str().unwrap();
    home.run(&["demo", "--make-model", dir]).ok();
    let run = home.run(&["calibrate", "--model", dir, "--memory", "0.01", "--steps", "4", "--json"]).ok();
    let c: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(c["model_blocks"], 4);
    assert_eq!(c["measured_blocks"], 2);
    // One Llama block of the demo model in float32: q, k, v, o, gate, up, down and two norms.
    let (h, kv, i) = (64u64, 32u64, 176u64);
    assert_eq!(c["weight_bytes_per_block"], (2 * h * h + 2 * kv * h + 3 * i * h + 2 * h) * 4);
    // Keys and values of 2 heads of 16 for 8192 tokens, float32.
    assert_eq!(c["cache_bytes_per_block"], 2 * 2 * 16 * 4 * 8192);
    assert!(c["tokens_per_s_per_block"].as_f64().unwrap() > 0.0);
    let memory = c["memory_bytes"].as_u64().unwrap();
    assert_eq!(memory, (0.01 * (1u64 << 30) as f64) as u64);
    let per_block =
        c["weight_bytes_per_block"].as_u64().unwrap().max(c["resident_bytes_per_block"].as_u64().unwrap_or(0))
            + c["cache_bytes_per_block"].as_u64().unwrap();
    let expected = ((memory as f64 * 0.9 / per_block as f64).floor() as u64).min(4);
    assert_eq!(c["recommended_num_blocks"], expected);

    let text = home.run(&["calibrate", "--model", dir, "--memory", "64", "--steps", "2"]).ok();
    assert_eq!(
        text.line("recommended: --num-blocks ").unwrap().split_whitespace().next(),
        Some("4"),
        "{}",
        text.stdout
    );
}

#[test]
fn calibrate_refuses_a_directory_without_a_model() {
    let home = TestHome::new();
    let run = home.run(&["calibrate", "--model", home.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("config.json"), "{}", run.stderr);
}
