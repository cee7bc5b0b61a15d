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
    let f = fixture();
    let out = span().forward(f.get("hidden_in"), None).unwrap();
    assert_close("hidden after blocks [1, 3)", &out, f.get("hidden_out"), 1e-4);
}

#[test]
fn cached_decode_of_32_tokens_equals_full_forward() {
    let f = fixture();
    let span = span();
    let input = f.get("hidden_in");
    let full = f.get("hidden_out");
    let mut cache = span.new_cache(40);
    let prefill = span.forward_with_cache(&input.narrow(1, 0, 8).unwrap(), None, &mut cache).unwrap();
    assert_close("prefill", &prefill, &full.narrow(1, 0, 8).unwrap(), 1e-4);
    for t in 8..40 {
        let step = span.forward_with_cache(&input.narrow(1, t, 1).unwrap(), None, &mut cache).unwrap();
        assert_close(&format!("decode step {t}"), &step, &full.narrow(1, t, 1).unwrap(), 1e-4);
    }
    assert_eq!(cache.len(), 40);
    let err = span.forward_with_cache(&input.narrow(1, 0, 1).unwrap(), None, &mut cache).unwrap_err();
    assert_eq!(err.kind(), kwaai_core::ErrorKind::InvalidArgument, "max_length must bound the cache");
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
    let f = fixture();
    let span = span();
    let prompts = f.get("prompts");
    let out = span.forward(f.get("hidden_in"), Some(prompts)).unwrap();
    assert_close("forward with deep prompts", &out, f.get("out_prompted"), 1e-4);
    let (gx, gp) = span.backward(f.get("hidden_in"), Some(prompts), f.get("grad_out")).unwrap();
    assert_close("grad wrt hidden states", &gx, f.get("grad_hidden"), 1e-4);
    assert_close("grad wrt prompts", &gp.expect("prompt grads"), f.get("grad_prompts"), 1e-4);
}
