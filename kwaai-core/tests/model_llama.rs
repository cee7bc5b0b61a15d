//! Llama blocks against transformers on a tiny random model.

mod model_common;

use std::sync::OnceLock;

use candle_core::{IndexOp, Tensor};
use kwaai_core::model::{BlockSpan, LoadOptions};
use model_common::{assert_close, Fixture};

/// Blocks [1, 3) of a 4-block model; batch 2, 40 positions; prompts of 3 positions; greedy generation of 32.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        Fixture::new(
            &["--family", "llama"],
            &["--start", "1", "--end", "3", "--batch", "2", "--seq", "40", "--prompt-len", "3", "--generate", "32"],
        )
    })
}

fn span() -> BlockSpan {
    BlockSpan::load(&fixture().model_dir(), 1, 3, LoadOptions::default()).expect("loading the span")
}

#[test]
fn span_forward_equals_transformers_f32() {
    model_common::check_span_forward(fixture(), &span(), 1e-4);
}

#[test]
fn cached_decode_of_32_tokens_equals_full_forward() {
    model_common::check_cached_decode(fixture(), &span(), 1e-4);
}

#[test]
fn beam_reorder_moves_cache_rows() {
    let f = fixture();
    let span = span();
    let input = f.get("hidden_in");
    let full = f.get("hidden_out");
    let mut cache = span.new_cache(40);
    span.forward_with_cache(&input.narrow(1, 0, 10).unwrap(), None, &mut cache).unwrap();
    // Both hypotheses continue from row 1: feeding row 1's next token must give row 1's reference output twice.
    cache.reorder(&[1, 1]).unwrap();
    let row1 = input.i((1..2, 10..11)).unwrap();
    let step = span.forward_with_cache(&Tensor::cat(&[&row1, &row1], 0).unwrap(), None, &mut cache).unwrap();
    let expected = full.i((1..2, 10..11)).unwrap();
    assert_close("row 0 after reorder", &step.i(0..1).unwrap(), &expected, 1e-4);
    assert_close("row 1 after reorder", &step.i(1..2).unwrap(), &expected, 1e-4);
    assert!(cache.reorder(&[2, 0]).is_err(), "an out-of-range hypothesis id is refused");
}

#[test]
fn prompts_and_backward_equal_torch() {
    model_common::check_prompts_and_backward(fixture(), &span(), 1e-4, 1e-4);
}

#[test]
fn greedy_generation_of_32_tokens_equals_transformers_generate() {
    model_common::check_greedy_generation(fixture());
}
