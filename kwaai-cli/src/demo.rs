//! `kwaainet demo`: the demo model made on the spot, and a generation streamed to the terminal.
//!
//! The blocks run here in two spans, as two servers would hold them; running them on servers of a
//! local swarm is the next step.

use std::io::Write;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kwaai_core::model::{generate, BlockSpan, ClientModel, GenerationConfig, LoadOptions, TextTokenizer};

use crate::args::DemoArgs;
use crate::demo_model::{write_demo_model, LAYERS};
use crate::failure::Failure;
use crate::paths::Home;

/// Runs the demo (or, with `--make-model`, only writes the model).
pub fn run(home: &Home, args: &DemoArgs) -> Result<(), Failure> {
    if let Some(dir) = &args.make_model {
        write_demo_model(dir)?;
        println!("wrote the demo model to {}", dir.display());
        return Ok(());
    }
    let dir = home.root().join("demo-model");
    write_demo_model(&dir)?;
    let client = ClientModel::load(&dir)?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let half = LAYERS / 2;
    let loading = ProgressBar::new(2).with_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loading.set_message("loading");
    let mut spans = Vec::new();
    for (start, end) in [(0, half), (half, LAYERS)] {
        spans.push(BlockSpan::load(&dir, start, end, LoadOptions::default())?);
        loading.inc(1);
    }
    loading.finish_and_clear();
    let prompt = tokenizer.encode(&args.prompt, true)?;
    let max_length = prompt.len() + args.max_new_tokens + 1;
    let mut caches: Vec<_> = spans.iter().map(|s| s.new_cache(max_length)).collect();
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: client.config().eos_token_id.into_iter().collect(),
        ..GenerationConfig::default()
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", args.prompt);
    let _ = out.flush();
    let started = Instant::now();
    let tokens = generate(
        &client,
        &prompt,
        &config,
        |hidden| {
            let mut x = hidden.clone();
            for (span, cache) in spans.iter().zip(caches.iter_mut()) {
                x = span.forward_with_cache(&x, None, cache)?;
            }
            Ok(x)
        },
        |token| {
            let text = tokenizer.decode(&[token], true).unwrap_or_default();
            if !text.is_empty() {
                let _ = write!(out, " {text}");
                let _ = out.flush();
            }
        },
    )?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let _ = writeln!(out);
    drop(out);
    println!("{} tokens in {seconds:.3}s: {:.1} tokens/s", tokens.len(), tokens.len() as f64 / seconds);
    println!("route: blocks 0:{half} -> {half}:{LAYERS} (in this process; model at {})", dir.display());
    Ok(())
}
