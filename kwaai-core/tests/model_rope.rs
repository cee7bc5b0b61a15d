//! Rotary variants of Llama configs against transformers: a large rope_theta (Llama 3), linear scaling,
//! dynamic NTK scaling past max_position_embeddings, and Llama 3.1's `llama3` scaling (on transformers
//! 4.46: 4.33 predates it).

mod model_common;

use model_common::{check_cached_decode, check_span_forward, load_span, Fixture};

const REFERENCE: &[&str] = &["--start", "0", "--end", "2", "--batch", "1", "--seq", "40"];

fn fixture(overrides: &str) -> Fixture {
    let mut args = REFERENCE.to_vec();
    args.extend_from_slice(&["--config-override", overrides]);
    Fixture::new(&["--family", "llama", "--layers", "2"], &args)
}

#[test]
fn large_theta_and_linear_scaling_match_transformers() {
    let f = fixture(r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}"#);
    let span = load_span(&f, 0, 2);
    check_span_forward(&f, &span, 1e-4);
    check_cached_decode(&f, &span, 1e-4);
}

#[test]
fn dynamic_ntk_scaling_matches_transformers_past_max_positions() {
    // 40 positions against max_position_embeddings 16: transformers grows the base for the whole sequence.
    let f = fixture(r#"{"max_position_embeddings": 16, "rope_scaling": {"type": "dynamic", "factor": 2.0}}"#);
    check_span_forward(&f, &load_span(&f, 0, 2), 1e-4);
}

#[test]
fn llama3_scaling_matches_transformers_in_all_three_frequency_bands() {
    // head_dim 16, base 10000: wavelengths 6.3, 19.9, 62.8, 199, ... against the bands' edges 64 / 4 = 16
    // (shorter: kept) and 64 / 1 = 64 (longer: divided by 8), so each band holds some frequencies.
    let overrides = r#"{"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}"#;
    let mut args = REFERENCE.to_vec();
    args.extend_from_slice(&["--config-override", overrides]);
    let f = Fixture::on_newer_transformers(&["--family", "llama", "--layers", "2"], &args);
    let span = load_span(&f, 0, 2);
    check_span_forward(&f, &span, 1e-4);
    check_cached_decode(&f, &span, 1e-4);
}
