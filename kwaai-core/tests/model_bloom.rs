//! BLOOM blocks (ALiBi) against transformers on a tiny random model.

mod model_common;

use std::sync::OnceLock;

use model_common::{check_cached_decode, check_prompts_and_backward, check_span_forward, load_span, Fixture};

/// Blocks [1, 3) of a 4-block model; batch 2, 40 positions; prompts of 3 positions.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        Fixture::new(
            &["--family", "bloom"],
            &["--start", "1", "--end", "3", "--batch", "2", "--seq", "40", "--prompt-len", "3", "--generate", "32"],
        )
    })
}

#[test]
fn span_forward_equals_transformers_f32() {
    check_span_forward(fixture(), &load_span(fixture(), 1, 3), 1e-4);
}

#[test]
fn cached_decode_of_32_tokens_equals_full_forward() {
    check_cached_decode(fixture(), &load_span(fixture(), 1, 3), 1e-4);
}

#[test]
fn prompts_and_backward_equal_torch() {
    // This fixture's backward amplifies rounding: torch's own float32 gradients differ from its float64 ones by
    // about 1e-2 here, so agreement with torch's float32 is checked at 1e-3.
    check_prompts_and_backward(fixture(), &load_span(fixture(), 1, 3), 1e-4, 1e-3);
}

#[test]
fn greedy_generation_of_32_tokens_equals_transformers_generate() {
    model_common::check_greedy_generation(fixture());
}
