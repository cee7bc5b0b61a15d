//! Mixtral blocks (sparse mixture of SwiGLU experts) against transformers 4.46 on a tiny random model;
//! Petals 2.2's transformers has no Mixtral, so the reference runs on the newer one `make reference`
//! installs beside it.

mod model_common;

use std::sync::OnceLock;

use kwaai_core::model::{BlockSpan, LoadOptions, ModelConfig};
use model_common::Fixture;

/// Blocks [1, 3) of a 4-block model with 4 experts, 2 per token; batch 2, 40 positions; prompts of 3
/// positions; greedy generation of 32.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        Fixture::on_newer_transformers(
            &["--family", "mixtral"],
            &["--start", "1", "--end", "3", "--batch", "2", "--seq", "40", "--prompt-len", "3", "--generate", "32"],
        )
    })
}

fn span() -> BlockSpan {
    BlockSpan::load(&fixture().model_dir(), 1, 3, LoadOptions::default()).expect("loading the span")
}

#[test]
fn the_config_names_the_experts() {
    let config = ModelConfig::from_dir(&fixture().model_dir()).unwrap();
    let experts = config.experts.expect("a sparse MLP");
    assert_eq!((experts.num_experts, experts.top_k), (4, 2));
}

#[test]
fn span_forward_equals_transformers_f32() {
    model_common::check_span_forward(fixture(), &span(), 1e-4);
}

#[test]
fn cached_decode_equals_full_forward() {
    model_common::check_cached_decode(fixture(), &span(), 1e-4);
}

#[test]
fn prompts_and_backward_equal_torch() {
    model_common::check_prompts_and_backward(fixture(), &span(), 1e-4, 1e-4);
}

#[test]
fn greedy_generation_of_32_tokens_equals_transformers_generate() {
    model_common::check_greedy_generation(fixture());
}
